//! The error queue: what a person on call does with the messages a consumer
//! gave up on. List them (a peek: nothing is removed or reordered), page
//! and filter them, read one in full, then replay the ones whose cause is
//! fixed to where they were first published, with confirms and the same
//! message id and headers.
//!
//! The same, from a shell: `rabbitry-relay errors list --queue Q`,
//! `errors replay --queue Q --exception timeout`, `errors purge --queue Q`.
//!
//! Needs RabbitMQ (`AMQP_URL`, or the local default). Uses a queue of its
//! own, removed at the end.
//!
//! ```sh
//! cargo run --example error_queue
//! ```

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rabbitry::{
    Consumer, Delivery, ErrorFilter, ErrorQueue, HandlerError, ListQuery, Message, Publisher,
    Queue, RetryPolicy, Topology,
};
use support::Problem;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    support::run(error_queue)
}

async fn error_queue() -> Result<(), Problem> {
    let broker = support::broker("rabbitry-example-error-queue").await?;
    let queue = support::unique("errors.invoices");
    let dlq = Queue::dead_letter_queue_name(&queue);
    let topology = Topology::new().queue(Queue::new(&queue));
    broker.declare(&topology).await?;

    // A handler that fails: a timeout for invoices 1-4 (the mail server is
    // down), a validation error for invoice 5. No retries, so each failure
    // goes straight to the error queue.
    let mail_server_up = Arc::new(AtomicBool::new(false));
    let consumer = Consumer::builder(broker.clone(), &queue)
        .name("invoices")
        .retry(RetryPolicy::none())
        .build()?;
    let shutdown = CancellationToken::new();
    let task = {
        let (consumer, shutdown, up) = (consumer.clone(), shutdown.clone(), mail_server_up.clone());
        tokio::spawn(async move {
            consumer
                .run(
                    move |d: Delivery| {
                        let up = up.load(Ordering::SeqCst);
                        async move { send_invoice(&d, up) }
                    },
                    shutdown,
                )
                .await
        })
    };
    let publisher = Publisher::builder(broker.clone()).build()?;
    for n in 1..=5 {
        let m =
            Message::json("", &queue, &serde_json::json!({"invoice": n}))?.header("tenant", "acme");
        publisher.send(m).await?;
    }
    wait_for(
        || async { Ok(consumer.metrics().dead_lettered >= 5) },
        "5 failures",
    )
    .await?;
    println!("5 invoices failed and were dead-lettered to {dlq}");

    // 1. List: a page of 3, then the next page after the last id seen.
    let errors = ErrorQueue::new(broker.clone(), &dlq);
    let page = errors.peek(&ListQuery::new().limit(3)).await?;
    print_page("first page", &page);
    let last = page
        .messages
        .last()
        .map(|m| m.message_id.clone())
        .unwrap_or_default();
    let next = errors.peek(&ListQuery::new().limit(3).after(last)).await?;
    print_page("next page", &next);

    // 2. Filter: only the timeouts.
    let timeouts = ErrorFilter::new().exception_contains("timeout");
    let only = errors
        .peek(&ListQuery::new().filter(timeouts.clone()))
        .await?;
    println!("{} of {} failures are timeouts", only.matched, only.depth);

    // 3. Inspect one in full.
    if let Some(m) = page.messages.first() {
        println!(
            "message {}: from {}/{}, failed at {} in {} after {} attempt(s) ({}): {}\n  payload: {}",
            m.message_id,
            m.original_exchange.as_deref().unwrap_or("?"),
            m.original_routing_key.as_deref().unwrap_or("?"),
            m.failed_at_rfc3339().unwrap_or_default(),
            m.consumer.as_deref().unwrap_or("?"),
            m.attempts.unwrap_or(0),
            m.kind.as_deref().unwrap_or("?"),
            m.reason(),
            m.preview
        );
    }

    // 4. The mail server is back: replay the timeouts, and only them.
    mail_server_up.store(true, Ordering::SeqCst);
    let report = errors.replay_where(&publisher, None, &timeouts).await?;
    println!(
        "replayed {} (confirmed), left {} in the error queue",
        report.replayed,
        report.skipped + report.not_matching
    );
    wait_for(
        || async { Ok(consumer.metrics().succeeded >= 4) },
        "4 replayed invoices",
    )
    .await?;
    let left = errors.peek(&ListQuery::new()).await?;
    print_page("left in the error queue", &left);
    if left.depth != 1 {
        return Err(Problem(format!(
            "expected the validation failure alone, found {}",
            left.depth
        )));
    }

    shutdown.cancel();
    task.await??;
    broker.teardown(&topology).await?;
    println!("removed {queue} and {dlq}");
    Ok(())
}

fn send_invoice(d: &Delivery, mail_server_up: bool) -> Result<(), HandlerError> {
    let invoice: serde_json::Value = d.json().map_err(HandlerError::decode)?;
    if invoice["invoice"] == 5 {
        return Err(HandlerError::permanent(
            "ValidationError: no billing address",
        ));
    }
    if !mail_server_up {
        return Err(HandlerError::retryable(
            "MailTimeout: smtp did not answer in 10 s",
        ));
    }
    let replays = d.header("x-replayed").and_then(|v| v.as_i64()).unwrap_or(0);
    println!(
        "  invoice {} sent (message {}, replayed {replays}x)",
        invoice["invoice"],
        d.id()
    );
    Ok(())
}

fn print_page(title: &str, page: &rabbitry::Listing) {
    println!(
        "{title}: {} shown, {} matching, {} in the queue",
        page.messages.len(),
        page.matched,
        page.depth
    );
    for m in &page.messages {
        println!(
            "  {}  {}  {}",
            m.message_id,
            m.failed_at_rfc3339().unwrap_or_default(),
            m.reason()
        );
    }
}

async fn wait_for<F, Fut>(done: F, what: &str) -> Result<(), Problem>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<bool, Problem>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done().await? {
        if tokio::time::Instant::now() > deadline {
            return Err(Problem(format!("waited 30 s for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
