//! The raw AMQP client of `rabbitry-core` (`rabbitry_core::raw`), with a
//! way to reach the test broker.
//!
//! lapin (and so rabbitry) cannot build some messages that other clients
//! send every day: header names or short-string properties that are not
//! UTF-8, a content header with no properties at all. [`RawClient`] can:
//! a test publishes exactly the bytes it wants (with publisher confirms, so
//! the broker has the message when `publish` returns) and reads a queue back
//! with `basic.get` without parsing anything into strings, so that it can
//! also read what lapin cannot. rabbitry's consumer uses the same client to
//! move such messages aside; the tests share it rather than keep a copy.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use rabbitry_testkit::{RawClient, RawProperties, RawValue};
//!
//! let mut client = RawClient::connect_test_broker().await?;
//! let properties = RawProperties {
//!     message_id: Some(b"\xff\xfe".to_vec()),
//!     headers: Some(vec![(b"bad-\xc3".to_vec(), RawValue::I32(7))]),
//!     ..RawProperties::default()
//! };
//! client.publish("", "some-queue", &properties, b"body").await?;
//! let got = client.get("some-queue").await?;
//! client.close().await
//! # }
//! ```

use std::io;
use std::ops::{Deref, DerefMut};

pub use rabbitry_core::raw::{
    RawMessage, RawProperties, RawTable, RawValue, lapin_cannot_parse, raw_header,
};

/// [`rabbitry_core::raw::RawClient`], which it derefs to, plus
/// [`connect_test_broker`](Self::connect_test_broker).
#[derive(Debug)]
pub struct RawClient(rabbitry_core::raw::RawClient);

impl RawClient {
    /// Connects to the test broker ([`services()`](crate::services())).
    pub async fn connect_test_broker() -> io::Result<Self> {
        Self::connect(crate::services().amqp_url()).await
    }

    /// Connects to `amqp://user:password@host:port/vhost` (only PLAIN
    /// credentials, no TLS), opens channel 1 and puts it in confirm mode.
    pub async fn connect(amqp_url: &str) -> io::Result<Self> {
        rabbitry_core::raw::RawClient::connect(amqp_url)
            .await
            .map(Self)
    }

    /// Closes the channel and the connection (bounded).
    pub async fn close(self) -> io::Result<()> {
        self.0.close().await
    }

    /// The client of `rabbitry-core`.
    pub fn into_inner(self) -> rabbitry_core::raw::RawClient {
        self.0
    }
}

impl Deref for RawClient {
    type Target = rabbitry_core::raw::RawClient;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for RawClient {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}
