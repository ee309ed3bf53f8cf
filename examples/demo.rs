//! The rabbitry demo: an order service and its worker, end to end.
//!
//! For 20 s (`RABBITRY_DEMO_SECONDS`) or until ctrl-c, the service takes
//! orders: most are published with confirms, every 4th is written in one
//! Postgres transaction with its message (the transactional outbox), and
//! a short simulated outage defers a few to the outbox, which the relay
//! resends. Some are sent twice (a resend after a lost confirm), some fail
//! once and are retried, some can never be handled and are dead-lettered.
//! The worker consumes with retries and idempotency. At the end the demo
//! prints a summary, checks it against the broker's and the outbox's own
//! counts, and removes its queues and database.
//!
//! Needs RabbitMQ and Postgres: `docker compose up -d`, or the local
//! defaults; `AMQP_URL` and `DATABASE_URL` override them.
//!
//! ```sh
//! cargo run --example demo
//! ```

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rabbitry::postgres::{OutboxStore, Relay, RelayConfig};
use rabbitry::{
    Binding, Broker, Consumer, DeadLetter, Delivery, ErrorQueue, Exchange, HandlerError,
    Idempotency, MemoryStore, Message, PublishOutcome, Publisher, Queue, RetryPolicy, Topology,
    consumer_json,
};
use serde::{Deserialize, Serialize};
use support::{OwnDatabase, Problem};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    id: u64,
    total_cents: u64,
}

/// What the service did, counted as it went.
#[derive(Default)]
struct Sent {
    confirmed: AtomicU64,
    deferred: AtomicU64,
    in_transaction: AtomicU64,
    resent: AtomicU64,
    /// Distinct orders (message ids) handed to rabbitry.
    orders: AtomicU64,
}

fn main() -> ExitCode {
    support::run(demo)
}

