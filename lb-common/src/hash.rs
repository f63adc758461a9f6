//! The flow hash: which Maglev ring entry a flow indexes. One definition for the kernel and every userspace tool.
//!
//! MurmurHash3's 32-bit block mix over the words of a [`FlowKey`] (no tail, no loop bound to prove), seeded.
//! The words are the raw wire bytes read as native `u32`s, exactly as the program loads them.

use crate::{
    consts::{FAMILY_V4, VIP_FILTER_WORDS},
    types::{AddrWords, FlowKey, FlowState},
};

/// Fixed seed: the same flow must map to the same backend on every balancer of a fleet (ECMP may move a flow
/// between balancers; with equal configs they agree on its backend even without shared flow state).
pub const FLOW_HASH_SEED: u32 = 0x4c42_5631; // "LBV1"

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a flow. For a `VIP_F_FRAG_HASH3` VIP pass `key.three_tuple()`.
///
/// An IPv4 key mixes only the words that can be non-zero (4 of 10): the mixes form one dependent chain, and BPF,
/// which has no rotate instruction, spends about a dozen instructions on each, so the six zero words were a third of
/// the program's own time on a new IPv4 flow.
#[inline(always)]
pub const fn flow_hash(key: &FlowKey) -> u32 {
    let mut h = FLOW_HASH_SEED;
    h = mix(h, key.src[0]);
    h = mix(h, key.dst[0]);
    let len = if key.family == FAMILY_V4 {
        16
    } else {
        h = mix(h, key.src[1]);
        h = mix(h, key.src[2]);
        h = mix(h, key.src[3]);
        h = mix(h, key.dst[1]);
        h = mix(h, key.dst[2]);
        h = mix(h, key.dst[3]);
        40
    };
    h = mix(h, (key.sport as u32) | ((key.dport as u32) << 16));
    h = mix(h, (key.proto as u32) | ((key.family as u32) << 8));
    finish(h, len)
}

impl FlowState {
    /// The entry of `key` when it goes to `backend_id`, with the flow's hash: what the program inserts, and what
    /// userspace writes.
    pub const fn new(key: &FlowKey, backend_id: crate::BackendId) -> FlowState {
        FlowState {
            backend_id,
            hash: flow_hash(key),
        }
    }
}

/// The `LB_VIP_FILTER` bit of an address (`0..VIP_FILTER_WORDS * 64`): the four words folded (an IPv4 address has
/// three zero words), then Fibonacci hashing, whose top bits depend on every input bit. Not seeded: the filter only
/// saves lookups, a collision costs the two hash-map misses a packet would pay without it.
#[inline(always)]
pub const fn vip_filter_bit(addr: &AddrWords) -> u32 {
    let folded = addr[0] ^ addr[1] ^ addr[2] ^ addr[3];
    folded.wrapping_mul(0x9e37_79b1) >> (32 - VIP_FILTER_BITS_LOG2)
}

/// `log2` of the filter's bit count; `VIP_FILTER_WORDS * 64 == 1 << VIP_FILTER_BITS_LOG2`.
const VIP_FILTER_BITS_LOG2: u32 = 16;
const _: () = assert!(VIP_FILTER_WORDS * 64 == 1 << VIP_FILTER_BITS_LOG2);

#[cfg(test)]
mod tests {
    use super::*;

    fn key(last: u8, sport: u16) -> FlowKey {
        FlowKey {
            src: [u32::from_ne_bytes([198, 18, 0, last]), 0, 0, 0],
            dst: [u32::from_ne_bytes([198, 19, 0, 1]), 0, 0, 0],
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            family: 4,
            _pad: [0; 2],
        }
    }

    /// fd00:18::7 port 1000 → fd00:19::10 port 80, TCP.
    fn key6() -> FlowKey {
        FlowKey {
            src: [0x00fd, 0x1800, 0, 0x0700_0000],
            dst: [0x00fd, 0x1900, 0, 0x1000_0000],
            family: 6,
            ..key(0, 1000)
        }
    }

