//! Internet checksum (RFC 1071) pieces shared by the program (outer IPv4 header, ICMP answers) and the tests.

/// One's-complement fold of a 32-bit accumulator to 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Checksum of a 20-byte IPv4 header given as ten native-endian 16-bit words read from memory (the checksum word
/// itself must be zero). The result is in the same memory order, ready to store.
#[inline(always)]
pub const fn ipv4_header(words: &[u16; 10]) -> u16 {
    let mut sum: u64 = 0;
    let mut i = 0;
    while i < 10 {
        sum += words[i] as u64;
        i += 1;
    }
    !fold(sum)
}

/// The checksum `check` after one 16-bit word it covers changed from `old` to `new` (RFC 1624, eqn. 3). All three in
/// memory order, as read from the packet; the one's-complement sum does not care which byte order that is.
#[inline(always)]
pub const fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u64 + (!old) as u64 + new as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full checksum of `words` with word `skip` (the checksum's own slot) taken as zero.
    fn full(words: &[u16], skip: usize) -> u16 {
        let sum: u64 = words
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != skip)
            .map(|(_, &w)| w as u64)
            .sum();
        !fold(sum)
    }

    #[test]
    fn replace16_matches_a_full_recomputation() {
        let mut words = [
            0x4500u16, 0x0073, 0, 0x4000, 0x4011, 0, 0xc0a8, 0x0001, 0xc0a8, 0x00c7,
        ];
        words[5] = full(&words, 5);
        // Every port value, including the ones that make the sum wrap.
        for new in (0..=u16::MAX).step_by(251).chain([0xffff, 0, 1]) {
            let old = words[0];
            let incremental = replace16(words[5], old, new);
            words[0] = new;
            let want = full(&words, 5);
            // 0x0000 and 0xffff are the same number in one's complement; receivers accept either.
            assert!(
                incremental == want || (incremental | want) == 0xffff && (incremental & want) == 0,
                "{old:#06x} -> {new:#06x}: incremental {incremental:#06x}, full {want:#06x}"
            );
            words[5] = incremental;
        }
    }

    #[test]
    fn rfc1071_example_header() {
        // 45 00 00 73 00 00 40 00 40 11 [b8 61] c0 a8 00 01 c0 a8 00 c7 (checksum b861)
        let bytes: [u8; 20] = [
            0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0, 1, 0xc0, 0xa8, 0,
            0xc7,
        ];
        let mut words = [0u16; 10];
        for (i, w) in words.iter_mut().enumerate() {
            *w = u16::from_ne_bytes([bytes[2 * i], bytes[2 * i + 1]]);
        }
        assert_eq!(ipv4_header(&words).to_ne_bytes(), [0xb8, 0x61]);
    }
}
