//! Every call to the broker has a bound: a broker that stops answering (a
//! half-open connection, a node that froze) must not hang the caller.

use std::future::Future;
use std::time::Duration;

use crate::error::{Error, Result};

/// Runs a lapin call for at most `timeout`; a call that does not answer in
/// time is [`Error::ConnectionLost`]. lapin's own error is passed on as is,
/// for the caller to classify.
pub(crate) async fn within<T>(
    timeout: Duration,
    operation: &'static str,
    call: impl Future<Output = lapin::Result<T>>,
) -> Result<lapin::Result<T>> {
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| Error::ConnectionLost {
            operation,
            reason: format!("no answer within {timeout:?}"),
        })
}

/// Like [`within`], mapping lapin's error with [`Error::from_lapin`].
pub(crate) async fn bounded<T>(
    timeout: Duration,
    operation: &'static str,
    call: impl Future<Output = lapin::Result<T>>,
) -> Result<T> {
    within(timeout, operation, call)
        .await?
        .map_err(|e| Error::from_lapin(operation, &e))
}

/// Closes a channel rabbitry opened for one task, waiting at most `timeout`.
/// A close that fails or hangs changes nothing for the caller: the broker
/// drops the channel with its connection.
pub(crate) async fn close_channel(channel: &lapin::Channel, timeout: Duration, reason: &str) {
    let _ = tokio::time::timeout(timeout, channel.close(200, reason.into())).await;
}
