//! Operator commands on an error queue: list (a peek that changes
//! nothing), replay, purge.

use std::io::{IsTerminal, Write};

use rabbitry_core::{
    Broker, ErrorFilter, ErrorQueue, FailedMessage, ListQuery, Listing, Publisher,
};

use crate::Failure;
use crate::cli::{ErrorFilterArgs, ErrorsCommand};
use crate::ops::confirm;

pub(crate) async fn errors(amqp_url: &str, cmd: ErrorsCommand) -> Result<(), Failure> {
    let broker = Broker::connect(crate::run::broker_config(
        amqp_url,
        "rabbitry-relay-errors",
    )?)
    .await?;
    match cmd {
        ErrorsCommand::List {
            queue,
            limit,
            offset,
            after,
            filter,
            scan,
            json,
        } => {
            let mut query = ListQuery::new()
                .limit(limit)
                .offset(offset)
                .scan(scan)
                .filter(error_filter(filter));
            if let Some(after) = after {
                query = query.after(after);
            }
            let listing = ErrorQueue::new(broker, &queue).peek(&query).await?;
            let out = std::io::stdout();
            let mut out = out.lock();
            if json {
                for m in &listing.messages {
                    writeln!(out, "{}", json_line(m))?;
                }
                eprintln!("{}", totals(&queue, &listing, offset));
            } else {
                print_table(&mut out, &listing)?;
                writeln!(out, "{}", totals(&queue, &listing, offset))?;
            }
            Ok(())
        }
        ErrorsCommand::Replay {
            queue,
            limit,
            filter,
            yes,
        } => {
            let depth = broker.queue_stats(&queue).await?.messages;
            if depth == 0 {
                println!("no messages in {queue}");
                return Ok(());
            }
            let n = limit.map_or(depth as usize, |l| l.min(depth as usize));
            let filter = error_filter(filter);
            let which = if filter == ErrorFilter::new() {
                "message(s)"
            } else {
                "message(s), the matching ones of"
            };
            confirm(
                &format!("republish {which} the first {n} in {queue} to where they came from?"),
                yes,
            )?;
            let publisher = Publisher::builder(broker.clone()).build()?;
            let report = ErrorQueue::new(broker, &queue)
                .replay_where(&publisher, Some(n), &filter)
                .await?;
            println!(
                "replayed {} (each confirmed by the broker), not matching {}, left in place {}",
                report.replayed, report.not_matching, report.skipped
            );
            Ok(())
        }
        ErrorsCommand::Purge { queue, yes } => {
            let depth = broker.queue_stats(&queue).await?.messages;
            confirm(
                &format!("delete all {depth} message(s) in {queue} for good?"),
                yes,
            )?;
            println!("purged {}", ErrorQueue::new(broker, &queue).purge().await?);
            Ok(())
        }
    }
}

fn error_filter(args: ErrorFilterArgs) -> ErrorFilter {
    let mut f = ErrorFilter::new();
    if let Some(r) = args.reason {
        f = f.reason(r);
    }
    if let Some(e) = args.exception {
        f = f.exception_contains(e);
    }
    if let Some(k) = args.routing_key {
        f = f.routing_key(k);
    }
    f
}

fn json_line(m: &FailedMessage) -> serde_json::Value {
    serde_json::json!({
        "message_id": m.message_id,
        "exception": m.exception,
        "kind": m.kind,
        "original_exchange": m.original_exchange,
        "original_routing_key": m.original_routing_key,
        "original_queue": m.original_queue,
        "attempts": m.attempts,
        "failed_at": m.failed_at_rfc3339(),
        "consumer": m.consumer,
        "death_reason": m.death_reason,
        "delivery_count": m.delivery_count,
        "size": m.size,
        "preview": m.preview,
    })
}

fn print_table(out: &mut impl Write, listing: &Listing) -> std::io::Result<()> {
    if listing.messages.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "{:<36}  {:<20}  {:>8}  {:<32}  reason",
        "message id", "failed at (UTC)", "attempts", "from (exchange/routing key)"
    )?;
    for m in &listing.messages {
        let from = format!(
            "{}/{}",
            m.original_exchange.as_deref().unwrap_or("?"),
            m.original_routing_key.as_deref().unwrap_or("?")
        );
        writeln!(
            out,
            "{:<36}  {:<20}  {:>8}  {:<32}  {}",
            m.message_id,
            m.failed_at_rfc3339().as_deref().unwrap_or("-"),
            m.attempts.map_or("-".into(), |a| a.to_string()),
            from,
            one_line(m.reason()),
        )?;
    }
    Ok(())
}

/// A reason on one line: an error message may hold newlines or terminal
/// control characters, which must not reach the operator's terminal.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `showing 1-20 of 35 matching (120 in orders.dlq)`, and what was not read.
fn totals(queue: &str, l: &Listing, offset: usize) -> String {
    let shown = if l.messages.is_empty() {
        "showing none".to_owned()
    } else {
        format!("showing {}-{}", offset + 1, offset + l.messages.len())
    };
    let mut line = format!("{shown} of {} matching ({} in {queue}", l.matched, l.depth);
    if l.other_consumers > 0 {
        line.push_str(&format!(
            "; {} other consumer(s) on the queue: what they hold is not shown",
            l.other_consumers
        ));
    }
    if l.complete {
        line.push(')');
    } else {
        line.push_str(&format!(
            "; only the first {} read: raise --scan to see the rest)",
            l.scanned
        ));
    }
    line
}

/// Whether to colour output: only for a terminal, and never with NO_COLOR.
pub(crate) fn colour(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none()
}
