//! The Lua scripts of the store, for the two calls that must act only
//! while the key holds the caller's token: giving a lease back and
//! extending it. Each runs atomically in Redis. (Claims and done markers
//! are single native `SET`s: see `batch`.)

use std::sync::LazyLock;

use redis::Script;

/// Compare-and-delete: gives the key back only while it holds our token.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == 'processing:' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// Compare-and-pexpire: extends the lease only while it holds our token.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == 'processing:' .. ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});
