//! Reliable publishing: every message ends in exactly one of three places.
//!
//! 1. **Confirmed**: the broker took it into its durable queue.
//! 2. **Deferred**: the broker could not be used, so the message went to the
//!    Postgres outbox; the relay resends it until the broker confirms it.
//!    Here the broker is made unusable by closing this process's connection.
//! 3. **Error**: neither (here, a message nothing is bound to); the caller
//!    still owns it.
//!
//! Needs RabbitMQ and Postgres (`AMQP_URL`, `DATABASE_URL`, or the local
//! defaults). Uses queues and a database of its own, removed at the end.
//!
//! ```sh
//! cargo run --example producer
//! ```

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::time::Duration;

use rabbitry::postgres::{OutboxStore, Relay, RelayConfig};
use rabbitry::{Binding, Error, Exchange, Message, PublishOutcome, Publisher, Queue, Topology};
use support::{OwnDatabase, Problem};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    support::run(producer)
}

async fn producer() -> Result<(), Problem> {
    let broker = support::broker("rabbitry-example-producer").await?;
    let db = OwnDatabase::create("rabbitry_producer").await?;
    let exchange = support::unique("producer.orders");
    let queue = support::unique("producer.orders.created");
    let topology = Topology::new()
        .exchange(Exchange::topic(&exchange))
        .queue(Queue::new(&queue))
        .binding(Binding::new(&exchange, &queue, "order.created"));
    broker.declare(&topology).await?;
    let store = OutboxStore::connect(db.url()).await?;
    store.migrate().await?;
    println!("declared {queue}; outbox in database {}", db.name());

    // 1. Confirmed.
    let publisher = Publisher::builder(broker.clone())
        .outbox(store.clone())
        .build()?;
    let order = serde_json::json!({"id": 1, "total_cents": 1200});
    let outcome = publisher
        .publish(Message::json(&exchange, "order.created", &order)?)
        .await?;
    assert!(matches!(outcome, PublishOutcome::Confirmed));
    println!("order 1: confirmed by the broker");

    // 3. An error: mandatory publishing, and nothing bound to this key.
    match publisher
        .publish(Message::json(&exchange, "order.misrouted", &order)?)
        .await
    {
        Err(e @ Error::Unroutable { .. }) => {
            println!("order 2: error, nothing stored, the caller still owns it: {e}")
        }
        other => {
            return Err(Problem(format!(
                "order 2: expected Unroutable, got {other:?}"
            )));
        }
    }

    // 2. Deferred: a second handle whose connections are closed stands for
    //    a broker that is down.
    let down = support::broker("rabbitry-example-producer-down").await?;
    let deferring = Publisher::builder(down.clone())
        .outbox(store.clone())
        .timeout(Duration::from_secs(2))
        .build()?;
    down.close().await;
    let order3 = Message::json(&exchange, "order.created", &serde_json::json!({"id": 3}))?;
    let id3 = order3.id().to_owned();
    match deferring.publish(order3).await? {
        PublishOutcome::Deferred { outbox_id, cause } => {
            println!("order 3: deferred to outbox row {outbox_id} ({cause})")
        }
        other => {
            return Err(Problem(format!(
                "order 3: expected Deferred, got {other:?}"
            )));
        }
    }

    // The relay (in production: the rabbitry-relay binary) resends it.
    let shutdown = CancellationToken::new();
    let relay = Relay::new(store.clone(), publisher.clone(), RelayConfig::default())?;
    let relay_task = relay.spawn(shutdown.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while store.stats().await?.pending > 0 {
        if tokio::time::Instant::now() > deadline {
            return Err(Problem(
                "the relay did not deliver order 3 within 20 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    relay_task.await.map_err(|e| Problem(e.to_string()))??;
    println!("order 3: relayed from the outbox and confirmed (message {id3})");

    let depth = broker.queue_stats(&queue).await?.messages;
    println!(
        "{queue} holds {depth} message(s), orders 1 and 3; {} confirmed on publish, {} deferred, {} relayed, {} unroutable",
        publisher.metrics().confirmed,
        deferring.metrics().deferred,
        relay.metrics().published,
        publisher.metrics().unroutable
    );
    if depth != 2 {
        return Err(Problem(format!(
            "expected 2 messages in {queue}, found {depth}"
        )));
    }

    let removed = broker.teardown(&topology).await?;
    store.pool().close().await;
    db.drop().await?;
    println!(
        "removed {} queues, {} exchanges and the database",
        removed.queues, removed.exchanges
    );
    Ok(())
}
