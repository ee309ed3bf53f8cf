//! Building a [`Publisher`]: its settings, their defaults, and checking them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::channels::ChannelSet;
use super::exchanges::ExchangeChecks;
use super::inflight::InFlight;
use super::metrics::Counters;
use super::{Inner, Outbox, Publisher, Settings};
use crate::connection::Broker;
use crate::error::{Error, Result};

impl Publisher {
    /// Starts a builder on `broker`'s publishing connection.
    pub fn builder(broker: Broker) -> PublisherBuilder {
        PublisherBuilder {
            broker,
            channels: 4,
            window: 1000,
            timeout: Duration::from_secs(10),
            blocked_timeout: Duration::from_secs(5),
            mandatory: true,
            max_message_size: 16 * 1024 * 1024,
            app_id: None,
            outbox: None,
            outbox_timeout: Duration::from_secs(5),
            defer_unroutable: false,
        }
    }
}

/// Builder for [`Publisher`].
#[must_use]
pub struct PublisherBuilder {
    broker: Broker,
    channels: usize,
    window: usize,
    timeout: Duration,
    blocked_timeout: Duration,
    mandatory: bool,
    max_message_size: usize,
    app_id: Option<String>,
    outbox: Option<Arc<dyn Outbox>>,
    outbox_timeout: Duration,
    defer_unroutable: bool,
}

impl fmt::Debug for PublisherBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublisherBuilder")
            .field("channels", &self.channels)
            .field("window", &self.window)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PublisherBuilder {
    /// Confirm-mode channels in the pool. Default: 4. More channels let
    /// the broker process confirms in parallel.
    pub fn channels(mut self, n: usize) -> Self {
        self.channels = n;
        self
    }
    /// Unconfirmed messages allowed per channel. Default: 1000.
    pub fn window(mut self, n: usize) -> Self {
        self.window = n;
        self
    }
    /// Bound on one publish, from send to confirm. Default: 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// How long to wait while the broker blocks publishing (memory or disk
    /// alarm) before failing with [`Error::Blocked`]. Default: 5 s.
    pub fn blocked_timeout(mut self, timeout: Duration) -> Self {
        self.blocked_timeout = timeout;
        self
    }
    /// Publish with `mandatory=true`, so that a message no queue receives
    /// is reported as [`Error::Unroutable`]. Default: true.
    pub fn mandatory(mut self, yes: bool) -> Self {
        self.mandatory = yes;
        self
    }
    /// Largest payload accepted, in bytes. Default: 16 MiB (RabbitMQ 4's
    /// default `max_message_size`; 3.x allows 128 MiB).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }
    /// The `app_id` set on messages that have none. Default: the broker
    /// connection name.
    pub fn app_id(mut self, app_id: impl Into<String>) -> Self {
        self.app_id = Some(app_id.into());
        self
    }
    /// Where failed publishes go. Without an outbox, failures are returned
    /// to the caller.
    pub fn outbox(mut self, outbox: impl Outbox) -> Self {
        self.outbox = Some(Arc::new(outbox));
        self
    }
    /// Bound on the outbox write after a failed publish. Default: 5 s. A
    /// publish returns within `blocked_timeout + timeout + outbox_timeout`
    /// at the very worst, even when the outbox's database stops answering.
    pub fn outbox_timeout(mut self, timeout: Duration) -> Self {
        self.outbox_timeout = timeout;
        self
    }
    /// Also store in the outbox a message the broker cannot route yet: one
    /// that matched no queue ([`Error::Unroutable`]) or went to a missing
    /// exchange (404). Default: false, and such a publish fails with that
    /// error, since a resend cannot fix a typo. Turn it on where publishers
    /// start before the consumers that declare the queues.
    pub fn defer_unroutable(mut self, yes: bool) -> Self {
        self.defer_unroutable = yes;
        self
    }
    /// Like [`outbox`](Self::outbox), for a shared one.
    pub fn shared_outbox(mut self, outbox: Arc<dyn Outbox>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// Validates the settings. Channels open on first use.
    pub fn build(self) -> Result<Publisher> {
        if self.channels == 0 || self.window == 0 {
            return Err(Error::Config(
                "publisher channels and window must be at least 1".into(),
            ));
        }
        if self.timeout.is_zero() || self.outbox_timeout.is_zero() {
            return Err(Error::Config(
                "publish and outbox timeouts must be greater than zero".into(),
            ));
        }
        let channels = ChannelSet::new(self.broker.clone(), self.channels, self.window);
        let app_id = self
            .app_id
            .unwrap_or_else(|| self.broker.config().connection_name().to_owned());
        Ok(Publisher {
            inner: Arc::new(Inner {
                broker: self.broker,
                channels,
                outbox: self.outbox,
                settings: Settings {
                    timeout: self.timeout,
                    blocked_timeout: self.blocked_timeout,
                    mandatory: self.mandatory,
                    max_message_size: self.max_message_size,
                    app_id,
                    outbox_timeout: self.outbox_timeout,
                    defer_unroutable: self.defer_unroutable,
                },
                counters: Counters::default(),
                exchanges: ExchangeChecks::default(),
                inflight: InFlight::default(),
                defer_warn: std::sync::Mutex::default(),
            }),
        })
    }
}
