//! Which partition a record goes to: Java-compatible murmur2 for keyed records, one sticky
//! partition per `produce` call for keyless ones. Pure functions; never looks at brokers.

/// Kafka's `Utils.murmur2`, bit for bit (seed 0x9747b28c), so keyed records land where the Java
/// client (and librdkafka's `murmur2_random`) would put them.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() == 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a keyed record among `n_partitions` (all of them, available or not, as Java).
pub fn partition_for_key(key: &[u8], n_partitions: usize) -> usize {
    // Utils.toPositive: clear the sign bit rather than abs(), so i32::MIN maps to 0.
    (murmur2(key) & 0x7fff_ffff) as usize % n_partitions.max(1)
}

/// The partition of keyless records in call number `call`: round-robin over the partitions that
/// currently have a leader, one partition for the whole call so it becomes one batch.
pub fn sticky_partition(call: u64, available: &[i32]) -> Option<i32> {
    if available.is_empty() {
        return None;
    }
    available
        .get((call % available.len() as u64) as usize)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_utils_test() {
        // org.apache.kafka.common.utils.UtilsTest#testMurmur2
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), expected, "{:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn key_partition_is_to_positive_mod_n() {
        // toPositive(-973932308) = 1173551340; % 7 = 1173551340 - 7*167650191 = 3
        assert_eq!(partition_for_key(b"21", 7), 1173551340 % 7);
        assert_eq!(partition_for_key(b"abc", 1), 0);
        assert_eq!(
            partition_for_key(b"", 3),
            (murmur2(b"") & 0x7fff_ffff) as usize % 3
        );
    }

    #[test]
    fn sticky_rotates_over_available() {
        assert_eq!(sticky_partition(0, &[]), None);
        let avail = [0, 2, 5];
        let picks: Vec<_> = (0..4)
            .map(|c| sticky_partition(c, &avail).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 5, 0]);
    }
}
