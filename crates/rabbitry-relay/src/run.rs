//! `rabbitry-relay run`: the worker.

use std::sync::Arc;
use std::time::Duration;

use rabbitry_core::{Broker, BrokerConfig, Publisher, Role};
use rabbitry_postgres::{Backoff, OutboxStore, Relay, RelayConfig};
use tokio_util::sync::CancellationToken;

use crate::Failure;
use crate::cli::RunArgs;
use crate::http;

pub(crate) async fn run(database_url: &str, amqp_url: &str, args: RunArgs) -> Result<(), Failure> {
    let config = broker_config(amqp_url, &args.connection_name)?;
    let broker = Broker::lazy(config)?;
    let publisher = Publisher::builder(broker.clone())
        .channels(args.channels)
        .timeout(Duration::from_millis(args.publish_timeout_ms))
        .app_id(&args.connection_name)
        .build()?;
    let store = OutboxStore::builder()
        .statement_timeout(Duration::from_millis(args.pg_statement_timeout_ms))
        .call_timeout(Duration::from_millis(args.pg_call_timeout_ms))
        .idle_in_transaction_timeout(Duration::from_millis(
            args.pg_idle_in_transaction_timeout_ms,
        ))
        .connect_lazy(database_url)?;
    if args.pg_idle_in_transaction_timeout_ms <= args.publish_timeout_ms {
        return Err(Failure(
            "--pg-idle-in-transaction-timeout-ms must exceed --publish-timeout-ms: a batch's transaction waits while its rows are published".into(),
        ));
    }
    let relay_config = RelayConfig::default()
        .batch_size(args.batch_size)
        .poll_interval(Duration::from_millis(args.poll_interval_ms))
        .max_attempts(args.max_attempts)
        .backoff(Backoff::new(
            Duration::from_millis(args.backoff_base_ms),
            Duration::from_millis(args.backoff_max_ms),
        ))
        .ordered(args.ordered)
        .concurrency(args.concurrency)
        .listen(!args.no_listen)
        .shutdown_grace(Duration::from_millis(args.shutdown_grace_ms));
    let relay = Relay::new(store.clone(), publisher, relay_config)?;

    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());

    wait_for_database(&store, &shutdown).await?;
    if shutdown.is_cancelled() {
        return Ok(());
    }
    // Check the broker once at start, so that an operator sees at once
    // whether it is reachable; the worker keeps retrying either way.
    match broker.open_channel(Role::Publish).await {
        Ok(_) => tracing::info!("broker reachable"),
        Err(error) => {
            tracing::warn!(%error, "broker unreachable at start; rows stay pending and the relay keeps retrying")
        }
    }

    let server = http::serve(
        args.metrics_addr,
        Arc::new(http::State {
            relay: relay.clone(),
            store,
            broker,
        }),
    )
    .await
    .map_err(|e| {
        Failure(format!(
            "cannot serve metrics on {}: {e}",
            args.metrics_addr
        ))
    })?;

    tracing::info!(
        batch_size = args.batch_size,
        ordered = args.ordered,
        metrics = %args.metrics_addr,
        "rabbitry-relay running"
    );
    let result = relay.run(shutdown).await;
    server.abort();
    let m = relay.metrics();
    tracing::info!(
        published = m.published,
        failed = m.failed,
        dead = m.dead,
        "rabbitry-relay stopped"
    );
    result.map_err(Failure::from)
}

/// The broker settings: the URL and connection name from the command line
/// (or their variables), every other broker setting from the same
/// variables a library user sets (`BrokerConfig::from_env`; the list is in
/// docs/configuration.md), with a 5 s connect timeout unless one is set.
pub(crate) fn broker_config(amqp_url: &str, name: &str) -> Result<BrokerConfig, Failure> {
    Ok(BrokerConfig::from_env_with(|var| match var {
        "RABBITRY_AMQP_URL" => Some(amqp_url.to_owned()),
        "RABBITRY_CONNECTION_NAME" => Some(name.to_owned()),
        "RABBITRY_CONNECT_TIMEOUT_MS" => {
            Some(std::env::var(var).unwrap_or_else(|_| "5000".to_owned()))
        }
        other => std::env::var(other).ok(),
    })?)
}

/// Waits until Postgres answers and the outbox table exists. A database that
/// is down is retried (and logged); one that is not migrated stops the relay
/// with the command that fixes it.
async fn wait_for_database(
    store: &OutboxStore,
    shutdown: &CancellationToken,
) -> Result<(), Failure> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match store.check_migrated().await {
            Ok(()) => return Ok(()),
            Err(rabbitry_postgres::Error::NotMigrated) => {
                return Err(Failure(
                    "the outbox table does not exist in this database, or is out of date: run `rabbitry-relay migrate` first".into(),
                ));
            }
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in = ?delay, "postgres unreachable; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested; finishing the batch in hand");
        shutdown.cancel();
    });
}
