//! The Postgres inbox from a handler's side, against the real broker and
//! Postgres: one business row for three deliveries of one message, also
//! when a run's transaction is rolled back and the message redelivered; and
//! the cleanup of old rows in batches.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rabbitry::postgres::Inbox;
use rabbitry::{Consumer, Delivery, HandlerError, Message, Publisher};

async fn inbox() -> (rabbitry_testkit::TestDatabase, Inbox, sqlx::PgPool) {
    let db = rabbitry_testkit::TestDatabase::create().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(5))
        .connect(db.url())
        .await
        .expect("connect");
    let inbox = Inbox::with_pool(pool.clone()).timeout(Duration::from_secs(5));
    inbox.migrate().await.expect("migrate");
    sqlx::query("CREATE TABLE shipments (id BIGSERIAL PRIMARY KEY, order_id TEXT NOT NULL)")
        .execute(&pool)
        .await
        .expect("business table");
    (db, inbox, pool)
}

async fn shipments(pool: &sqlx::PgPool, order: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM shipments WHERE order_id = $1")
        .bind(order)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn three_deliveries_keep_one_business_row_even_after_a_rolled_back_run() {
    let broker = common::broker().await;
    let (queue, _cleanup) = common::work_queue(&broker, "idem-inbox").await;
    let (_db, inbox, pool) = inbox().await;
    let consumer = Consumer::builder(broker.clone(), &queue)
        .concurrency(2)
        .build()
        .expect("consumer");
    let (runs, skipped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (r, s, i) = (runs.clone(), skipped.clone(), inbox.clone());
    let (shutdown, task) = common::spawn_consumer(&consumer, move |d: Delivery| {
        let (r, s, inbox) = (r.clone(), s.clone(), i.clone());
        async move {
            let Some(mut tx) = inbox.begin("shipping", d.id()).await? else {
                s.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            };
            sqlx::query("INSERT INTO shipments (order_id) VALUES ($1)")
                .bind(String::from_utf8_lossy(d.payload()).into_owned())
                .execute(tx.conn())
                .await?;
            if r.fetch_add(1, Ordering::SeqCst) == 0 {
                // The first run fails after its write: the transaction is
                // rolled back (dropped) and the broker delivers it again.
                drop(tx);
                return Err(HandlerError::requeue("the carrier timed out"));
            }
            tx.commit().await?;
            Ok(())
        }
    });
    let publisher = Publisher::builder(broker.clone())
        .build()
        .expect("publisher");
    for _ in 0..3 {
        let m = Message::bytes("", &queue, "order-7").message_id("ship-order-7");
        publisher.send(m).await.expect("published");
    }
    let done = common::eventually(Duration::from_secs(30), || {
        let n = runs.load(Ordering::SeqCst) + skipped.load(Ordering::SeqCst);
        async move { n >= 4 }
    })
    .await;
    assert!(done, "a failed run, a committed one and two skipped copies");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        shipments(&pool, "order-7").await,
        1,
        "exactly one business row"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the rolled-back run and the committed one"
    );
    assert_eq!(skipped.load(Ordering::SeqCst), 2, "two duplicates skipped");
    assert!(
        inbox
            .contains("shipping", "ship-order-7")
            .await
            .expect("read")
    );
    assert_eq!(rabbitry_testkit::queue_depth(&queue).await, Some(0));
    common::stop_consumer(shutdown, task).await;
}

#[tokio::test]
async fn a_duplicate_waits_for_a_run_in_progress_and_skips_once_it_commits() {
    let (_db, inbox, pool) = inbox().await;
    let mut first = inbox.begin("g", "m1").await.expect("begin").expect("new");
    sqlx::query("INSERT INTO shipments (order_id) VALUES ('o1')")
        .execute(first.conn())
        .await
        .expect("write");
    let racing = tokio::spawn({
        let inbox = inbox.clone();
        async move { inbox.begin("g", "m1").await.map(|tx| tx.is_some()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!racing.is_finished(), "the duplicate waits on the row");
    first.commit().await.expect("commit");
    let second_ran = racing.await.expect("join").expect("begin");
    assert!(!second_ran, "it sees the committed row and skips");
    assert_eq!(shipments(&pool, "o1").await, 1);
    // Another group handles the same message on its own.
    assert!(inbox.begin("other", "m1").await.expect("begin").is_some());
}

#[tokio::test]
async fn a_duplicate_behind_a_stuck_run_fails_within_the_bound_and_its_transaction_keeps_it() {
    let (_db, inbox, pool) = inbox().await;
    let inbox = inbox.timeout(Duration::from_millis(400));
    let stuck = inbox.begin("g", "m2").await.expect("begin").expect("new");
    let started = std::time::Instant::now();
    let waited = inbox.begin("g", "m2").await;
    assert!(waited.is_err(), "a lock wait past the bound is an error");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the inbox's timeout, waited {:?}",
        started.elapsed()
    );
    // The bound is the transaction's own (SET LOCAL), not the session's: a
    // statement in the stuck run outlives it no more than the bound.
    let mut stuck = stuck;
    let slow = sqlx::query("SELECT pg_sleep(2)")
        .execute(stuck.conn())
        .await;
    assert!(
        slow.is_err(),
        "statement_timeout applies inside the inbox transaction"
    );
    drop(stuck);
    let mut conn = pool.acquire().await.expect("conn");
    let session: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&mut *conn)
        .await
        .expect("show");
    assert_eq!(session, "0", "the pool's sessions keep their own setting");
    assert!(
        inbox.begin("g", "m2").await.expect("begin").is_some(),
        "m2 was never committed"
    );
}

#[tokio::test]
async fn the_cleanup_deletes_old_rows_in_batches_and_keeps_recent_ones() {
    let (_db, inbox, pool) = inbox().await;
    sqlx::query(
        "INSERT INTO rabbitry_inbox (consumer, message_key, processed_at)
         SELECT 'g', 'old-' || n, now() - interval '2 days' FROM generate_series(1, 25) n",
    )
    .execute(&pool)
    .await
    .expect("old rows");
    for key in ["new-1", "new-2"] {
        inbox
            .begin("g", key)
            .await
            .expect("begin")
            .expect("new")
            .commit()
            .await
            .expect("commit");
    }
    let deleted = inbox
        .cleanup(Duration::from_secs(24 * 3600), 10)
        .await
        .expect("cleanup");
    assert_eq!(deleted, 25);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM rabbitry_inbox")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(left, 2);
}
