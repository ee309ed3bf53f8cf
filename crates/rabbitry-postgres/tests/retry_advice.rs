//! Which Postgres failures say "try again": the ones an outage, a failover
//! or the store's own timeouts produce, raised by a real server, and not a
//! mistake in the SQL.

use rabbitry_postgres::Error;
use rabbitry_testkit::TestDatabase;
use sqlx::{Connection, PgConnection};

/// Runs `setup` then `failing` on one connection and returns the second
/// statement's error, as the store would report it.
async fn error_of(db: &TestDatabase, setup: &'static str, failing: &'static str) -> Error {
    let mut conn = PgConnection::connect(db.url()).await.expect("connect");
    sqlx::raw_sql(setup)
        .execute(&mut conn)
        .await
        .expect("setup");
    let e = sqlx::raw_sql(failing)
        .execute(&mut conn)
        .await
        .expect_err("the statement fails");
    Error::from(e)
}

#[tokio::test]
async fn a_statement_timeout_a_read_only_server_and_a_lock_timeout_are_retryable() {
    let db = TestDatabase::create().await;
    let cases = [
        // 57014: the store's own statement_timeout.
        ("SET statement_timeout = 50", "SELECT pg_sleep(2)"),
        // 25006: a primary demoted to a read-only replica mid-failover.
        (
            "SET default_transaction_read_only = on",
            "CREATE TABLE t_read_only (id int)",
        ),
    ];
    for (setup, failing) in cases {
        let e = error_of(&db, setup, failing).await;
        assert!(e.is_retryable(), "{failing}: {e}");
        // And through the one facade error, the advice is the same.
        assert!(rabbitry_core::Error::from(e).is_retryable(), "{failing}");
    }

    // 55P03: the store's own lock_timeout, a row lock held by another
    // session.
    let mut holder = PgConnection::connect(db.url()).await.expect("connect");
    sqlx::raw_sql("CREATE TABLE t_lock (id int); INSERT INTO t_lock VALUES (1)")
        .execute(&mut holder)
        .await
        .expect("table");
    let mut tx = holder.begin().await.expect("begin");
    sqlx::raw_sql("SELECT * FROM t_lock FOR UPDATE")
        .execute(&mut *tx)
        .await
        .expect("lock");
    let e = error_of(
        &db,
        "SET lock_timeout = 50",
        "SELECT * FROM t_lock FOR UPDATE",
    )
    .await;
    assert!(e.is_retryable(), "{e}");
    tx.rollback().await.expect("rollback");
}

#[tokio::test]
async fn a_mistake_in_the_sql_is_not_retryable() {
    let db = TestDatabase::create().await;
    let e = error_of(&db, "SELECT 1", "SELECT * FROM no_such_table_at_all").await;
    // 42P01 reads as "not migrated": fixing it takes a migration.
    assert!(matches!(e, Error::NotMigrated), "{e}");
    assert!(!e.is_retryable());
    let e = error_of(&db, "SELECT 1", "SELECT 1/0").await;
    assert!(!e.is_retryable(), "{e}");
}
