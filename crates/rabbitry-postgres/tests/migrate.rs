//! The outbox's migrations live beside the application's own sqlx
//! migrations: either may run first, both keep working, and `migrate()`
//! never hangs.

mod support;

use std::time::{Duration, Instant};

use rabbitry_postgres::{Error, MIGRATIONS_TABLE, OutboxStore, migrations};
use rabbitry_testkit::TestDatabase;
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::{Connection, PgConnection, SqlSafeStr};

/// An application's own migrations, in sqlx's `_sqlx_migrations`.
fn app_migrator() -> Migrator {
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            "app users".into(),
            MigrationType::Simple,
            "CREATE TABLE app_users (id BIGINT PRIMARY KEY)".into_sql_str(),
            false,
        ),
        Migration::new(
            2,
            "app orders".into(),
            MigrationType::Simple,
            "CREATE TABLE app_orders (id BIGINT PRIMARY KEY)".into_sql_str(),
            false,
        ),
    ])
}

async fn fresh() -> (TestDatabase, OutboxStore) {
    rabbitry_testkit::init_tracing();
    let db = TestDatabase::create().await;
    let store = OutboxStore::connect(db.url()).await.expect("connect");
    (db, store)
}

async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

async fn both_work(store: &OutboxStore) {
    store
        .check_migrated()
        .await
        .expect("the outbox table exists");
    sqlx::query("SELECT 1 FROM app_users, app_orders LIMIT 0")
        .execute(store.pool())
        .await
        .expect("the application's tables exist");
}

#[tokio::test]
async fn the_outbox_migrates_after_the_application_and_both_run_again() {
    let (_db, store) = fresh().await;
    let app = app_migrator();
    bounded("app", app.run(store.pool()))
        .await
        .expect("app migrations");
    bounded("outbox", store.migrate())
        .await
        .expect("outbox after the app");
    bounded("app again", app.run(store.pool()))
        .await
        .expect("app again");
    bounded("outbox again", store.migrate())
        .await
        .expect("outbox again");
    both_work(&store).await;
}

#[tokio::test]
async fn the_application_migrates_after_the_outbox_and_both_run_again() {
    let (_db, store) = fresh().await;
    let app = app_migrator();
    bounded("outbox", store.migrate())
        .await
        .expect("outbox first");
    bounded("app", app.run(store.pool()))
        .await
        .expect("app after the outbox");
    bounded("outbox again", store.migrate())
        .await
        .expect("outbox again");
    bounded("app again", app.run(store.pool()))
        .await
        .expect("app again");
    both_work(&store).await;
    let recorded: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {MIGRATIONS_TABLE}"
    )))
    .fetch_one(store.pool())
    .await
    .expect("history");
    assert_eq!(recorded as usize, migrations().count());
}

#[tokio::test]
async fn the_outbox_migrations_fold_into_the_applications_migrator() {
    let (_db, store) = fresh().await;
    let app = app_migrator();
    let all = Migrator::with_migrations(app.iter().chain(migrations()).cloned().collect());
    bounded("folded", all.run(store.pool()))
        .await
        .expect("folded");
    bounded("folded again", all.run(store.pool()))
        .await
        .expect("folded again");
    both_work(&store).await;
}

#[tokio::test]
async fn a_failed_migrate_leaves_no_lock_behind() {
    let (_db, store) = fresh().await;
    store.migrate().await.expect("migrate");
    // A history that no longer matches the embedded migrations.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {MIGRATIONS_TABLE} SET checksum = '\\x00'::bytea"
    )))
    .execute(store.pool())
    .await
    .expect("tamper");
    for _ in 0..2 {
        let err = bounded("a failing migrate", store.migrate())
            .await
            .expect_err("checksums differ");
        assert!(
            matches!(err, Error::Migrate(MigrateError::VersionMismatch(_))),
            "{err:?}"
        );
    }
    // Nor does it block the application's migrator.
    bounded("app", app_migrator().run(store.pool()))
        .await
        .expect("app migrations");
}

#[tokio::test]
async fn migrate_gives_up_within_its_bound_while_another_migrator_holds_the_lock() {
    let db = TestDatabase::create().await;
    let bound = Duration::from_secs(1);
    let store = OutboxStore::builder()
        .migrate_timeout(bound)
        .connect(db.url())
        .await
        .expect("connect");
    let mut other = PgConnection::connect(db.url()).await.expect("connect");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(i64::from_be_bytes(*b"rabbitry"))
        .execute(&mut other)
        .await
        .expect("hold the outbox migration lock");

    let started = Instant::now();
    let err = bounded("migrate", store.migrate())
        .await
        .expect_err("locked");
    assert!(matches!(err, Error::TimedOut { .. }), "{err:?}");
    assert!(started.elapsed() <= bound + Duration::from_secs(2));

    other.close().await.expect("release");
    bounded("migrate", store.migrate())
        .await
        .expect("migrates once free");
}

#[tokio::test]
async fn a_database_migrated_by_the_first_release_is_reported_stale_then_upgraded() {
    let (_db, store) = fresh().await;
    // The first release ran the first migration through sqlx's own table.
    let first = Migrator::with_migrations(migrations().take(1).cloned().collect());
    first.run(store.pool()).await.expect("first release");
    sqlx::query(
        "INSERT INTO rabbitry_outbox (message_id, exchange, routing_key, payload, properties, attempts)
         VALUES ('m', '', 'q', 'x', '{}', 3)",
    )
    .execute(store.pool())
    .await
    .expect("a row from then");
    let err = store.check_migrated().await.expect_err("stale schema");
    assert!(matches!(err, Error::NotMigrated), "{err:?}");

    bounded("upgrade", store.migrate()).await.expect("upgrade");
    store.check_migrated().await.expect("current schema");
    let failures: i32 = sqlx::query_scalar("SELECT failures FROM rabbitry_outbox")
        .fetch_one(store.pool())
        .await
        .expect("row kept");
    assert_eq!(failures, 3, "its backoff continues where it was");
}
