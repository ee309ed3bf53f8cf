//! Jump consistent hash (Lamping & Veach, 2014): a key's partition out of
//! `n`, with no table, stable for a given `n`, and when `n` grows to `n + 1`
//! only about `1/(n + 1)` of the keys move (all of them to the new
//! partition).
//!
//! The key is first hashed to 64 bits with FNV-1a and the SplitMix64
//! finalizer: both are a few lines in any language, so a publisher written
//! in another language can pick the same partitions.

/// The 64-bit hash of a partition key: FNV-1a over its UTF-8 bytes, then
/// the SplitMix64 finalizer (FNV alone spreads short, similar keys poorly).
pub fn key_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Jump consistent hash: the bucket of `hash` among `buckets`, in
/// `0..buckets`. `buckets` of 0 is treated as 1.
pub fn jump_hash(mut hash: u64, buckets: u32) -> u32 {
    let buckets = i64::from(buckets.max(1));
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < buckets {
        b = j;
        hash = hash.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // As in the paper: (b + 1) * 2^31 / ((hash >> 33) + 1).
        let den = ((hash >> 33) + 1) as f64;
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / den)) as i64;
    }
    u32::try_from(b).unwrap_or(0)
}

/// The partition of `key` among `partitions`.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    jump_hash(key_hash(key), partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> impl Iterator<Item = String> {
        (0..10_000).map(|i| format!("user-{i}"))
    }

    #[test]
    fn ten_thousand_keys_spread_evenly_over_eight_partitions() {
        let mut counts = [0u32; 8];
        for key in keys() {
            counts[partition_of(&key, 8) as usize] += 1;
        }
        let mean = 10_000.0 / 8.0;
        for (p, c) in counts.iter().enumerate() {
            let off = (f64::from(*c) - mean).abs() / mean;
            assert!(off <= 0.15, "partition {p} holds {c} keys: {counts:?}");
        }
    }

    #[test]
    fn growing_from_eight_to_nine_moves_about_a_ninth_and_only_to_the_new_one() {
        let mut moved = 0u32;
        for key in keys() {
            let (before, after) = (partition_of(&key, 8), partition_of(&key, 9));
            if before != after {
                assert_eq!(after, 8, "{key} moved between old partitions");
                moved += 1;
            }
        }
        let share = f64::from(moved) / 10_000.0;
        assert!((share - 1.0 / 9.0).abs() < 0.02, "{moved} of 10,000 moved");
    }

    #[test]
    fn the_hash_is_stable_across_builds_and_platforms() {
        // Pinned values: a change here moves every key of every user.
        assert_eq!(key_hash(""), 17_665_956_581_633_026_203);
        assert_eq!(partition_of("customer-42", 1), 0);
        assert_eq!(jump_hash(0, 0), 0);
        let pinned: Vec<u32> = ["a", "b", "user-1", "user-2"]
            .iter()
            .map(|k| partition_of(k, 16))
            .collect();
        assert_eq!(pinned, PINNED);
        for n in 1..64 {
            assert!(partition_of("k", n) < n);
        }
    }
    const PINNED: [u32; 4] = [9, 12, 11, 12];
}
