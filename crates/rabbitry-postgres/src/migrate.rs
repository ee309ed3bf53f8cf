//! The outbox's own migrations, kept beside the application's.
//!
//! sqlx's migrator records its history in `_sqlx_migrations` and refuses to
//! run when that table holds versions it does not know. An application that
//! runs its own sqlx migrations in the same database would collide with the
//! outbox's there, whichever ran second. So the outbox records its history in
//! a table of its own, `rabbitry_outbox_migrations`, with the same layout and
//! checks (checksums, one transaction per migration).
//!
//! sqlx's lock would not do either: it is one advisory lock per database,
//! shared with the application's migrator, taken with no bound, and left
//! held on a pooled connection when a migration fails, so the next
//! `migrate()` hung. This one takes an advisory lock of its own, waits for it
//! a bounded time, and runs on a session it closes afterwards, so a failure
//! never leaves the lock held.

use std::time::Duration;

use sqlx::migrate::{Migration, Migrator};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::time::{Instant, timeout_at};

use crate::error::{Error, Result};

/// The table holding the outbox's migration history.
pub const MIGRATIONS_TABLE: &str = "rabbitry_outbox_migrations";

/// The key of the advisory lock migrators of the outbox take: the first
/// eight bytes of "rabbitry" as a big-endian integer.
const LOCK_KEY: i64 = i64::from_be_bytes(*b"rabbitry");

static EMBEDDED: Migrator = sqlx::migrate!("../../migrations");

/// The outbox's migrations, to fold into the application's own sqlx
/// migrator instead of calling [`OutboxStore::migrate`](crate::OutboxStore::migrate):
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool, app: sqlx::migrate::Migrator) -> Result<(), sqlx::migrate::MigrateError> {
/// use sqlx::migrate::Migrator;
///
/// // app = sqlx::migrate!("./migrations"), the application's own
/// let all = Migrator::with_migrations(
///     app.iter().chain(rabbitry_postgres::migrations()).cloned().collect(),
/// );
/// all.run(&pool).await?; // history in _sqlx_migrations, with the application's
/// # Ok(()) }
/// ```
///
/// Choose one way per database: the two histories do not know each other.
/// The outbox's versions are timestamps of November 2026 and later.
pub fn migrations() -> std::slice::Iter<'static, Migration> {
    EMBEDDED.iter()
}

/// Applies the outbox's migrations on a session of its own, within `limit`.
pub(crate) async fn run(pool: &PgPool, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let timed_out = |operation| Error::TimedOut {
        operation,
        after: limit,
    };
    let conn = timeout_at(deadline, pool.acquire())
        .await
        .map_err(|_| timed_out("acquiring a connection to migrate"))??;
    // Detached: the session's settings and its advisory lock end with it.
    let mut conn = conn.detach();
    match timeout_at(deadline, apply(&mut conn, deadline)).await {
        Ok(Ok(())) => {
            let _ = timeout_at(deadline, conn.close()).await;
            Ok(())
        }
        // Dropping the connection closes its socket: Postgres rolls back
        // the migration in progress and releases the lock.
        Ok(Err(e)) => Err(e),
        Err(_) => Err(timed_out("applying the outbox migrations")),
    }
}

async fn apply(conn: &mut PgConnection, deadline: Instant) -> Result<()> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let ms = format!("{}", remaining.as_millis().max(1));
    // The lock wait and each statement are bounded by what is left of the
    // overall bound. Locks taken by DDL wait at most 10 s, so that a
    // migration queued behind a long transaction does not stall every
    // writer of the table queued behind it.
    sqlx::query(
        "SELECT set_config('lock_timeout', $1, false), set_config('statement_timeout', $1, false),
                set_config('idle_in_transaction_session_timeout', '0', false)",
    )
    .bind(&ms)
    .execute(&mut *conn)
    .await?;
    let locked = sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await;
    if let Err(e) = locked {
        // 55P03 lock_not_available, 57014 query_canceled: lock_timeout or
        // statement_timeout elapsed (both are set to what is left).
        let code = e.as_database_error().and_then(|d| d.code());
        if matches!(code.as_deref(), Some("55P03" | "57014")) {
            return Err(Error::TimedOut {
                operation: "waiting for another outbox migrator",
                after: remaining,
            });
        }
        return Err(e.into());
    }
    sqlx::query("SELECT set_config('lock_timeout', '10s', false)")
        .execute(&mut *conn)
        .await?;
    let mut migrator = Migrator::with_migrations(migrations().cloned().collect());
    migrator.set_locking(false);
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator.run(&mut *conn).await?;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
