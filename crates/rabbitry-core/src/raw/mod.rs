//! A minimal AMQP 0-9-1 client for messages lapin cannot parse; used by the
//! consumer's rescue; not a general client.
//!
//! lapin (and so rabbitry's consumer) cannot read some messages that other
//! clients send every day: header names or short-string properties that
//! are not UTF-8. One such message kills the lapin connection that
//! receives it. [`RawClient`] builds and reads frames by hand, keeping
//! every name and string as bytes, so the consumer can take such a message
//! out of its queue and move it, unchanged, to its error exchange. Tests
//! use it (through `rabbitry-testkit`) to publish exactly the bytes they
//! want.
//!
//! It speaks just enough of the protocol for that: PLAIN login, one
//! channel in confirm mode, `basic.qos`, `basic.publish` (mandatory, so a
//! message no queue takes is an error), `basic.get` with or without ack,
//! `basic.ack`, `basic.nack`, `basic.reject`, and a clean close. No TLS,
//! no heartbeats (keep it short-lived). Every read and write is bounded by
//! a timeout. Credentials are never logged nor shown in errors or `Debug`.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use rabbitry_core::raw::{RawClient, RawProperties, RawValue};
//!
//! let mut client = RawClient::connect("amqp://guest:guest@127.0.0.1:5672/%2f").await?;
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

mod basic;
mod client;
mod parseable;
mod properties;
mod value;
mod wire;

pub use self::basic::RawMessage;
pub use self::client::RawClient;
pub use self::parseable::lapin_cannot_parse;
pub use self::properties::RawProperties;
pub use self::value::{RawTable, RawValue, raw_header};
