//! The error of building a [`RedisStore`](crate::RedisStore).

/// Why a [`RedisStore`](crate::RedisStore) could not be built or reached.
/// The Redis URL is never repeated: it may hold a password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL could not be parsed (or asks for what this build lacks, such
    /// as TLS).
    #[error("invalid Redis URL: {reason}")]
    InvalidUrl {
        /// Why, without the URL.
        reason: String,
    },
    /// Redis did not answer the first ping ([`RedisStoreBuilder::connect`](crate::RedisStoreBuilder::connect)).
    #[error("redis unreachable")]
    Unreachable(#[source] redis::RedisError),
    /// Redis did not answer the first ping in time (or the ping of [`RedisStore::ping`](crate::RedisStore::ping)).
    #[error("redis did not answer within {0:?}")]
    TimedOut(std::time::Duration),
}

impl Error {
    /// Whether trying again later may help: yes unless the URL is wrong.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Error::InvalidUrl { .. })
    }
}

impl From<Error> for rabbitry_core::Error {
    /// One error for `?` across the services' calls:
    /// [`rabbitry_core::Error::Store`] (`store: "redis"`), retryable as
    /// [`Error::is_retryable`] says, with this error as its source (reach it
    /// with `downcast_ref::<rabbitry_redis::Error>()`).
    fn from(e: Error) -> Self {
        rabbitry_core::Error::Store {
            store: "redis",
            retryable: e.is_retryable(),
            source: Box::new(e),
        }
    }
}
