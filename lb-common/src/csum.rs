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

#[cfg(test)]
mod tests {
    use super::*;

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
