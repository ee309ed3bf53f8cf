//! Measures concurrent `enqueue_in` throughput with and without a NOTIFY
//! trigger on the outbox (the trigger the first migration installed and a
//! later one dropped). A measurement, not a test: it asserts nothing.
//!
//! ```sh
//! cargo test -p rabbitry-postgres --release --test enqueue_throughput -- --ignored --nocapture
//! ```
//! Settings: `ENQUEUE_TASKS` (default 32), `ENQUEUE_SECONDS` per run
//! (default 5), `ENQUEUE_ROUNDS` (default 5, alternating with and without).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rabbitry_core::Message;
use rabbitry_postgres::OutboxStore;

const OLD_TRIGGER: &str = "
CREATE OR REPLACE FUNCTION rabbitry_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('rabbitry_outbox', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER rabbitry_outbox_notify
    AFTER INSERT ON rabbitry_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION rabbitry_outbox_notify();";

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Business transactions per second: each inserts an order and enqueues a
/// message in the same transaction, then commits (and then calls
/// `wake()`, with `wake`).
async fn run(store: &OutboxStore, tasks: u64, seconds: u64, wake: bool) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..tasks)
        .map(|t| {
            let (store, done) = (store.clone(), done.clone());
            tokio::spawn(async move {
                let mut n = 0_i64;
                while Instant::now() < stop {
                    let mut tx = store.pool().begin().await.expect("begin");
                    sqlx::query("INSERT INTO orders (task, n) VALUES ($1, $2)")
                        .bind(t as i64)
                        .bind(n)
                        .execute(&mut *tx)
                        .await
                        .expect("business write");
                    let msg = Message::bytes("orders", "order.created", vec![b'x'; 512]);
                    store.enqueue_in(&mut tx, &msg).await.expect("enqueue");
                    tx.commit().await.expect("commit");
                    if wake {
                        store.wake().await;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    done.load(Ordering::Relaxed) as f64 / seconds as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --ignored --nocapture"]
async fn enqueue_in_throughput_with_and_without_the_notify_trigger() {
    let (tasks, seconds, rounds) = (
        setting("ENQUEUE_TASKS", 32),
        setting("ENQUEUE_SECONDS", 5),
        setting("ENQUEUE_ROUNDS", 5),
    );
    let (db, _) = support::database().await;
    let store = OutboxStore::builder()
        .max_connections(tasks as u32)
        .connect(db.url())
        .await
        .expect("connect");
    sqlx::query("CREATE TABLE orders (task BIGINT, n BIGINT, PRIMARY KEY (task, n))")
        .execute(store.pool())
        .await
        .expect("orders");
    let (mut with, mut without, mut woken) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        for (trigger, wake) in [(true, false), (false, false), (false, true)] {
            sqlx::raw_sql("TRUNCATE orders, rabbitry_outbox; DROP TRIGGER IF EXISTS rabbitry_outbox_notify ON rabbitry_outbox")
                .execute(store.pool())
                .await
                .expect("reset");
            if trigger {
                sqlx::raw_sql(OLD_TRIGGER)
                    .execute(store.pool())
                    .await
                    .expect("trigger");
            }
            let rate = run(&store, tasks, seconds, wake).await;
            println!("round {round} trigger={trigger} wake={wake}: {rate:.0} tx/s");
            match (trigger, wake) {
                (true, _) => with.push(rate),
                (false, false) => without.push(rate),
                (false, true) => woken.push(rate),
            }
        }
    }
    println!(
        "without trigger, wake() after each commit: median {:.0} tx/s",
        median(woken)
    );
    println!(
        "{tasks} tasks, {seconds} s x {rounds} rounds: median with NOTIFY trigger {:.0} tx/s (range {:.0}-{:.0}), without {:.0} tx/s (range {:.0}-{:.0})",
        median(with.clone()),
        with.iter().copied().fold(f64::MAX, f64::min),
        with.iter().copied().fold(0.0, f64::max),
        median(without.clone()),
        without.iter().copied().fold(f64::MAX, f64::min),
        without.iter().copied().fold(0.0, f64::max),
    );
}
