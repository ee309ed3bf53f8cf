//! The transactional outbox: a business write and the message announcing it
//! commit together in one Postgres transaction, or not at all; the relay
//! then publishes the message with confirms and deletes its row.
//!
//! Shown here: an order committed with its `order.placed` message; a second
//! order rolled back, whose message is never published; the relay
//! delivering what committed. In production the relay is the
//! `rabbitry-relay run` binary; here it runs in-process.
//!
//! Needs RabbitMQ and Postgres (`AMQP_URL`, `DATABASE_URL`, or the local
//! defaults). Uses a queue and a database of its own, removed at the end.
//!
//! ```sh
//! cargo run --example transactional_outbox
//! ```

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::time::Duration;

use rabbitry::postgres::{OutboxStore, Relay, RelayConfig};
use rabbitry::{Message, Publisher, Queue, Topology};
use support::{OwnDatabase, Problem};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    support::run(transactional_outbox)
}

async fn transactional_outbox() -> Result<(), Problem> {
    let broker = support::broker("rabbitry-example-outbox").await?;
    let db = OwnDatabase::create("rabbitry_outbox").await?;
    let queue = support::unique("outbox.orders.placed");
    let topology = Topology::new().queue(Queue::new(&queue));
    broker.declare(&topology).await?;

    let store = OutboxStore::connect(db.url()).await?;
    store.migrate().await?;
    sqlx::query("CREATE TABLE orders (id BIGINT PRIMARY KEY, total_cents BIGINT NOT NULL)")
        .execute(store.pool())
        .await?;
    println!("database {} with an orders table and the outbox", db.name());

    // Order 1: the row and its message in one transaction, committed.
    let mut tx = store.pool().begin().await?;
    sqlx::query("INSERT INTO orders (id, total_cents) VALUES ($1, $2)")
        .bind(1_i64)
        .bind(4200_i64)
        .execute(&mut *tx)
        .await?;
    let placed = Message::json(
        "",
        &queue,
        &serde_json::json!({"order": 1, "total_cents": 4200}),
    )?;
    let placed_id = placed.id().to_owned();
    let row = store.enqueue_in(&mut tx, &placed).await?;
    tx.commit().await?;
    println!("order 1: inserted and its message stored as outbox row {row}, in one commit");

    // Order 2: the business write fails after the message was enqueued;
    // the rollback takes the message with it.
    let mut tx = store.pool().begin().await?;
    let lost = Message::json("", &queue, &serde_json::json!({"order": 2}))?;
    store.enqueue_in(&mut tx, &lost).await?;
    let duplicate = sqlx::query("INSERT INTO orders (id, total_cents) VALUES ($1, $2)")
        .bind(1_i64) // the same id: a constraint violation
        .bind(100_i64)
        .execute(&mut *tx)
        .await;
    assert!(duplicate.is_err());
    tx.rollback().await?;
    println!("order 2: the insert failed, the transaction rolled back, and its message with it");
    println!(
        "outbox before the relay: {} pending",
        store.stats().await?.pending
    );

    // The relay publishes what committed, with confirms.
    let shutdown = CancellationToken::new();
    let relay = Relay::new(
        store.clone(),
        Publisher::builder(broker.clone()).build()?,
        RelayConfig::default().poll_interval(Duration::from_millis(100)),
    )?;
    let task = relay.spawn(shutdown.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while broker.queue_stats(&queue).await?.messages < 1 {
        if tokio::time::Instant::now() > deadline {
            return Err(Problem("the relay did not publish within 20 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    task.await??;
    let stats = store.stats().await?;
    let depth = broker.queue_stats(&queue).await?.messages;
    println!(
        "relay: published {} (message {placed_id}); outbox now {} pending, {} dead; {queue} holds {depth}",
        relay.metrics().published,
        stats.pending,
        stats.dead
    );
    if depth != 1 || stats.pending != 0 {
        return Err(Problem(format!(
            "expected exactly order 1's message: queue {depth}, pending {}",
            stats.pending
        )));
    }

    broker.teardown(&topology).await?;
    store.pool().close().await;
    db.drop().await?;
    println!("removed {queue} and the database");
    Ok(())
}
