//! The one error type of `rabbitry-postgres`.

/// An error from the outbox store or the resend loop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The outbox table is missing: the database was not migrated.
    #[error(
        "the outbox table does not exist or is out of date: run `rabbitry-relay migrate` (or OutboxStore::migrate) first"
    )]
    NotMigrated,

    /// Postgres failed or could not be reached.
    #[error("postgres: {0}")]
    Database(#[source] sqlx::Error),

    /// Applying the migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// A Postgres call did not finish within its bound (a half-open
    /// connection, a lock held elsewhere, a Postgres that stopped answering).
    /// The connection it ran on was closed, so nothing it held stays held.
    #[error("postgres did not answer {operation} within {after:?}")]
    TimedOut {
        /// What was being done.
        operation: &'static str,
        /// The bound that elapsed.
        after: std::time::Duration,
    },

    /// A stored row could not be decoded into a message.
    #[error("outbox row {id} is corrupt: {reason}")]
    CorruptRow {
        /// The row id.
        id: i64,
        /// What is wrong with it.
        reason: String,
    },

    /// A setting is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The broker side failed.
    #[error(transparent)]
    Broker(#[from] rabbitry_core::Error),
}

impl Error {
    /// Whether retrying the same call may help (Postgres or the broker was
    /// unreachable, a pool timed out).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Database(e) => sqlx_is_retryable(e),
            Error::Migrate(sqlx::migrate::MigrateError::Execute(e)) => sqlx_is_retryable(e),
            Error::Broker(e) => e.is_retryable(),
            Error::TimedOut { .. } => true,
            _ => false,
        }
    }
}

/// Whether a Postgres failure may pass: the server unreachable or going
/// away (class 08, 57P), out of resources (class 53: too many connections,
/// out of memory or disk), a statement or lock timeout the store sets
/// itself (57014, 55P03: the same outage as a client-side timeout), a
/// serialization failure or deadlock (40001, 40P01), or a server that is
/// read-only while a failover completes (25006).
fn sqlx_is_retryable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
    ) || e
        .as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| {
            ["08", "57P", "53"].iter().any(|class| c.starts_with(class))
                || ["40001", "40P01", "57014", "55P03", "25006"].contains(&c.as_ref())
        })
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        // 42P01: undefined_table.
        if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P01") {
            return Error::NotMigrated;
        }
        Error::Database(e)
    }
}

impl From<Error> for rabbitry_core::Error {
    /// One error for `?` across publisher, outbox, relay and consumer: a
    /// broker error comes back as itself; anything else becomes
    /// [`rabbitry_core::Error::Store`] (`store: "postgres"`), retryable as
    /// [`Error::is_retryable`] says, with this error as its source (reach it
    /// with `downcast_ref::<rabbitry_postgres::Error>()`).
    fn from(e: Error) -> Self {
        match e {
            Error::Broker(e) => e,
            other => rabbitry_core::Error::Store {
                store: "postgres",
                retryable: other.is_retryable(),
                source: Box::new(other),
            },
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
