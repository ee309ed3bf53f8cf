//! rabbitry-bench: the SDK against raw lapin (or its own direct path), in
//! the same process run, rounds alternating A B A B.
//!
//! `cargo run --release -p rabbitry-bench -- all [--json]`

mod env;
mod report;
mod scenarios;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rabbitry_testkit::services;

use crate::env::Env;
use crate::report::Report;

/// Benchmarks rabbitry against raw lapin, in one run.
#[derive(Debug, Parser)]
#[command(name = "rabbitry-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// One JSON line per scenario instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Rounds per side (at least 3 for a median worth quoting).
    #[arg(long, global = true, default_value_t = 3)]
    rounds: usize,
    /// Messages per round.
    #[arg(long, global = true, default_value_t = 100_000)]
    messages: usize,
    /// Payload size in bytes.
    #[arg(long, global = true, default_value_t = 1024)]
    size: usize,
    /// Run one side only (`publish` and `enqueue`), to profile it alone
    /// (`perf record`); no ratio is reported then.
    #[arg(long, global = true, value_enum)]
    only: Option<env::Side>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
enum Cmd {
    /// Every scenario.
    All,
    /// Confirmed publishing: SDK vs raw lapin on one channel.
    Publish,
    /// Consuming: SDK auto-ack consumer vs raw lapin with multiple acks.
    Consume,
    /// Relay drain rate vs the SDK's direct confirmed publish.
    Relay,
    /// Idempotent consuming: the consumer with the Redis idempotency layer
    /// vs the same consumer without it.
    ConsumeIdempotent,
    /// Consuming with one insert per message: the Postgres inbox vs the
    /// same handler without it.
    ConsumeInbox,
    /// Enqueueing inside application transactions (16 at once): the
    /// outbox's `enqueue_in` vs the same row by a hand-written `INSERT`.
    Enqueue,
    /// Ordered consuming: per-key lanes (1,000 keys, concurrency 16) vs the
    /// plain unordered consumer with the same concurrency.
    Ordered,
    /// Delayed-message precision: lateness of random 1-10 s delays through
    /// the cascade and through fixed delay queues (early must be 0).
    DelayPrecision,
    /// Internal: run the outbox relay loop (used by the relay scenario when
    /// the rabbitry-relay binary is not built).
    #[command(hide = true)]
    RelayWorker,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.command == Cmd::RelayWorker {
        return match rt.block_on(relay_worker()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let env = Env {
        amqp_url: services().amqp_url().to_owned(),
        messages: cli.messages,
        size: cli.size,
        rounds: cli.rounds.max(1),
        only: cli.only,
    };
    let scenarios: Vec<Cmd> = match cli.command {
        Cmd::All => vec![
            Cmd::Publish,
            Cmd::Consume,
            Cmd::ConsumeIdempotent,
            Cmd::ConsumeInbox,
            Cmd::Relay,
            Cmd::Enqueue,
            Cmd::Ordered,
            Cmd::DelayPrecision,
        ],
        one => vec![one],
    };
    if !cli.json {
        println!(
            "rabbitry-bench: {} messages of {} bytes per round, {} rounds per side, {} cores",
            env.messages,
            env.size,
            env.rounds,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!("{}", report::header());
    }
    for scenario in scenarios {
        let report = rt.block_on(run(scenario, &env));
        if cli.json {
            println!("{}", report.json());
        } else {
            println!("{}", report.row());
        }
    }
    // The bench measures; it does not judge: missed targets still exit 0.
    ExitCode::SUCCESS
}

async fn run(scenario: Cmd, env: &Env) -> Report {
    let (name, result) = match scenario {
        Cmd::Publish => ("publish", scenarios::publish::run(env).await),
        Cmd::Consume => ("consume", scenarios::consume::run(env).await),
        Cmd::Relay => ("relay", scenarios::relay::run(env).await),
        Cmd::ConsumeIdempotent => (
            "consume-idempotent",
            scenarios::consume_idempotent::run(env).await,
        ),
        Cmd::ConsumeInbox => ("consume-inbox", scenarios::consume_inbox::run(env).await),
        Cmd::Enqueue => ("enqueue", scenarios::enqueue::run(env).await),
        Cmd::Ordered => ("ordered", scenarios::ordered::run(env).await),
        Cmd::DelayPrecision => (
            "delay-precision",
            scenarios::delay_precision::run(env).await,
        ),
        Cmd::All | Cmd::RelayWorker => return Report::skipped("all", "not a scenario"),
    };
    result.unwrap_or_else(|e| Report::skipped(name, format!("could not run: {e}")))
}

/// The relay loop alone, configured from `DATABASE_URL` and `RABBITRY_AMQP_URL`.
async fn relay_worker() -> Result<(), String> {
    let db = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set".to_string())?;
    let amqp = std::env::var("RABBITRY_AMQP_URL")
        .map_err(|_| "RABBITRY_AMQP_URL is not set".to_string())?;
    let broker = rabbitry_core::Broker::lazy(
        rabbitry_core::BrokerConfig::builder()
            .endpoint(amqp)
            .connection_name("rabbitry-bench-relay")
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let publisher = rabbitry_core::Publisher::builder(broker)
        .build()
        .map_err(|e| e.to_string())?;
    let store = rabbitry_postgres::OutboxStore::connect(&db)
        .await
        .map_err(|e| e.to_string())?;
    let relay =
        rabbitry_postgres::Relay::new(store, publisher, rabbitry_postgres::RelayConfig::default())
            .map_err(|e| e.to_string())?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            term.recv().await;
        }
        s.cancel();
    });
    relay.run(shutdown).await.map_err(|e| e.to_string())
}
