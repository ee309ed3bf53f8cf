//! A deadpool pool of confirm-mode channels on the publishing connection.

use std::sync::Arc;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use lapin::options::ConfirmSelectOptions;
use tokio::sync::Semaphore;

use super::confirms::Confirms;
use crate::connection::{Broker, Role};
use crate::error::Error;

/// A confirm-mode channel, the window that bounds its unconfirmed messages,
/// and the collector that matches its confirms with their returns.
pub(crate) struct ConfirmChannel {
    pub(crate) channel: lapin::Channel,
    pub(crate) window: Arc<Semaphore>,
    pub(crate) confirms: Confirms,
    /// The frame size negotiated on the channel's connection: a content
    /// header larger than this makes the broker close the whole connection.
    pub(crate) frame_max: u32,
}

pub(crate) struct ChannelManager {
    pub(crate) broker: Broker,
    pub(crate) window: usize,
}

impl managed::Manager for ChannelManager {
    type Type = ConfirmChannel;
    type Error = Error;

    async fn create(&self) -> Result<ConfirmChannel, Error> {
        // Boxed: opening a channel (and maybe a connection) is the cold
        // path, and its large future would otherwise be part of every
        // publish's future.
        let (channel, frame_max) =
            Box::pin(self.broker.open_channel_with_frame_max(Role::Publish)).await?;
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
            confirms: Confirms::spawn(),
            frame_max,
        })
    }

    async fn recycle(&self, ch: &mut ConfirmChannel, _: &Metrics) -> RecycleResult<Error> {
        // Only a channel that is open now goes back out. One the broker
        // closed with an error (404, 406) is not recovered by lapin, and one
        // whose connection is gone or recovering would make a publish wait on
        // it (or fail with "channel is Reconnecting" for as long as the
        // recovery takes): drop it, and let the pool open a fresh channel on
        // whatever connection is up.
        if ch.channel.status().connected() && !ch.confirms.is_retired() {
            Ok(())
        } else {
            Err(RecycleError::message("channel not open"))
        }
    }
}