    /// The hash is a function of the flow: the padding of its key is not part of it (a key read back from a map,
    /// or built by other code, may carry anything there), and every field and address word is.
    #[test]
    fn depends_on_every_field_of_the_flow_and_nothing_else() {
        let k = key(1, 1000);
        let base = flow_hash(&k);
        assert_eq!(
            base,
            flow_hash(&FlowKey {
                _pad: [0xa5, 0x5a],
                ..k
            }),
            "the key's padding changes the hash"
        );
        let fields = [
            ("source address", key(2, 1000)),
            ("source port", key(1, 1001)),
            (
                "destination address",
                FlowKey {
                    dst: [u32::from_ne_bytes([198, 19, 0, 2]), 0, 0, 0],
                    ..k
                },
            ),
            (
                "destination port",
                FlowKey {
                    dport: 81u16.to_be(),
                    ..k
                },
            ),
            ("protocol", FlowKey { proto: 17, ..k }),
            ("family", FlowKey { family: 6, ..k }),
        ];
        for (field, other) in fields {
            assert_ne!(
                base,
                flow_hash(&other),
                "the {field} does not change the hash"
            );
        }
        let v6 = key6();
        for word in 0..4 {
            let (mut src, mut dst) = (v6, v6);
            src.src[word] ^= 0x0100_0000;
            dst.dst[word] ^= 0x0100_0000;
            for (side, other) in [("source", src), ("destination", dst)] {
                assert_ne!(
                    flow_hash(&v6),
                    flow_hash(&other),
                    "word {word} of an IPv6 {side} address does not change the hash"
                );
            }
        }
        assert_eq!(
            flow_hash(&k.three_tuple()),
            flow_hash(&key(1, 2000).three_tuple())
        );
    }

    /// Pinned values: changing the hash moves every flow of a fleet mid-upgrade, so it must be a deliberate act.
    #[test]
    fn pinned_values() {
        let got = [
            flow_hash(&key(1, 1000)),
            flow_hash(&key(7, 40000)),
            flow_hash(&key6()),
        ];
        assert_eq!(got, PINNED, "flow hash changed: {got:#010x?}");
    }
    const PINNED: [u32; 3] = [0x722e_40d3, 0x8432_ee7a, 0x7273_2646];

    #[test]
    fn spreads_over_a_prime_ring() {
        const M: u32 = 251;
        let mut buckets = [0u32; M as usize];
        let n = 251 * 400;
        for i in 0..n {
            let k = key((i % 250) as u8, (i / 250) as u16 + 1024);
            buckets[(flow_hash(&k) % M) as usize] += 1;
        }
        let (min, max) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
        // 400 expected per bucket; a uniform hash stays well inside ±30% at this count.
        assert!(*min > 280 && *max < 520, "uneven: min {min} max {max}");
    }

    #[test]
    fn vip_filter_bits_are_in_range_and_spread() {
        let mut seen = [0u64; VIP_FILTER_WORDS as usize];
        let mut distinct = 0;
        // 256 consecutive IPv4 addresses (a VIP /24) and 256 IPv6 ones differing in the last word.
        for i in 0..=255u8 {
            for addr in [
                [u32::from_ne_bytes([198, 19, 0, i]), 0, 0, 0],
                [0x00fd, 0x1900, 0, u32::from_ne_bytes([0, 0, 0, i])],
            ] {
                let bit = vip_filter_bit(&addr);
                assert!(bit < VIP_FILTER_WORDS * 64);
                let (w, m) = ((bit / 64) as usize, 1u64 << (bit % 64));
                if seen[w] & m == 0 {
                    distinct += 1;
                }
                seen[w] |= m;
            }
        }
        // 512 addresses into 65,536 bits: a spreading hash collides only a few times.
        assert!(
            distinct > 500,
            "only {distinct} distinct bits for 512 addresses"
        );
    }
}
