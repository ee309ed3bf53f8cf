//! `enqueue`: application transactions that each write a business row and
//! enqueue a message with `OutboxStore::enqueue_in`, 16 at once, against
//! the same transactions writing the same outbox row with a hand-written
//! `INSERT` (no validation, no trigger, no NOTIFY). What the NOTIFY trigger
//! that enqueueing once had cost is in docs/outbox.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rabbitry_core::Message;
use rabbitry_postgres::OutboxStore;
use rabbitry_testkit::TestDatabase;
use serde_json::json;
use sqlx::types::Json;

use crate::env::{Env, Side};
use crate::report::{Report, Target};

/// Application transactions at once, on every side.
const CONCURRENCY: usize = 16;
/// A commit per message: fewer per round than the broker scenarios.
const MAX_MESSAGES: usize = 20_000;

#[derive(Clone, Copy)]
enum Write {
    /// `enqueue_in`.
    Sdk,
    /// The same row, inserted by hand.
    Plain,
}

pub(crate) async fn run(env: &Env) -> Result<Report, String> {
    let db = TestDatabase::create().await;
    let store = OutboxStore::builder()
        .max_connections(CONCURRENCY as u32)
        .connect(db.url())
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    sqlx::query("CREATE TABLE bench_orders (task BIGINT, n BIGINT, PRIMARY KEY (task, n))")
        .execute(store.pool())
        .await
        .map_err(|e| e.to_string())?;
    let payload = env.payload();
    let n = env.messages.min(MAX_MESSAGES);
    let mut report = Report::new("enqueue", Some(Target { min_ratio: 0.8 }));
    for _ in 0..env.rounds {
        if env.runs(Side::Sdk) {
            report
                .sdk
                .push(round(&store, Write::Sdk, &payload, n).await?);
        }
        if env.runs(Side::Baseline) {
            report
                .baseline
                .push(round(&store, Write::Plain, &payload, n).await?);
        }
    }
    report.extra.insert(
        "baseline_is".into(),
        json!(format!(
            "the same row by a hand-written INSERT, {CONCURRENCY} transactions at once"
        )),
    );
    Ok(report)
}

/// `n` transactions (one message each) over `CONCURRENCY` tasks; returns
/// transactions per second.
async fn round(store: &OutboxStore, write: Write, payload: &[u8], n: usize) -> Result<f64, String> {
    exec(store, "TRUNCATE bench_orders, rabbitry_outbox").await?;
    let payload: Arc<[u8]> = payload.into();
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|task| {
            let (store, payload) = (store.clone(), payload.clone());
            let share = n / CONCURRENCY + usize::from(task < n % CONCURRENCY);
            tokio::spawn(async move {
                for i in 0..share {
                    transaction(&store, write, &payload, (task, i)).await?;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM rabbitry_outbox")
        .fetch_one(store.pool())
        .await
        .map_err(|e| e.to_string())?;
    if rows != n as i64 {
        return Err(format!("{rows} outbox rows for {n} transactions"));
    }
    Ok(rate)
}

/// One application transaction: its own row, and the message's.
async fn transaction(
    store: &OutboxStore,
    write: Write,
    payload: &[u8],
    (task, i): (usize, usize),
) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    let bounded = tokio::time::timeout(Duration::from_secs(30), async {
        let mut tx = store.pool().begin().await.map_err(|e| fail(&e))?;
        sqlx::query("INSERT INTO bench_orders (task, n) VALUES ($1, $2)")
            .bind(task as i64)
            .bind(i as i64)
            .execute(&mut *tx)
            .await
            .map_err(|e| fail(&e))?;
        let message = Message::bytes("orders", "order.created", payload.to_vec());
        match write {
            Write::Sdk => {
                store
                    .enqueue_in(&mut tx, &message)
                    .await
                    .map_err(|e| fail(&e))?;
            }
            Write::Plain => {
                sqlx::query(
                    "INSERT INTO rabbitry_outbox (message_id, exchange, routing_key, payload, properties)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(message.id())
                .bind(message.exchange_name())
                .bind(message.routing_key())
                .bind(message.payload())
                .bind(Json(message.properties()))
                .execute(&mut *tx)
                .await
                .map_err(|e| fail(&e))?;
            }
        }
        tx.commit().await.map_err(|e| fail(&e))
    });
    bounded
        .await
        .map_err(|_| "a transaction took over 30 s".to_string())?
}

async fn exec(store: &OutboxStore, sql: &'static str) -> Result<(), String> {
    sqlx::raw_sql(sql)
        .execute(store.pool())
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}
