//! How a partitioned publisher reaches a message's partition.

use crate::connection::ServerVersion;
use crate::error::{Error, Result};

/// How a message reaches its partition queue.
///
/// | route | who hashes | who must know the partition count |
/// | --- | --- | --- |
/// | [`Jump`](Route::Jump) | the publisher (jump consistent hash) | every publisher |
/// | [`ConsistentHash`](Route::ConsistentHash) | the broker's `x-consistent-hash` exchange (plugin) | only the broker (its bindings) |
/// | [`ModulusHash`](Route::ModulusHash) | the broker's built-in `x-modulus-hash` exchange, RabbitMQ 4.3 and later | only the broker (its bindings) |
///
/// Pick [`Jump`](Route::Jump) when every publisher is rabbitry (or
/// implements the same hash) and they are deployed together: it needs no
/// plugin and no exchange, and a message goes straight to its queue. Pick
/// an exchange route when publishers are many, in other languages, or
/// deployed apart: the partition count then lives in one place, the
/// broker's bindings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// The publisher computes the partition with jump consistent hash and
    /// publishes to the partition queue through the default exchange. The
    /// default.
    #[default]
    Jump,
    /// An `x-consistent-hash` exchange hashing the `x-partition-key`
    /// header, each partition queue bound with weight 1. Needs the
    /// `rabbitmq_consistent_hash_exchange` plugin.
    ConsistentHash,
    /// RabbitMQ 4.3's built-in `x-modulus-hash` exchange, which hashes the
    /// routing key (the partition key) modulo the number of bound queues.
    /// Refused on brokers before 4.3.
    ModulusHash,
}

impl Route {
    /// The broker-side route a broker of `version` offers: `x-modulus-hash`
    /// from 4.3 on (built in), else `x-consistent-hash` (plugin).
    pub fn broker_side(version: ServerVersion) -> Self {
        if version.at_least(4, 3) {
            Route::ModulusHash
        } else {
            Route::ConsistentHash
        }
    }

    /// Checks that a broker of `version` (if known) can carry this route.
    pub fn check(self, version: Option<ServerVersion>) -> Result<()> {
        match (self, version) {
            (Route::ModulusHash, Some(v)) if !v.at_least(4, 3) => Err(Error::Config(format!(
                "the x-modulus-hash exchange needs RabbitMQ 4.3 or later; the broker is {v}"
            ))),
            _ => Ok(()),
        }
    }

    /// The exchange type, for the exchange routes.
    pub(crate) fn exchange_type(self) -> Option<&'static str> {
        match self {
            Route::Jump => None,
            Route::ConsistentHash => Some("x-consistent-hash"),
            Route::ModulusHash => Some("x-modulus-hash"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_modulus_hash_exchange_is_offered_and_allowed_from_4_3_on_only() {
        let v = |s| ServerVersion::parse(s).expect("version");
        assert_eq!(Route::broker_side(v("3.10.8")), Route::ConsistentHash);
        assert_eq!(Route::broker_side(v("4.2.9")), Route::ConsistentHash);
        assert_eq!(Route::broker_side(v("4.3.0")), Route::ModulusHash);
        assert_eq!(Route::broker_side(v("5.0.1")), Route::ModulusHash);
        let refused = Route::ModulusHash
            .check(Some(v("3.10.8")))
            .expect_err("refused");
        assert!(refused.to_string().contains("4.3"), "{refused}");
        assert!(Route::ModulusHash.check(Some(v("4.3.1"))).is_ok());
        assert!(Route::ConsistentHash.check(Some(v("3.10.8"))).is_ok());
        assert!(Route::Jump.check(None).is_ok());
    }
}
