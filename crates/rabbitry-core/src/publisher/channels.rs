//! The publishing channels: a fixed number of confirm-mode channels on the
//! publishing connection, each opened on first use and replaced once it has
//! failed.
//!
//! A publish leases a channel with room in its window. When one is open and
//! has room, leasing takes no lock beyond a pointer copy and never waits
//! (`try_lease`): the common case costs no future of its own. Otherwise
//! (`lease`) it opens the missing channel, one opening per slot at a time,
//! or waits for room in a window.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::confirms::Confirms;
use crate::bounded::close_channel;
use crate::connection::{Broker, Role};
use crate::error::{Error, Result};

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

impl ConfirmChannel {
    /// Whether publishes may go to this channel. One the broker closed with
    /// an error (404, 406) is not recovered by lapin, and one whose
    /// connection is gone or recovering would make a publish wait on it (or
    /// fail with "channel is Reconnecting" for as long as the recovery
    /// takes): it is replaced by a fresh channel on whatever connection is
    /// up.
    fn usable(&self) -> bool {
        self.channel.status().connected() && !self.confirms.is_retired()
    }
}

/// A channel, and the place in its window that the publish holds until its
/// verdict.
pub(crate) struct Lease {
    pub(crate) channel: Arc<ConfirmChannel>,
    pub(crate) permit: OwnedSemaphorePermit,
}

pub(crate) struct ChannelSet {
    broker: Broker,
    window: usize,
    slots: Box<[Slot]>,
    /// Where the next lease starts looking, so that publishes spread over
    /// every channel.
    next: AtomicUsize,
    /// Set by `close`: no channel is opened again.
    closed: AtomicBool,
}

#[derive(Default)]
struct Slot {
    current: Mutex<Option<Arc<ConfirmChannel>>>,
    /// Held while the slot's channel is opened: a burst of publishes opens
    /// one channel, not one each.
    opening: tokio::sync::Mutex<()>,
}

impl Slot {
    fn usable(&self) -> Option<Arc<ConfirmChannel>> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.as_ref().filter(|c| c.usable()).cloned()
    }
}

impl ChannelSet {
    pub(crate) fn new(broker: Broker, channels: usize, window: usize) -> Self {
        Self {
            broker,
            window,
            slots: (0..channels.max(1)).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// Closes every channel, each within `timeout`, and opens none again.
    /// Confirms still awaited on them fail (the channel is lost), so no
    /// publish is left waiting.
    pub(crate) async fn close(&self, timeout: Duration) {
        self.closed.store(true, Ordering::SeqCst);
        let open: Vec<_> = self
            .slots
            .iter()
            .filter_map(|slot| {
                slot.current
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
            })
            .collect();
        futures_util::future::join_all(
            open.iter()
                .map(|c| close_channel(&c.channel, timeout, "publisher closed")),
        )
        .await;
    }

    /// A channel that is open and has room in its window now, if any.
    pub(crate) fn try_lease(&self) -> Option<Lease> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|i| {
            let channel = self.slots[(start + i) % n].usable()?;
            let permit = channel.window.clone().try_acquire_owned().ok()?;
            Some(Lease { channel, permit })
        })
    }

    /// A channel with room in its window: opens a slot's channel if it is
    /// missing or failed, or waits for room in its window.
    pub(crate) async fn lease(&self) -> Result<Lease> {
        loop {
            if let Some(lease) = self.try_lease() {
                return Ok(lease);
            }
            let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
            let channel = match slot.usable() {
                Some(channel) => channel,
                // Boxed: opening a channel (and maybe a connection) is the
                // cold path.
                None => Box::pin(self.open(slot)).await?,
            };
            let permit = channel
                .window
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| closed_under_way())?;
            // The channel may have failed while this publish waited for
            // room in it: then look again.
            if channel.usable() {
                return Ok(Lease { channel, permit });
            }
        }
    }

    /// The slot's channel, opened unless another publish just did.
    async fn open(&self, slot: &Slot) -> Result<Arc<ConfirmChannel>> {
        let _opening = slot.opening.lock().await;
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed_under_way());
        }
        if let Some(channel) = slot.usable() {
            return Ok(channel);
        }
        let channel = Arc::new(self.create().await?);
        let installed = {
            let mut current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
            // Checked under the slot's lock, which `close` takes after
            // setting the flag: a channel is installed before `close`
            // looks, or never.
            (!self.closed.load(Ordering::SeqCst)).then(|| current.replace(channel.clone()))
        };
        let Some(old) = installed else {
            let timeout = self.broker.operation_timeout();
            close_channel(&channel.channel, timeout, "publisher closed").await;
            return Err(closed_under_way());
        };
        // The failed channel's collector reports what is left in it once
        // the last publish holding it lets go.
        drop(old);
        Ok(channel)
    }

    async fn create(&self) -> Result<ConfirmChannel> {
        let (channel, frame_max) = self
            .broker
            .open_channel_with_frame_max(Role::Publish)
            .await?;
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
}

/// What a publish admitted before [`close`](super::Publisher::close) gets
/// when the channels close under it: the broker could not be used, so the
/// outbox (where there is one) takes the message. `Error::Shutdown` is only
/// the refusal of a publish started after the close.
fn closed_under_way() -> Error {
    Error::ConnectionLost {
        operation: "channel.open",
        reason: "the publisher was closed while this publish waited for a channel".into(),
    }
}
