//! The rabbitry demo: an order service that publishes with confirms and an
//! outbox, and a worker that consumes with retry, then dead-letter.
//!
//! Needs RabbitMQ and Postgres (`docker compose up -d`, or the local
//! defaults; `AMQP_URL` and `DATABASE_URL` override them):
//!
//! ```sh
//! cargo run --example demo
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rabbitry::postgres::{OutboxStore, Relay, RelayConfig};
use rabbitry::{
    Binding, Broker, BrokerConfig, Consumer, Delivery, ErrorQueue, Exchange, HandlerError, Message,
    PublishOutcome, Publisher, Queue, RetryPolicy, Topology, consumer_json,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Serialize, Deserialize)]
struct OrderCreated {
    id: u64,
    customer: String,
    total_cents: u64,
    /// The demo's way to make the worker fail twice before succeeding.
    flaky: bool,
}

const EXCHANGE: &str = "demo.orders";
const QUEUE: &str = "demo.orders.created";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber_init();
    let amqp = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let database = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());

    // 1. Connect and declare: a topic exchange, a quorum work queue with its
    //    dead-letter pair (demo.orders.created.dlx -> .dlq).
    let broker = Broker::connect(
        BrokerConfig::builder()
            .endpoint(&amqp)
            .connection_name("rabbitry-demo")
            .build()?,
    )
    .await?;
    broker
        .declare(
            &Topology::new()
                .exchange(Exchange::topic(EXCHANGE))
                .queue(Queue::new(QUEUE).delivery_limit(10))
                .binding(Binding::new(EXCHANGE, QUEUE, "order.created")),
        )
        .await?;
    println!(
        "connected to {} and declared {QUEUE}",
        broker.config().endpoints()[0]
    );

    // 2. The outbox: failed publishes land here; the relay resends them.
    let store = OutboxStore::connect(&database).await?;
    store.migrate().await?;
    let shutdown = CancellationToken::new();
    let relay = Relay::new(
        store.clone(),
        Publisher::builder(broker.clone()).build()?,
        RelayConfig::default(),
    )?;
    let relay_task = relay.spawn(shutdown.clone());

    // 3. Publish with confirms; a failure would come back as Deferred.
    let publisher = Publisher::builder(broker.clone())
        .outbox(store.clone())
        .build()?;
    for id in 1..=5 {
        let order = OrderCreated {
            id,
            customer: format!("customer-{}", id % 2),
            total_cents: 1000 * id,
            flaky: id == 3,
        };
        let msg = Message::json(EXCHANGE, "order.created", &order)?.partition_key(&order.customer);
        match publisher.publish(msg).await? {
            PublishOutcome::Confirmed => println!("order {id}: confirmed by the broker"),
            PublishOutcome::Deferred { outbox_id, cause } => {
                println!("order {id}: deferred to outbox row {outbox_id} ({cause})")
            }
            _ => {}
        }
    }
    // A payload the worker cannot decode: it goes straight to the error queue.
    let _ = publisher
        .publish(
            Message::bytes(EXCHANGE, "order.created", "{oops").content_type("application/json"),
        )
        .await?;

    // 4. Transactional outbox: the message commits with the business write.
    let mut tx = store.pool().begin().await?;
    let order = OrderCreated {
        id: 6,
        customer: "customer-0".into(),
        total_cents: 600,
        flaky: false,
    };
    store
        .enqueue_in(&mut tx, &Message::json(EXCHANGE, "order.created", &order)?)
        .await?;
    tx.commit().await?;
    println!("order 6: enqueued in a transaction; the relay publishes it after commit");

    // 5. The worker: retry twice at once, then after 1 s, then dead-letter.
    let handled = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(broker.clone(), QUEUE)
        .name("demo-worker")
        .concurrency(2)
        .retry(
            RetryPolicy::default()
                .immediate(2)
                .delays([Duration::from_secs(1)]),
        )
        .build()?;
    let (h, a) = (handled.clone(), attempts.clone());
    let worker = {
        let consumer = consumer.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            consumer
                .run(
                    consumer_json(move |order: OrderCreated, d: Delivery| {
                        let (h, a) = (h.clone(), a.clone());
                        async move {
                            if order.flaky && a.fetch_add(1, Ordering::SeqCst) < 2 {
                                println!("order {}: payment service busy, will retry", order.id);
                                return Err(HandlerError::retryable("payment service busy"));
                            }
                            println!(
                                "order {}: handled for {} (message {})",
                                order.id,
                                order.customer,
                                d.id()
                            );
                            h.fetch_add(1, Ordering::SeqCst);
                            Ok(())
                        }
                    }),
                    shutdown,
                )
                .await
        })
    };

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while handled.load(Ordering::SeqCst) < 6 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 6. What a person on call would look at.
    let errors = ErrorQueue::new(broker.clone(), Queue::dead_letter_queue_name(QUEUE));
    for failed in errors.list(10).await? {
        println!(
            "error queue: message {} failed after {:?} attempt(s): {}",
            failed.message_id,
            failed.attempts.unwrap_or(0),
            failed.exception.unwrap_or_default()
        );
    }
    let purged = errors.purge().await?;

    shutdown.cancel();
    worker.await??;
    relay_task.await??;
    let m = consumer.metrics();
    println!(
        "worker: {} handled, {} failed attempts, {} dead-lettered; publisher: {:?}; purged {purged} from the error queue",
        m.succeeded,
        m.failed_attempts,
        m.dead_lettered,
        publisher.metrics()
    );
    Ok(())
}

fn tracing_subscriber_init() {
    // The demo prints its own story; set RUST_LOG=info to see rabbitry's logs too.
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}
