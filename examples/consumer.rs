//! A consumer with automatic acks, retries, then dead-lettering, that
//! handles each message once even when the broker delivers it twice.
//!
//! - **Auto ack**: the handler's `Result` decides; `Ok` acks.
//! - **Retry, then dead-letter**: a retryable error is tried again: twice
//!   at once, then, after 1 s in a retry queue, three times more (6 tries);
//!   when tries run out, or at once for a permanent error, the message goes to `<queue>.dlq` with the error in
//!   its headers (`cargo run --example error_queue` shows what to do then).
//! - **Idempotent**: a Redis record per message id; a second copy of a
//!   handled message is acked without running the handler.
//!
//! Needs RabbitMQ and Redis (`AMQP_URL`, `REDIS_URL`, or the local
//! defaults). Uses a queue of its own and removes it, its retry queue and
//! its Redis keys at the end.
//!
//! ```sh
//! cargo run --example consumer
//! ```

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rabbitry::{
    AckMode, Consumer, DeadLetter, Delivery, ErrorQueue, HandlerError, Idempotency, Message,
    Publisher, Queue, RetryPolicy, Topology,
};
use rabbitry_redis::RedisStore;
use support::Problem;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    support::run(consumer)
}

async fn consumer() -> Result<(), Problem> {
    let broker = support::broker("rabbitry-example-consumer").await?;
    let queue = support::unique("consumer.payments");
    let topology = Topology::new().queue(Queue::new(&queue));
    broker.declare(&topology).await?;

    let redis_prefix = format!("{}:", support::unique("rabbitry-example"));
    let store = RedisStore::builder(support::redis_url())
        .connect()
        .await
        .map_err(|e| {
            Problem(format!(
                "Redis is not reachable through REDIS_URL ({e}).\n  \
                 start it with `docker compose up -d redis`, or set REDIS_URL."
            ))
        })?;
    let idempotency = Idempotency::builder(store).prefix(&redis_prefix).build()?;

    // What arrives: two ordinary payments, one of them twice (a publisher
    // that resent after a lost confirm), one that fails twice then works,
    // one that can never work, one that keeps failing.
    let publisher = Publisher::builder(broker.clone()).build()?;
    let to = |body: &str| Message::bytes("", &queue, body.to_owned());
    let twice = to("pay 10");
    let messages = [
        twice.clone(),
        twice,
        to("pay 20"),
        to("flaky: pay 30"),
        to("bad card"),
        to("bank down"),
    ];
    for m in messages {
        publisher.send(m).await?;
    }
    println!("published 6 messages to {queue} (one of them twice)");

    let flaky_tries = Arc::new(AtomicU32::new(0));
    let retry = RetryPolicy::default()
        .immediate(2)
        .delays([Duration::from_secs(1)]);
    let consumer = Consumer::builder(broker.clone(), &queue)
        .name("payments")
        .ack_mode(AckMode::Auto)
        .retry(retry.clone())
        .idempotent(idempotency.layer())
        .build()?;
    let shutdown = CancellationToken::new();
    let task = {
        let (consumer, shutdown, tries) = (consumer.clone(), shutdown.clone(), flaky_tries.clone());
        tokio::spawn(async move {
            consumer
                .run(
                    move |d: Delivery| {
                        let tries = tries.clone();
                        async move { handle(&d, &tries) }
                    },
                    shutdown,
                )
                .await
        })
    };

    // Six deliveries settle: 3 handled, 1 duplicate skipped, 2 dead-lettered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = consumer.metrics();
        if m.succeeded >= 3 && m.dead_lettered >= 2 && idempotency.metrics().duplicates >= 1 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Problem(format!("not settled within 30 s: {m:?}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    task.await.map_err(|e| Problem(e.to_string()))??;

    let m = consumer.metrics();
    let dlq = Queue::dead_letter_queue_name(&queue);
    let failed = ErrorQueue::new(broker.clone(), &dlq).list(10).await?;
    println!(
        "handled {}, duplicates skipped {}, failed attempts {}, dead-lettered {}",
        m.succeeded,
        idempotency.metrics().duplicates,
        m.failed_attempts,
        m.dead_lettered
    );
    for f in &failed {
        println!(
            "  in {dlq}: {:?} after {} attempt(s): {}",
            f.preview,
            f.attempts.unwrap_or(0),
            f.reason()
        );
    }

    let mut cleanup = topology;
    for q in retry.retry_queues(&queue) {
        cleanup = cleanup.queue(Queue::new(q).dead_letter(DeadLetter::Off));
    }
    broker.teardown(&cleanup).await?;
    let keys = delete_redis_keys(&redis_prefix).await?;
    println!("removed {queue}, its error and retry queues, and {keys} Redis key(s)");
    Ok(())
}

/// The business logic: its `Result` is the acknowledgement.
fn handle(d: &Delivery, flaky_tries: &AtomicU32) -> Result<(), HandlerError> {
    let body = String::from_utf8_lossy(d.payload());
    match body.as_ref() {
        "bad card" => Err(HandlerError::permanent("card declined: no retry helps")),
        "bank down" => {
            println!("  {body:?}: attempt {} failed", d.attempt());
            Err(HandlerError::retryable("bank unavailable"))
        }
        "flaky: pay 30" if flaky_tries.fetch_add(1, Ordering::SeqCst) < 2 => {
            println!("  {body:?}: attempt {} failed, will retry", d.attempt());
            Err(HandlerError::retryable("timeout talking to the bank"))
        }
        _ => {
            println!("  {body:?}: handled (message {})", d.id());
            Ok(())
        }
    }
}

async fn delete_redis_keys(prefix: &str) -> Result<usize, Problem> {
    use redis::AsyncCommands;
    let client = redis::Client::open(support::redis_url())?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| Problem("Redis did not answer within 5 s".into()))??;
    let keys: Vec<String> = conn.keys(format!("{prefix}*")).await?;
    if !keys.is_empty() {
        let _: () = conn.del(&keys).await?;
    }
    Ok(keys.len())
}
