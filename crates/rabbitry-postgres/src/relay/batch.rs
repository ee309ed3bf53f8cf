//! One batch: claim, publish pipelined with confirms, settle, in one
//! transaction whose every Postgres step is bounded.

use std::sync::atomic::Ordering;

use super::{BatchReport, Relay};
use crate::error::{Error, Result};
use crate::failure::classify;
use crate::outbox::{Bounded, Settlement};

impl Relay {
    /// Runs one batch: claim, publish pipelined with confirms, settle, all
    /// in one transaction. Each Postgres step (begin and claim, settle and
    /// commit) is bounded by the store's `call_timeout`; the publishing
    /// step by the publisher's own timeout. If a step times out, or the
    /// batch is dropped midway, its connection is closed: the transaction
    /// rolls back and its rows stay pending, claimable by any relay.
    pub async fn run_batch(&self) -> Result<BatchReport> {
        let cfg = &self.inner.config;
        let store = &self.inner.store;
        let started = std::time::Instant::now();
        let mut b =
            Bounded::acquire(store.pool(), store.call_timeout(), "claiming outbox rows").await?;
        b.begin().await?;
        let (rows, parked) = b
            .step(async |c| store.claim(c, cfg.batch_size, cfg.ordered).await)
            .await?;
        let claimed_at = started.elapsed();
        let mut report = BatchReport {
            claimed: rows.len() + parked as usize,
            dead: parked,
            ..Default::default()
        };
        if rows.is_empty() {
            b.commit().await?;
            self.inner
                .counters
                .dead
                .fetch_add(parked, Ordering::Relaxed);
            return Ok(report);
        }
        let (claims, messages): (Vec<_>, Vec<_>) = rows
            .into_iter()
            .map(|r| ((r.id, r.failures), r.message))
            .unzip();
        let publishing = self.inner.publisher.send_all(&messages);
        let Ok(results) = tokio::time::timeout(cfg.publish_bound, publishing).await else {
            // Dropping `b` inside its transaction closes the connection:
            // the rows go back to pending as they were.
            return Err(Error::TimedOut {
                operation: "publishing a batch",
                after: cfg.publish_bound,
            });
        };
        let published_at = started.elapsed();
        let mut outage: Option<String> = None;
        let mut outage_rows = 0usize;
        let settled: Vec<Settlement> = claims
            .into_iter()
            .zip(messages.iter().zip(results))
            .map(|((id, failures), (message, result))| match result {
                Ok(()) => {
                    report.published += 1;
                    Settlement::Published(id)
                }
                Err(error) => {
                    report.failed += 1;
                    let (kind, counts) = classify(&error);
                    if counts {
                        // The message's own fault: worth a line each.
                        tracing::warn!(
                            outbox_id = id,
                            message_id = message.id(),
                            failures = failures + 1,
                            %error,
                            "outbox row failed to publish"
                        );
                    } else {
                        // An outage fails every row alike: one line per
                        // batch (below), not one per row.
                        outage.get_or_insert_with(|| error.to_string());
                        outage_rows += 1;
                    }
                    Settlement::Failed {
                        id,
                        error: error.to_string(),
                        kind,
                        counts,
                        retry_in: cfg.backoff.delay(u32::try_from(failures).unwrap_or(0)),
                    }
                }
            })
            .collect();
        // During an outage every poll fails a batch: one line per 30 s, with
        // the count of batches not logged, and again at once after the
        // broker took rows.
        self.warn_outage(outage.as_deref(), outage_rows, report.published);
        b.renew(store.call_timeout(), "settling outbox rows");
        report.dead += b
            .step(async |c| store.settle(c, &settled, cfg.max_attempts).await)
            .await?;
        b.commit().await?;
        tracing::debug!(
            claimed = report.claimed,
            published = report.published,
            claim_ms = claimed_at.as_millis() as u64,
            publish_ms = (published_at - claimed_at).as_millis() as u64,
            settle_ms = (started.elapsed() - published_at).as_millis() as u64,
            "outbox batch"
        );
        let c = &self.inner.counters;
        c.published
            .fetch_add(report.published as u64, Ordering::Relaxed);
        c.failed.fetch_add(report.failed as u64, Ordering::Relaxed);
        c.dead.fetch_add(report.dead, Ordering::Relaxed);
        if report.dead > 0 {
            tracing::error!(
                count = report.dead,
                "outbox rows parked as dead (attempts used up, or unpublishable): `rabbitry-relay dead list` shows why, `dead replay` sends them again"
            );
        }
        Ok(report)
    }

    /// During an outage every poll fails a batch: its line is logged once
    /// per 30 s, with the count of batches not logged, and at once again
    /// after the broker took rows.
    fn warn_outage(&self, outage: Option<&str>, rows: usize, published: usize) {
        let mut warn = self
            .inner
            .outage_warn
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match outage {
            Some(error) => {
                if let Some(suppressed) = warn.hit(std::time::Instant::now()) {
                    tracing::warn!(
                        rows,
                        error,
                        suppressed,
                        "outbox rows not published: the broker is unavailable; they back off and keep their attempts"
                    );
                }
            }
            None if published > 0 => warn.reset(),
            None => {}
        }
    }
}
