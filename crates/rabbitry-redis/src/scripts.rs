//! The Lua scripts of the store. Each runs atomically in Redis, so a key
//! changes hands only through them: the claim never overwrites a live
//! lease or a done marker, and the other three act only while the key
//! holds the caller's token.

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

/// `SET key processing:<token> NX PX <lease>` over many keys (if a key exists: 2 when it is done, 3 when another holds it; 1: claimed): `KEYS[i]` with `ARGV[2i-1]` (token) and
/// `ARGV[2i]` (lease ms); one code per key. Keys are handled in order, so
/// a key twice in one batch is claimed once and found busy the second time.
pub(crate) static CLAIM_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, 'processing:' .. ARGV[2 * i - 1], 'NX', 'PX', ARGV[2 * i]) then
    out[i] = 1
  elseif redis.call('GET', key) == 'done' then
    out[i] = 2
  else
    out[i] = 3
  end
end
return out
",
    )
});

/// Marks each key `done` for the retention time (`ARGV[2i]`, ms) if it
/// still holds its token (`ARGV[2i-1]`) or its lease expired unclaimed (the
/// work is done either way): 1; 0 when another consumer holds it.
pub(crate) static COMPLETE_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v == false or v == 'processing:' .. ARGV[2 * i - 1] then
    redis.call('SET', key, 'done', 'PX', ARGV[2 * i])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
",
    )
});
