//! Operator commands on the outbox: status, pending and dead rows.

use std::io::{BufRead, IsTerminal, Write};

use rabbitry_postgres::{OutboxRow, OutboxStore, RowFilter};

use crate::Failure;
use crate::cli::{DeadCommand, FilterArgs, PendingCommand};

pub(crate) async fn status(store: &OutboxStore, json: bool) -> Result<(), Failure> {
    let stats = store.stats().await?;
    let causes = store.pending_causes().await?;
    let oldest = stats.oldest_pending_age.map(|d| d.as_secs_f64());
    if json {
        println!(
            "{}",
            serde_json::json!({
                "pending": stats.pending,
                "dead": stats.dead,
                "depth": stats.pending + stats.dead,
                "oldest_pending_age_seconds": oldest,
                "pending_causes": causes,
            })
        );
        return Ok(());
    }
    println!("pending: {}", stats.pending);
    println!("dead:    {}", stats.dead);
    match oldest {
        Some(s) => println!("oldest pending: {s:.1} s"),
        None => println!("oldest pending: -"),
    }
    if !causes.is_empty() {
        println!("pending by last failure:");
        println!(
            "  {:<28} {:>8} {:>8} {:>9}  example",
            "kind", "rows", "due now", "max tries"
        );
        for c in &causes {
            println!(
                "  {:<28} {:>8} {:>8} {:>9}  {}",
                c.kind.as_deref().unwrap_or("(not tried yet)"),
                c.rows,
                c.due,
                c.max_failures,
                c.example.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}

pub(crate) async fn pending(store: &OutboxStore, cmd: PendingCommand) -> Result<(), Failure> {
    let PendingCommand::List {
        filter: f,
        limit,
        json,
    } = cmd;
    let rows = store.pending_list(&filter(&f, Some(limit))).await?;
    print_rows(&rows, json, "no pending rows")
}

fn print_rows(rows: &[OutboxRow], json: bool, none: &str) -> Result<(), Failure> {
    if json {
        for row in rows {
            println!("{}", serde_json::to_string(row)?);
        }
    } else if rows.is_empty() {
        println!("{none}");
    } else {
        println!(
            "{:>8}  {:<24} {:<24} {:>8} {:>8}  last error",
            "id", "exchange", "routing key", "attempts", "tries"
        );
        for r in rows {
            println!(
                "{:>8}  {:<24} {:<24} {:>8} {:>8}  {}",
                r.id,
                r.exchange,
                r.routing_key,
                r.attempts,
                r.failures,
                r.last_error.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}

fn filter(args: &FilterArgs, limit: Option<i64>) -> RowFilter {
    RowFilter {
        exchange: args.exchange.clone(),
        routing_key: args.routing_key.clone(),
        error_contains: args.error_contains.clone(),
        limit,
    }
}

pub(crate) async fn dead(store: &OutboxStore, cmd: DeadCommand) -> Result<(), Failure> {
    match cmd {
        DeadCommand::List {
            filter: f,
            limit,
            json,
        } => {
            let rows = store.dead_list(&filter(&f, Some(limit))).await?;
            print_rows(&rows, json, "no dead rows")
        }
        DeadCommand::Replay { filter: f, yes } => {
            let f = filter(&f, None);
            let n = store.dead_count(&f).await?;
            if n > 0 {
                confirm(&format!("put {n} dead row(s) back to pending?"), yes)?;
            }
            println!("replayed {} row(s)", store.dead_replay(&f).await?);
            Ok(())
        }
        DeadCommand::Purge { filter: f, yes } => {
            let f = filter(&f, None);
            let n = store.dead_count(&f).await?;
            if n > 0 {
                confirm(&format!("delete {n} dead row(s) for good?"), yes)?;
            }
            println!("purged {} row(s)", store.dead_purge(&f).await?);
            Ok(())
        }
    }
}

pub(crate) fn confirm(question: &str, yes: bool) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Failure(format!(
            "{question} refusing without --yes (standard input is not a terminal)"
        )));
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure("cancelled".into()))
    }
}
