//! The Lua scripts of the store. Each runs atomically in Redis, so a key
//! changes hands only through them: the claim never overwrites a live
//! lease or a done marker, and the other three act only while the key
//! holds the caller's token.

use std::sync::LazyLock;

use redis::Script;

/// `SET key processing:<token> NX PX <lease>`; if the key exists, says
/// whether it is done (2) or leased by another (3). 1: claimed.
pub(crate) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], 'processing:' .. ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == 'done' then
  return 2
end
return 3
",
    )
});

/// Marks the key `done` for the retention time if it still holds our token
/// or its lease expired unclaimed (the work is done either way). 0: another
/// consumer holds it.
pub(crate) static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if v == false or v == 'processing:' .. ARGV[1] then
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
  return 1
end
return 0
",
    )
});

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
