//! The claim's plan with a large backlog of backed-off rows: it must read a
//! handful of index pages, not the backlog (whose pages hold the payloads).

use sqlx::{Executor, PgConnection};

use super::OutboxStore;
use super::claim::CLAIM_SQL;

const BACKED_OFF: i64 = 20_000;
const DUE: i64 = 100;
/// Far above what the indexed plans read (a few dozen buffers), far below
/// what walking the backlog reads (thousands).
const MAX_BUFFERS: i64 = 400;

async fn buffers(conn: &mut PgConnection, ordered: bool) -> (i64, i64, String) {
    let sql = format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {CLAIM_SQL}");
    let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(500_i64)
        .bind(ordered)
        .fetch_one(&mut *conn)
        .await
        .expect("explain");
    let top = &plan[0]["Plan"];
    let hit = top["Shared Hit Blocks"].as_i64().unwrap_or(0);
    let read = top["Shared Read Blocks"].as_i64().unwrap_or(0);
    let rows = top["Actual Rows"].as_i64().unwrap_or(-1);
    (hit + read, rows, plan.to_string())
}

#[tokio::test]
async fn the_claim_reads_the_due_rows_not_the_backed_off_backlog() {
    let db = rabbitry_testkit::TestDatabase::create().await;
    let store = OutboxStore::connect(db.url()).await.expect("connect");
    store.migrate().await.expect("migrate");
    let mut conn = store.pool().acquire().await.expect("conn");
    // Backed off an hour, 1 KiB payloads, keys shared by 20 rows each; then
    // due rows with keys of their own.
    sqlx::query(
        "INSERT INTO rabbitry_outbox (message_id, exchange, routing_key, payload, properties,
                                      partition_key, failures, next_attempt_at)
         SELECT 'b' || g, 'orders', 'order.created', convert_to(repeat('x', 1024), 'UTF8'),
                '{}'::jsonb, 'k' || (g % 1000), 3, now() + interval '1 hour'
         FROM generate_series(1, $1) g",
    )
    .bind(BACKED_OFF)
    .execute(&mut *conn)
    .await
    .expect("backlog");
    sqlx::query(
        "INSERT INTO rabbitry_outbox (message_id, exchange, routing_key, payload, properties, partition_key)
         SELECT 'd' || g, 'orders', 'order.created', 'x', '{}'::jsonb, 'due' || g
         FROM generate_series(1, $1) g",
    )
    .bind(DUE)
    .execute(&mut *conn)
    .await
    .expect("due rows");
    conn.execute("ANALYZE rabbitry_outbox")
        .await
        .expect("analyze");
    sqlx::query("BEGIN")
        .execute(&mut *conn)
        .await
        .expect("begin");
    for ordered in [false, true] {
        let (buffers, rows, plan) = buffers(&mut conn, ordered).await;
        assert_eq!(rows, DUE, "ordered={ordered}: every due row claimed");
        assert!(
            buffers < MAX_BUFFERS,
            "ordered={ordered}: the claim read {buffers} buffers: {plan}"
        );
    }
    sqlx::query("ROLLBACK")
        .execute(&mut *conn)
        .await
        .expect("rollback");
}
