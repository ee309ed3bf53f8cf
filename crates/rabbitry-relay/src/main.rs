//! rabbitry-relay: the outbox resend worker and its operator commands.
//!
//! `rabbitry-relay --help` lists the commands and their settings; every
//! setting can also come from the environment.

mod cli;
mod errors;
mod http;
mod ops;
mod prom;
mod run;

use std::process::ExitCode;

use clap::Parser;
use rabbitry_postgres::OutboxStore;

use crate::cli::{Cli, Command, LogFormat};

/// A failure shown to the operator as one line, never as a panic.
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    let amqp_url = cli.amqp_url.or_else(|| std::env::var("AMQP_URL").ok());
    if let Command::Errors(cmd) = cli.command {
        let amqp_url = amqp_url.ok_or_else(no_amqp_url)?;
        return errors::errors(&amqp_url, cmd).await;
    }
    let database_url = cli.database_url.ok_or_else(|| {
        Failure("DATABASE_URL is not set: pass --database-url or set DATABASE_URL (postgres://user@host/db)".into())
    })?;
    match cli.command {
        Command::Run(args) => {
            let amqp_url = amqp_url.ok_or_else(no_amqp_url)?;
            // Before the broker and the relay exist, so their metrics
            // register with it.
            prom::install().map_err(Failure)?;
            run::run(&database_url, &amqp_url, args).await
        }
        Command::Migrate => {
            let store = connect(&database_url).await?;
            store.migrate().await?;
            println!("outbox migrations applied");
            Ok(())
        }
        Command::Status { json } => ops::status(&connect(&database_url).await?, json).await,
        Command::Pending(cmd) => ops::pending(&connect(&database_url).await?, cmd).await,
        Command::Dead(cmd) => ops::dead(&connect(&database_url).await?, cmd).await,
        Command::Errors(_) => unreachable!("handled above"),
    }
}

fn no_amqp_url() -> Failure {
    Failure("no broker URL: pass --amqp-url or set RABBITRY_AMQP_URL or AMQP_URL".into())
}

async fn connect(url: &str) -> Result<OutboxStore, Failure> {
    Ok(OutboxStore::connect(url).await?)
}

fn init_logging(format: LogFormat) {
    // RUST_LOG overrides the filter rabbitry recommends (INFO, without
    // lapin's expected channel errors, sqlx's notices or the per-message
    // spans); the targets that print payloads stay off either way. An
    // unparseable RUST_LOG falls back to the recommendation.
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter =
        tracing_subscriber::EnvFilter::try_new(rabbitry_core::log_filter(rust_log.as_deref()))
            .unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(rabbitry_core::log_filter(None))
            });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // No colour codes in a pipe or a file.
        .with_ansi(errors::colour(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
