//! `consume-inbox`: a consumer whose handler writes one row per message in
//! its own transaction, with the Postgres inbox (the inbox row and the
//! effect commit together) and without it. Rounds alternate: inbox, plain.
//! Both sides share one pool and the same concurrency, so the difference is
//! the inbox's insert, nothing else.

use std::time::Duration;

use rabbitry_core::{Consumer, Delivery, HandlerError, RetryPolicy};
use rabbitry_postgres::Inbox;
use rabbitry_testkit::TestDatabase;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::env::{Env, bench_queue, delete, purge, raw_publish_with_ids};
use crate::report::{Report, Target};

const PREFETCH: u16 = 200;
/// Handlers (and so transactions) at once, on both sides.
const CONCURRENCY: usize = 16;
/// A commit per message is far slower than a consume: fewer per round.
const MAX_MESSAGES: usize = 20_000;

pub(crate) async fn run(env: &Env) -> Result<Report, String> {
    let broker = env.broker().await?;
    let raw = env.raw().await?;
    let db = TestDatabase::create().await;
    let pool = PgPoolOptions::new()
        .max_connections(CONCURRENCY as u32)
        .acquire_timeout(Duration::from_secs(10))
        .connect(db.url())
        .await
        .map_err(|e| e.to_string())?;
    let inbox = Inbox::with_pool(pool.clone());
    inbox.migrate().await.map_err(|e| e.to_string())?;
    sqlx::query("CREATE TABLE bench_effects (message_id TEXT NOT NULL)")
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;
    let queue = bench_queue(&broker, "bench-inbox").await?;
    let payload = env.payload();
    let n = env.messages.min(MAX_MESSAGES);
    let mut report = Report::new("consume-inbox", Some(Target { min_ratio: 0.8 }));
    for round in 0..env.rounds {
        purge(&raw, &queue).await?;
        let ids = format!("{queue}-{round}-a");
        raw_publish_with_ids(&raw, &queue, &payload, n, &ids).await?;
        let c = consumer(&broker, &queue)?;
        let i = inbox.clone();
        let rate =
            super::consume::timed_round_with(c, n, move |d| with_inbox(i.clone(), d)).await?;
        report.sdk.push(rate);
        let rows = count(&pool, &ids).await?;
        if rows != n as i64 {
            return Err(format!("the inbox side wrote {rows} rows for {n} messages"));
        }

        purge(&raw, &queue).await?;
        let ids = format!("{queue}-{round}-b");
        raw_publish_with_ids(&raw, &queue, &payload, n, &ids).await?;
        let c = consumer(&broker, &queue)?;
        let p = pool.clone();
        let rate = super::consume::timed_round_with(c, n, move |d| plain(p.clone(), d)).await?;
        report.baseline.push(rate);
    }
    delete(&raw, &queue).await;
    pool.close().await;
    report.extra.insert("messages".into(), serde_json::json!(n));
    report
        .extra
        .insert("concurrency".into(), serde_json::json!(CONCURRENCY));
    report.extra.insert(
        "baseline_is".into(),
        serde_json::json!("the same handler's insert and commit without the inbox"),
    );
    Ok(report)
}

fn consumer(broker: &rabbitry_core::Broker, queue: &str) -> Result<Consumer, String> {
    Consumer::builder(broker.clone(), queue)
        .prefetch(PREFETCH)
        .concurrency(CONCURRENCY)
        .retry(RetryPolicy::none())
        .build()
        .map_err(|e| e.to_string())
}

const INSERT: &str = "INSERT INTO bench_effects (message_id) VALUES ($1)";

async fn with_inbox(inbox: Inbox, d: Delivery) -> Result<(), HandlerError> {
    let Some(mut tx) = inbox.begin("bench", d.id()).await? else {
        return Ok(());
    };
    sqlx::query(INSERT)
        .bind(d.id())
        .execute(tx.conn())
        .await
        .map_err(HandlerError::retryable)?;
    tx.commit().await?;
    Ok(())
}

async fn plain(pool: PgPool, d: Delivery) -> Result<(), HandlerError> {
    let mut tx = pool.begin().await.map_err(HandlerError::retryable)?;
    sqlx::query(INSERT)
        .bind(d.id())
        .execute(&mut *tx)
        .await
        .map_err(HandlerError::retryable)?;
    tx.commit().await.map_err(HandlerError::retryable)?;
    Ok(())
}

async fn count(pool: &PgPool, prefix: &str) -> Result<i64, String> {
    sqlx::query_scalar("SELECT count(*) FROM bench_effects WHERE message_id LIKE $1 || '-%'")
        .bind(prefix)
        .fetch_one(pool)
        .await
        .map_err(|e| e.to_string())
}
