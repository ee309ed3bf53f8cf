//! A deadpool pool of confirm-mode channels on the publishing connection.

use std::sync::Arc;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use lapin::options::ConfirmSelectOptions;
use tokio::sync::Semaphore;

use crate::connection::{Broker, Role};
use crate::error::Error;

/// A confirm-mode channel and the window that bounds its unconfirmed
/// messages.
pub(crate) struct ConfirmChannel {
    pub(crate) channel: lapin::Channel,
    pub(crate) window: Arc<Semaphore>,
}

pub(crate) struct ChannelManager {
    pub(crate) broker: Broker,
    pub(crate) window: usize,
}

impl managed::Manager for ChannelManager {
    type Type = ConfirmChannel;
    type Error = Error;

    async fn create(&self) -> Result<ConfirmChannel, Error> {
        let channel = self.broker.open_channel(Role::Publish).await?;
        let timeout = self.broker.operation_timeout();
        tokio::time::timeout(
            timeout,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .map_err(|_| Error::ConnectionLost {
            operation: "confirm.select",
            reason: format!("no answer within {timeout:?}"),
        })?
        .map_err(|e| Error::from_lapin("confirm.select", &e))?;
        Ok(ConfirmChannel {
            channel,
            window: Arc::new(Semaphore::new(self.window)),
        })
    }

    async fn recycle(&self, ch: &mut ConfirmChannel, _: &Metrics) -> RecycleResult<Error> {
        let status = ch.channel.status();
        // A channel the broker closed with an error (404 on an unknown
        // exchange, 406 on a too-large message) is not recovered by lapin:
        // drop it and let the pool open a new one.
        if status.connected() || status.reconnecting() {
            Ok(())
        } else {
            Err(RecycleError::message("channel closed"))
        }
    }
}
