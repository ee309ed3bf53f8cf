//! The relay's Prometheus exposition: a `metrics` recorder installed at
//! start, so that everything rabbitry records in this process (see
//! `rabbitry_core::metric_names`) is exported, plus the relay's own counters
//! and the outbox's depth and age, read at each scrape.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rabbitry_core::Role;

use crate::http::State;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Histogram buckets for durations in seconds: 1 ms to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the Prometheus recorder; call before building the broker and
/// the relay, so that their metrics register with it. Needs the runtime.
pub(crate) fn install() -> Result<(), String> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(SECONDS_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    // Histograms keep their samples until upkeep folds them in: without it
    // they would grow between scrapes, and forever if nobody scrapes.
    let upkeep = recorder.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let _ = HANDLE.set(recorder);
    rabbitry_core::describe_metrics();
    describe();
    Ok(())
}

const PUBLISHED: &str = "rabbitry_relay_published_total";
const FAILED: &str = "rabbitry_relay_failed_total";
const DEAD: &str = "rabbitry_relay_dead_total";
const BATCH_ERRORS: &str = "rabbitry_relay_batch_errors_total";
const CONNECTED: &str = "rabbitry_relay_broker_connected";
const DEPTH: &str = "rabbitry_outbox_depth";
const OLDEST: &str = "rabbitry_outbox_oldest_pending_age_seconds";
const OUTBOX_UP: &str = "rabbitry_outbox_up";

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(PUBLISHED, "Outbox rows published and deleted.");
    describe_counter!(FAILED, "Failed publish attempts of outbox rows.");
    describe_counter!(DEAD, "Outbox rows parked as dead.");
    describe_counter!(
        BATCH_ERRORS,
        "Batches that failed as a whole (Postgres or broker unreachable)."
    );
    describe_gauge!(CONNECTED, "1 when the publishing connection is up.");
    describe_gauge!(DEPTH, "Outbox rows by status.");
    describe_gauge!(OLDEST, "Age of the oldest pending row, in seconds.");
    describe_gauge!(OUTBOX_UP, "1 when the outbox could be read at this scrape.");
}

/// The exposition text, with the relay's figures brought up to date.
pub(crate) async fn render(state: &State) -> String {
    let m = state.relay.metrics();
    metrics::counter!(PUBLISHED).absolute(m.published);
    metrics::counter!(FAILED).absolute(m.failed);
    metrics::counter!(DEAD).absolute(m.dead);
    metrics::counter!(BATCH_ERRORS).absolute(m.batch_errors);
    let connected = state.broker.state(Role::Publish).is_connected();
    metrics::gauge!(CONNECTED).set(f64::from(u8::from(connected)));
    match state.store.stats().await {
        Ok(stats) => {
            metrics::gauge!(DEPTH, "status" => "pending").set(stats.pending as f64);
            metrics::gauge!(DEPTH, "status" => "dead").set(stats.dead as f64);
            let age = stats.oldest_pending_age.map_or(0.0, |d| d.as_secs_f64());
            metrics::gauge!(OLDEST).set(age);
            metrics::gauge!(OUTBOX_UP).set(1.0);
        }
        Err(error) => {
            tracing::debug!(%error, "outbox stats unavailable");
            metrics::gauge!(OUTBOX_UP).set(0.0);
            // Unknown, not the last scrape's figures.
            metrics::gauge!(DEPTH, "status" => "pending").set(f64::NAN);
            metrics::gauge!(DEPTH, "status" => "dead").set(f64::NAN);
            metrics::gauge!(OLDEST).set(f64::NAN);
        }
    }
    HANDLE.get().map_or_else(
        || "# the metrics recorder is not installed\n".to_owned(),
        PrometheusHandle::render,
    )
}