async fn demo() -> Result<(), Problem> {
    let seconds: u64 = std::env::var("RABBITRY_DEMO_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let broker = support::broker("rabbitry-demo").await?;
    let db = OwnDatabase::create("rabbitry_demo").await?;
    let exchange = support::unique("demo.orders");
    let queue = support::unique("demo.orders.placed");
    let retry = RetryPolicy::default()
        .immediate(1)
        .delays([Duration::from_secs(1)]);
    let topology = Topology::new()
        .exchange(Exchange::topic(&exchange))
        .queue(Queue::new(&queue))
        .binding(Binding::new(&exchange, &queue, "order.placed"));
    broker.declare(&topology).await?;
    let store = OutboxStore::connect(db.url()).await?;
    store.migrate().await?;
    sqlx::query("CREATE TABLE orders (id BIGINT PRIMARY KEY, total_cents BIGINT NOT NULL)")
        .execute(store.pool())
        .await?;
    println!("rabbitry demo: {seconds} s of orders (ctrl-c to stop early)");
    println!("  broker   {}", broker.config().endpoints()[0]);
    println!(
        "  queue    {queue} (errors: {})",
        Queue::dead_letter_queue_name(&queue)
    );
    println!("  database {} (orders + outbox)\n", db.name());

    let shutdown = CancellationToken::new();
    let publisher = Publisher::builder(broker.clone())
        .outbox(store.clone())
        .build()?;
    let relay = Relay::new(
        store.clone(),
        Publisher::builder(broker.clone()).build()?,
        RelayConfig::default().poll_interval(Duration::from_millis(200)),
    )?;
    let relay_task = relay.spawn(shutdown.clone());
    let idempotency = Idempotency::builder(MemoryStore::new()).build()?;
    let consumer = Consumer::builder(broker.clone(), &queue)
        .name("order-worker")
        .concurrency(4)
        .retry(retry.clone())
        .idempotent(idempotency.layer())
        .build()?;
    let worker_stop = CancellationToken::new();
    let worker = tokio::spawn(worker(consumer.clone(), worker_stop.clone()));

    // Take orders until the time is up or ctrl-c.
    let sent = Arc::new(Sent::default());
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let outage = support::broker("rabbitry-demo-outage").await?;
    let during_outage = Publisher::builder(outage.clone())
        .outbox(store.clone())
        .timeout(Duration::from_secs(2))
        .build()?;
    outage.close().await; // stands for a broker that is down
    let mut id = 0;
    let mut next_progress = started + Duration::from_secs(5);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while Instant::now() < end {
        id += 1;
        let in_outage = (30..35).contains(&id);
        let via = if in_outage {
            &during_outage
        } else {
            &publisher
        };
        place_order(id, via, &store, &exchange, &sent).await?;
        if Instant::now() >= next_progress {
            let m = consumer.metrics();
            println!(
                "{:>4} s  orders {:>5}  consumed {:>5}  retried {:>4}  dead-lettered {:>3}",
                started.elapsed().as_secs(),
                sent.orders.load(Ordering::Relaxed),
                m.succeeded,
                m.failed_attempts,
                m.dead_lettered
            );
            next_progress += Duration::from_secs(5);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = &mut ctrl_c => { println!("ctrl-c: stopping"); break; }
        }
    }

    // Let the relay and the worker finish what is in flight (bounded).
    let orders = sent.orders.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = consumer.metrics();
        let pending = store.stats().await?.pending;
        let settled = m.succeeded + m.dead_lettered + idempotency.metrics().duplicates;
        if settled >= orders + sent.resent.load(Ordering::Relaxed) && pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            println!("warning: not everything settled within 30 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    worker_stop.cancel();
    worker.await??;
    shutdown.cancel();
    relay_task.await??;

    let checked = summary(
        &broker,
        &store,
        &queue,
        &sent,
        &consumer,
        &idempotency,
        &relay,
    )
    .await;
    let mut cleanup = topology;
    for q in retry.retry_queues(&queue) {
        cleanup = cleanup.queue(Queue::new(q).dead_letter(DeadLetter::Off));
    }
    broker.teardown(&cleanup).await?;
    store.pool().close().await;
    db.drop().await?;
    println!("\nremoved the demo's queues and database");
    checked
}

/// One order: every 4th through the transactional outbox, every 7th sent
/// twice (same message id), id 3 as bytes no worker can decode.
async fn place_order(
    id: u64,
    publisher: &Publisher,
    store: &OutboxStore,
    exchange: &str,
    sent: &Sent,
) -> Result<(), Problem> {
    let order = OrderPlaced {
        id,
        total_cents: 100 * id,
    };
    let msg = if id == 3 {
        Message::bytes(exchange, "order.placed", "{not json").content_type("application/json")
    } else {
        Message::json(exchange, "order.placed", &order)?
    };
    sent.orders.fetch_add(1, Ordering::Relaxed);
    if id.is_multiple_of(4) {
        let mut tx = store.pool().begin().await?;
        sqlx::query("INSERT INTO orders (id, total_cents) VALUES ($1, $2)")
            .bind(id as i64)
            .bind(order.total_cents as i64)
            .execute(&mut *tx)
            .await?;
        store.enqueue_in(&mut tx, &msg).await?;
        tx.commit().await?;
        sent.in_transaction.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let copies = if id.is_multiple_of(7) { 2 } else { 1 };
    for copy in 0..copies {
        match publisher.publish(msg.clone()).await? {
            PublishOutcome::Confirmed => sent.confirmed.fetch_add(1, Ordering::Relaxed),
            PublishOutcome::Deferred { .. } => sent.deferred.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        if copy > 0 {
            sent.resent.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// The worker: every 5th order fails once (retried), every 13th can never
/// be handled (dead-lettered at once).
async fn worker(consumer: Consumer, stop: CancellationToken) -> Result<(), rabbitry::Error> {
    let tried = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    consumer
        .run(
            consumer_json(move |order: OrderPlaced, _d: Delivery| {
                let tried = tried.clone();
                async move {
                    if order.id.is_multiple_of(13) {
                        return Err(HandlerError::permanent("InvalidAddress: no such street"));
                    }
                    let first = tried
                        .lock()
                        .map(|mut t| t.insert(order.id))
                        .unwrap_or(false);
                    if order.id.is_multiple_of(5) && first {
                        return Err(HandlerError::retryable("PaymentTimeout: gateway busy"));
                    }
                    Ok(())
                }
            }),
            stop,
        )
        .await
}

/// Prints the summary and checks it against the broker and the outbox.
async fn summary(
    broker: &Broker,
    store: &OutboxStore,
    queue: &str,
    sent: &Sent,
    consumer: &Consumer,
    idempotency: &Idempotency,
    relay: &Relay,
) -> Result<(), Problem> {
    let m = consumer.metrics();
    let dlq = Queue::dead_letter_queue_name(queue);
    let in_dlq = ErrorQueue::new(broker.clone(), &dlq)
        .peek(&rabbitry::ListQuery::new().limit(3))
        .await?;
    let left = broker.queue_stats(queue).await?.messages;
    let outbox = store.stats().await?;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!("\n== summary ==");
    println!("orders placed        {:>6}", n(&sent.orders));
    println!("  confirmed at once  {:>6}", n(&sent.confirmed));
    println!(
        "  sent twice         {:>6}   (a resend after a lost confirm)",
        n(&sent.resent)
    );
    println!(
        "  in a transaction   {:>6}   (transactional outbox)",
        n(&sent.in_transaction)
    );
    println!("  deferred (outage)  {:>6}", n(&sent.deferred));
    println!("  relayed by outbox  {:>6}", relay.metrics().published);
    println!("consumed             {:>6}", m.succeeded);
    println!(
        "  duplicates skipped {:>6}",
        idempotency.metrics().duplicates
    );
    println!(
        "  failed attempts    {:>6}   (retried, then handled or dead-lettered)",
        m.failed_attempts
    );
    println!("  dead-lettered      {:>6}", m.dead_lettered);
    println!("broker: {queue} holds {left}, {dlq} holds {}", in_dlq.depth);
    println!("outbox: {} pending, {} dead", outbox.pending, outbox.dead);
    for f in &in_dlq.messages {
        println!("  failed: {}  {}", f.message_id, f.reason());
    }
    println!("\nwhere to look next:");
    println!("  rabbitry-relay errors list --queue <queue>.dlq   (docs/operating.md)");
    println!("  docs/guarantees.md, docs/retries.md, docs/ack-modes.md");

    let mut wrong = Vec::new();
    if u64::from(in_dlq.depth) != m.dead_lettered {
        wrong.push(format!(
            "{} in the error queue, {} dead-lettered",
            in_dlq.depth, m.dead_lettered
        ));
    }
    // Every copy delivered ends once: handled, skipped as a duplicate, or
    // dead-lettered (a copy of a message that cannot be handled is
    // dead-lettered too: the failure released its idempotency claim).
    let copies = n(&sent.orders) + n(&sent.resent);
    let duplicates = idempotency.metrics().duplicates;
    if m.succeeded + duplicates + m.dead_lettered != copies {
        wrong.push(format!(
            "{copies} copies sent, {} consumed + {duplicates} skipped + {} dead-lettered",
            m.succeeded, m.dead_lettered
        ));
    }
    if left != 0 || outbox.pending != 0 || outbox.dead != 0 {
        wrong.push(format!(
            "left behind: {left} in the queue, {} pending, {} dead rows",
            outbox.pending, outbox.dead
        ));
    }
    if relay.metrics().published != n(&sent.deferred) + n(&sent.in_transaction) {
        wrong.push("the relay did not publish every outbox row".into());
    }
    if wrong.is_empty() {
        println!("\ncheck: the summary matches the broker's and the outbox's counts");
        Ok(())
    } else {
        Err(Problem(format!(
            "the summary does not add up: {}",
            wrong.join("; ")
        )))
    }
}
