//! [`InboxTx`]: the transaction a handler writes its effects in, with its
//! inbox row already inserted.

use std::time::Duration;

use sqlx::PgConnection;
use sqlx::pool::PoolConnection;
use sqlx::postgres::Postgres;
use tokio::time::timeout;

use crate::error::{Error, Result};

/// An open transaction holding the message's inbox row. Write the
/// handler's effects on [`conn`](Self::conn), then [`commit`](Self::commit):
/// the row and the effects are kept together, or neither is.
///
/// Dropped without a commit (the handler failed, returned early, panicked
/// or was stopped), the transaction is rolled back: its connection is
/// closed rather than returned to the pool with the transaction open, and
/// the message runs again when it is redelivered.
pub struct InboxTx {
    /// `Some` until committed or rolled back.
    conn: Option<PoolConnection<Postgres>>,
    limit: Duration,
}

impl std::fmt::Debug for InboxTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxTx")
            .field("open", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl InboxTx {
    pub(crate) fn new(conn: PoolConnection<Postgres>, limit: Duration) -> Self {
        Self {
            conn: Some(conn),
            limit,
        }
    }

    /// The transaction's connection, for the handler's queries
    /// (`query.execute(tx.conn())`). Each statement is bounded by the
    /// inbox's `statement_timeout` (set for this transaction only).
    pub fn conn(&mut self) -> &mut PgConnection {
        // Present until commit or rollback, which consume `self`.
        self.conn.as_deref_mut().expect("an open inbox transaction")
    }

    /// Commits the effects and the inbox row, within the inbox's bound.
    pub async fn commit(mut self) -> Result<()> {
        self.end("COMMIT", "committing an inbox transaction").await
    }

    /// Rolls back the effects and the inbox row.
    pub async fn rollback(mut self) -> Result<()> {
        self.end("ROLLBACK", "rolling back an inbox transaction")
            .await
    }

    async fn end(&mut self, sql: &'static str, operation: &'static str) -> Result<()> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        match timeout(self.limit, sqlx::query(sql).execute(&mut *conn)).await {
            Ok(Ok(_)) => Ok(()),
            // The connection's state is unknown: close it.
            Ok(Err(e)) => {
                drop(conn.detach());
                Err(e.into())
            }
            Err(_) => {
                drop(conn.detach());
                Err(Error::TimedOut {
                    operation,
                    after: self.limit,
                })
            }
        }
    }
}

impl Drop for InboxTx {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Closing the socket makes Postgres roll the transaction back;
            // the pool never sees a connection mid-transaction.
            drop(conn.detach());
        }
    }
}
