//! Packet builders for fixtures and the differential test, and a checksum verifier for what the program emits.
//!
//! Built byte by byte (not with a packet library's builder) because the tests need packets a library refuses to
//! make: options of any length, first fragments that still carry an L4 header, truncations. `etherparse` checks
//! in this file's tests that what is built is what it claims to be.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// RFC 1071 sum of `data` (odd length padded with a zero byte), not yet folded or complemented.
pub fn sum16(data: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [b] = chunks.remainder() {
        sum += (*b as u64) << 8;
    }
    sum
}

/// Folded, complemented checksum of the concatenation of the sums given.
pub fn finish(sum: u64) -> u16 {
    !lb_common::csum::fold(sum)
}

pub fn checksum(data: &[u8]) -> u16 {
    finish(sum16(data))
}

/// Sum of the TCP/UDP/ICMPv6 pseudo-header.
pub fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u64 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum16(&s.octets()) + sum16(&d.octets()) + proto as u64 + len as u64
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            sum16(&s.octets())
                + sum16(&d.octets())
                + (len as u64 >> 16)
                + (len as u64 & 0xffff)
                + proto as u64
        }
        _ => panic!("pseudo header of mixed families {src} {dst}"),
    }
}

/// Layer 4 of a packet. Checksums are filled in when the IP header is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    },
    /// Any protocol, bytes as given (no checksum touched): ICMP built elsewhere, junk, a truncated header.
    Raw { proto: u8, bytes: Vec<u8> },
}

impl L4 {
    pub fn proto(&self) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Raw { proto, .. } => *proto,
        }
    }

    /// Wire bytes with the checksum for this pseudo-header.
    pub fn bytes(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        match self {
            L4::Tcp {
                sport,
                dport,
                flags,
                payload,
            } => {
                let mut b = Vec::with_capacity(20 + payload.len());
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend(0x0102_0304u32.to_be_bytes()); // seq
                let ack = if flags & TCP_ACK != 0 {
                    0x0a0b_0c0du32
                } else {
                    0
                };
                b.extend(ack.to_be_bytes());
                b.extend([5 << 4, *flags]);
                b.extend(64240u16.to_be_bytes());
                b.extend([0, 0, 0, 0]); // checksum, urgent
                b.extend(payload);
                let c = finish(pseudo_sum(src, dst, 6, b.len()) + sum16(&b));
                b[16..18].copy_from_slice(&c.to_be_bytes());
                b
            }
            L4::Udp {
                sport,
                dport,
                payload,
            } => {
                let mut b = Vec::with_capacity(8 + payload.len());
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend((8 + payload.len() as u16).to_be_bytes());
                b.extend([0, 0]);
                b.extend(payload);
                let mut c = finish(pseudo_sum(src, dst, 17, b.len()) + sum16(&b));
                if c == 0 {
                    c = 0xffff;
                }
                b[6..8].copy_from_slice(&c.to_be_bytes());
                b
            }
            L4::Raw { bytes, .. } => bytes.clone(),
        }
    }
}

/// An IPv4 or IPv6 fragment: offset in 8-byte units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frag {
    pub offset: u16,
    pub more: bool,
    pub id: u32,
}

/// An IP packet under construction. `src`/`dst` decide the family.
#[derive(Clone, Debug)]
pub struct Ip {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub ttl: u8,
    /// IPv4 only: don't-fragment.
    pub df: bool,
    /// IPv4 only: option bytes (padded to a multiple of 4 with zeros, i.e. end-of-options).
    pub options: Vec<u8>,
    pub frag: Option<Frag>,
    /// IPv4 TOS / IPv6 traffic class.
    pub tos: u8,
    /// IPv6 flow label.
    pub flow_label: u32,
    /// IPv6 extension headers before the Fragment header (if any) and the L4 header: (next-header value, the
    /// header's bytes after its first two, zero-padded to a multiple of 8 with them).
    pub ext: Vec<(u8, Vec<u8>)>,
}

impl Ip {
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Ip {
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "mixed families {src} {dst}");
        Ip {
            src,
            dst,
            l4,
            ttl: 64,
            df: true,
            options: Vec::new(),
            frag: None,
            tos: 0,
            flow_label: 0,
            ext: Vec::new(),
        }
    }

    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Ip {
        Ip::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags,
                payload: Vec::new(),
            },
        )
    }

    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, payload: &[u8]) -> Ip {
        Ip::new(
            src,
            dst,
            L4::Udp {
                sport,
                dport,
                payload: payload.to_vec(),
            },
        )
    }

    pub fn payload(mut self, data: &[u8]) -> Ip {
        match &mut self.l4 {
            L4::Tcp { payload, .. } | L4::Udp { payload, .. } => *payload = data.to_vec(),
            L4::Raw { bytes, .. } => *bytes = data.to_vec(),
        }
        self
    }

    pub fn with_options(mut self, options: &[u8]) -> Ip {
        self.options = options.to_vec();
        self
    }

    pub fn with_frag(mut self, offset: u16, more: bool) -> Ip {
        self.frag = Some(Frag {
            offset,
            more,
            id: 0x1234,
        });
        self
    }

    /// Adds an IPv6 extension header of type `ty` (Hop-by-Hop 0, Routing 43, Destination Options 60, ...);
    /// `body` is what follows its next-header and length bytes (for Routing: routing type, segments left, ...).
    pub fn with_ext(mut self, ty: u8, body: &[u8]) -> Ip {
        self.ext.push((ty, body.to_vec()));
        self
    }

    pub fn no_df(mut self) -> Ip {
        self.df = false;
        self
    }

    pub fn is_v4(&self) -> bool {
        self.src.is_ipv4()
    }

    /// The IP packet's wire bytes, checksums valid. A fragment carries the slice of the whole datagram's L4 bytes
    /// from `offset * 8` (the first fragment: all of them).
    pub fn bytes(&self) -> Vec<u8> {
        let mut l4 = self.l4.bytes(self.src, self.dst);
        if let Some(f) = self.frag {
            let start = (f.offset as usize * 8).min(l4.len());
            l4.drain(..start);
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.v4(s, d, &l4),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.v6(s, d, &l4),
            _ => unreachable!("checked in new"),
        }
    }

    fn v4(&self, src: Ipv4Addr, dst: Ipv4Addr, l4: &[u8]) -> Vec<u8> {
        let mut opts = self.options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        assert!(opts.len() <= 40, "IPv4 options longer than 40 bytes");
        let hlen = 20 + opts.len();
        let total = hlen + l4.len();
        let mut flags_off: u16 = if self.df { 0x4000 } else { 0 };
        let mut id = 0u16;
        if let Some(f) = self.frag {
            flags_off |= f.offset & 0x1fff;
            if f.more {
                flags_off |= 0x2000;
            }
            id = f.id as u16;
        }
        let mut b = Vec::with_capacity(total);
        b.push(0x40 | (hlen / 4) as u8);
        b.push(self.tos);
        b.extend((total as u16).to_be_bytes());
        b.extend(id.to_be_bytes());
        b.extend(flags_off.to_be_bytes());
        b.push(self.ttl);
        b.push(self.l4.proto());
        b.extend([0, 0]);
        b.extend(src.octets());
        b.extend(dst.octets());
        b.extend(&opts);
        let c = checksum(&b);
        b[10..12].copy_from_slice(&c.to_be_bytes());
        b.extend(l4);
        b
    }

    fn v6(&self, src: Ipv6Addr, dst: Ipv6Addr, l4: &[u8]) -> Vec<u8> {
        // Built back to front: each header names the one after it.
        let mut ext = Vec::new();
        let mut nh = self.l4.proto();
        if let Some(f) = self.frag {
            let mut h = vec![nh, 0];
            let off = (f.offset << 3) | f.more as u16;
            h.extend(off.to_be_bytes());
            h.extend(f.id.to_be_bytes());
            ext.splice(0..0, h);
            nh = 44;
        }
        for (ty, body) in self.ext.iter().rev() {
            let mut h = vec![nh, 0];
            h.extend(body);
            while h.len() < 8 || !h.len().is_multiple_of(8) {
                h.push(0);
            }
            h[1] = (h.len() / 8 - 1) as u8;
            ext.splice(0..0, h);
            nh = *ty;
        }
        let plen = ext.len() + l4.len();
        let mut b = Vec::with_capacity(40 + plen);
        let vtf = (6u32 << 28) | ((self.tos as u32) << 20) | (self.flow_label & 0xfffff);
        b.extend(vtf.to_be_bytes());
        b.extend((plen as u16).to_be_bytes());
        b.push(nh);
        b.push(self.ttl);
        b.extend(src.octets());
        b.extend(dst.octets());
        b.extend(&ext);
        b.extend(l4);
        b
    }
}

/// Ethernet addresses and an optional 802.1Q VLAN id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2 {
    pub src: [u8; 6],
    pub dst: [u8; 6],
    pub vlan: Option<u16>,
}

impl L2 {
    pub const fn new(src: [u8; 6], dst: [u8; 6]) -> L2 {
        L2 {
            src,
            dst,
            vlan: None,
        }
    }
    pub const fn vlan(self, id: u16) -> L2 {
        L2 {
            vlan: Some(id),
            ..self
        }
    }
    pub const fn swapped(self) -> L2 {
        L2 {
            src: self.dst,
            dst: self.src,
            ..self
        }
    }
    pub fn header_len(&self) -> usize {
        if self.vlan.is_some() { 18 } else { 14 }
    }
}

/// An Ethernet frame around `payload`.
pub fn eth(l2: &L2, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(18 + payload.len());
    b.extend(l2.dst);
    b.extend(l2.src);
    if let Some(id) = l2.vlan {
        b.extend(ETH_P_8021Q.to_be_bytes());
        b.extend((id & 0x0fff).to_be_bytes());
    }
    b.extend(ethertype.to_be_bytes());
    b.extend(payload);
    b
}

/// The ethertype of an IP packet by its version nibble.
pub fn ethertype_of(ip: &[u8]) -> u16 {
    match ip.first().map(|b| b >> 4) {
        Some(4) => ETH_P_IPV4,
        Some(6) => ETH_P_IPV6,
        _ => panic!("not an IP packet: {:02x?}", &ip[..ip.len().min(4)]),
    }
}

/// An Ethernet frame carrying an IP packet.
pub fn frame(l2: &L2, ip: &[u8]) -> Vec<u8> {
    eth(l2, ethertype_of(ip), ip)
}

/// An ARP request, for the "not IP" rows.
pub fn arp_request(l2: &L2, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut b = vec![0, 1, 8, 0, 6, 4, 0, 1];
    b.extend(l2.src);
    b.extend(sender.octets());
    b.extend([0; 6]);
    b.extend(target.octets());
    eth(l2, ETH_P_ARP, &b)
}

/// ICMP type 3 code 4 (fragmentation needed) from `src` to `dst` quoting `quoted` (an IP packet, cut by the
/// caller), as an IP packet.
pub fn icmp4_frag_needed(src: Ipv4Addr, dst: Ipv4Addr, mtu: u16, quoted: &[u8]) -> Ip {
    let mut m = vec![3, 4, 0, 0, 0, 0];
    m.extend(mtu.to_be_bytes());
    m.extend(quoted);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    Ip::new(src.into(), dst.into(), L4::Raw { proto: 1, bytes: m }).no_df()
}

/// Any ICMPv4 message with a valid checksum (echo, unreachable of other codes...).
pub fn icmp4(src: Ipv4Addr, dst: Ipv4Addr, typ: u8, code: u8, rest: &[u8]) -> Ip {
    let mut m = vec![typ, code, 0, 0];
    m.extend(rest);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    Ip::new(src.into(), dst.into(), L4::Raw { proto: 1, bytes: m }).no_df()
}

/// ICMPv6 type 2 (packet too big) from `src` to `dst` quoting `quoted`, as an IP packet.
pub fn icmp6_too_big(src: Ipv6Addr, dst: Ipv6Addr, mtu: u32, quoted: &[u8]) -> Ip {
    let mut rest = mtu.to_be_bytes().to_vec();
    rest.extend(quoted);
    icmp6(src, dst, 2, 0, &rest)
}

/// Any ICMPv6 message with a valid checksum.
pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, typ: u8, code: u8, rest: &[u8]) -> Ip {
    let mut m = vec![typ, code, 0, 0];
    m.extend(rest);
    let c = finish(pseudo_sum(src.into(), dst.into(), 58, m.len()) + sum16(&m));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    Ip::new(
        src.into(),
        dst.into(),
        L4::Raw {
            proto: 58,
            bytes: m,
        },
    )
}

/// `inner` (an IP packet, any family) inside an outer IPv4 header as the balancer writes it: TOS 0, id 0, DF,
/// TTL 64, protocol 4 or 41.
pub fn encap4(src: Ipv4Addr, dst: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let proto = if ethertype_of(inner) == ETH_P_IPV4 {
        4
    } else {
        41
    };
    Ip::new(
        src.into(),
        dst.into(),
        L4::Raw {
            proto,
            bytes: inner.to_vec(),
        },
    )
    .bytes()
}

/// `inner` inside an outer IPv6 header as the balancer writes it: traffic class 0, the given flow label, hop
/// limit 64, next header 4 or 41.
pub fn encap6(src: Ipv6Addr, dst: Ipv6Addr, flow_label: u32, inner: &[u8]) -> Vec<u8> {
    let proto = if ethertype_of(inner) == ETH_P_IPV4 {
        4
    } else {
        41
    };
    let mut ip = Ip::new(
        src.into(),
        dst.into(),
        L4::Raw {
            proto,
            bytes: inner.to_vec(),
        },
    );
    ip.flow_label = flow_label;
    ip.bytes()
}

/// Checks every checksum in an Ethernet frame the program emitted: the IPv4 header checksum of each IP header
/// (outer and inner), and the TCP/UDP/ICMP/ICMPv6 checksum of the innermost complete, unfragmented packet.
/// Padding after the IP total length is allowed.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    if frame.len() < 14 {
        return Err(format!("frame of {} bytes", frame.len()));
    }
    let mut off = 12;
    let mut et = u16::from_be_bytes([frame[off], frame[off + 1]]);
    if et == ETH_P_8021Q {
        off += 4;
        et = u16::from_be_bytes(get(frame, off, 2)?.try_into().unwrap());
    }
    match et {
        ETH_P_IPV4 | ETH_P_IPV6 => verify_ip(&frame[off + 2..], 0),
        _ => Ok(()),
    }
}

fn get(b: &[u8], off: usize, len: usize) -> Result<&[u8], String> {
    b.get(off..off + len)
        .ok_or_else(|| format!("truncated: need {len} bytes at {off}, have {}", b.len()))
}

fn verify_ip(ip: &[u8], depth: usize) -> Result<(), String> {
    let at = |what: &str| format!("{what} (IP header at depth {depth})");
    let version = get(ip, 0, 1)?[0] >> 4;
    let (src, dst, proto, payload, fragment): (IpAddr, IpAddr, u8, &[u8], bool) = match version {
        4 => {
            let ihl = (ip[0] & 0x0f) as usize * 4;
            let hdr = get(ip, 0, ihl.max(20))?;
            if checksum(hdr) != 0 {
                return Err(at(&format!(
                    "bad IPv4 header checksum {:02x}{:02x}",
                    hdr[10], hdr[11]
                )));
            }
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            let body = ip
                .get(ihl..total)
                .ok_or_else(|| at("IPv4 total length beyond the frame"))?;
            let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
            let s: [u8; 4] = ip[12..16].try_into().unwrap();
            let d: [u8; 4] = ip[16..20].try_into().unwrap();
            (IpAddr::from(s), IpAddr::from(d), ip[9], body, frag)
        }
        6 => {
            let hdr = get(ip, 0, 40)?;
            let plen = u16::from_be_bytes([hdr[4], hdr[5]]) as usize;
            let body = ip
                .get(40..40 + plen)
                .ok_or_else(|| at("IPv6 payload length beyond the frame"))?;
            let s: [u8; 16] = ip[8..24].try_into().unwrap();
            let d: [u8; 16] = ip[24..40].try_into().unwrap();
            // Hop-by-hop, routing and destination options headers sit between the header and the payload.
            let (mut nh, mut body) = (hdr[6], body);
            while matches!(nh, 0 | 43 | 60) {
                let len = (get(body, 1, 1)?[0] as usize + 1) * 8;
                nh = body[0];
                body = body
                    .get(len..)
                    .ok_or_else(|| at("IPv6 extension header beyond the payload"))?;
            }
            (IpAddr::from(s), IpAddr::from(d), nh, body, nh == 44)
        }
        v => return Err(at(&format!("IP version {v}"))),
    };
    if fragment {
        return Ok(());
    }
    match proto {
        4 | 41 => verify_ip(payload, depth + 1),
        6 | 17 | 58 => {
            if proto == 17 && payload.len() >= 8 && payload[6..8] == [0, 0] && src.is_ipv4() {
                return Ok(()); // no UDP checksum over IPv4
            }
            let s = pseudo_sum(src, dst, proto, payload.len()) + sum16(payload);
            if finish(s) != 0 {
                return Err(at(&format!("bad L4 checksum (protocol {proto})")));
            }
            Ok(())
        }
        1 => {
            if checksum(payload) != 0 {
                return Err(at("bad ICMP checksum"));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A readable hex dump, 16 bytes a line, with offsets.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, c)| {
            let h: Vec<String> = c.iter().map(|b| format!("{b:02x}")).collect();
            format!("{:04x}  {}", i * 16, h.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Names the header field at byte `off` of an Ethernet frame, for mismatch reports.
pub fn field_at(frame: &[u8], off: usize) -> String {
    let mut l3 = 14;
    if off < 6 {
        return "ethernet destination".into();
    }
    if off < 12 {
        return "ethernet source".into();
    }
    if frame.len() >= 14 && u16::from_be_bytes([frame[12], frame[13]]) == ETH_P_8021Q {
        if off < 16 {
            return "802.1Q tag".into();
        }
        l3 = 18;
    }
    if off < l3 {
        return "ethertype".into();
    }
    let mut base = l3;
    let mut depth = 0;
    loop {
        let Some(&vb) = frame.get(base) else {
            return format!("byte {off} (beyond the frame)");
        };
        let rel = off - base;
        let (hlen, names, proto): (usize, &[(usize, &str)], u8) = match vb >> 4 {
            4 => {
                const N: &[(usize, &str)] = &[
                    (1, "version/IHL"),
                    (2, "TOS"),
                    (4, "total length"),
                    (6, "id"),
                    (8, "flags/fragment offset"),
                    (9, "TTL"),
                    (10, "protocol"),
                    (12, "header checksum"),
                    (16, "source address"),
                    (20, "destination address"),
                ];
                (
                    (vb & 0xf) as usize * 4,
                    N,
                    frame.get(base + 9).copied().unwrap_or(0),
                )
            }
            6 => {
                const N: &[(usize, &str)] = &[
                    (4, "version/traffic class/flow label"),
                    (6, "payload length"),
                    (7, "next header"),
                    (8, "hop limit"),
                    (24, "source address"),
                    (40, "destination address"),
                ];
                (40, N, frame.get(base + 6).copied().unwrap_or(0))
            }
            _ => return format!("byte {rel} after the L3 start"),
        };
        if rel < hlen {
            let name = names
                .iter()
                .find(|(end, _)| rel < *end)
                .map(|(_, n)| *n)
                .unwrap_or("IPv4 options");
            return format!("IP header (depth {depth}) {name}");
        }
        if proto == 4 || proto == 41 {
            base += hlen;
            depth += 1;
            continue;
        }
        return format!("L4 (protocol {proto}, depth {depth}) byte {}", rel - hlen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    const L2A: L2 = L2::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tcp_v4_with_options_parses_and_verifies() {
        let ip = Ip::tcp(v4("198.18.0.1"), 1000, v4("198.19.0.1"), 80, TCP_SYN)
            .with_options(&[1, 1, 1])
            .payload(b"abc");
        let f = frame(&L2A.vlan(7), &ip.bytes());
        verify_checksums(&f).unwrap();
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(NetSlice::Ipv4(ipv4)) = &p.net else {
            panic!("not ipv4: {p:?}")
        };
        let h = ipv4.header().to_header();
        assert_eq!(h.ihl(), 6);
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
            panic!("not tcp")
        };
        assert!(tcp.syn() && !tcp.ack());
        let sum = tcp
            .to_header()
            .calc_checksum_ipv4(&h, tcp.payload())
            .unwrap();
        assert_eq!(sum, tcp.checksum());
    }

    #[test]
    fn udp_v6_fragment_and_icmp6_verify() {
        let s: IpAddr = "fd00::1".parse().unwrap();
        let d: IpAddr = "fd00:1::1".parse().unwrap();
        let ip = Ip::udp(s, 5, d, 53, &[7; 30]);
        verify_checksums(&frame(&L2A, &ip.bytes())).unwrap();
        let frag = ip.clone().with_frag(0, true).bytes();
        assert_eq!(frag[6], 44);
        let ff = frame(&L2A, &frag);
        let p = SlicedPacket::from_ethernet(&ff).unwrap();
        assert!(p.is_ip_payload_fragmented());
        let (IpAddr::V6(s6), IpAddr::V6(d6)) = (s, d) else {
            unreachable!()
        };
        let tb = icmp6_too_big(d6, s6, 1400, &ip.bytes()).bytes();
        verify_checksums(&frame(&L2A, &tb)).unwrap();
        let mut bad = frame(&L2A, &tb);
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(verify_checksums(&bad).is_err());
    }

    #[test]
    fn encapsulations_verify_inner_and_outer() {
        let inner = Ip::tcp(v4("198.18.0.1"), 1000, v4("198.19.0.1"), 80, TCP_ACK).bytes();
        let o4 = encap4(
            "198.18.9.1".parse().unwrap(),
            "198.18.10.1".parse().unwrap(),
            &inner,
        );
        assert_eq!((o4[9], o4.len()), (4, inner.len() + 20));
        verify_checksums(&frame(&L2A, &o4)).unwrap();
        let o6 = encap6(
            "fd00::9".parse().unwrap(),
            "fd00::10".parse().unwrap(),
            0xabcde,
            &inner,
        );
        assert_eq!((o6[6], o6.len()), (4, inner.len() + 40));
        verify_checksums(&frame(&L2A, &o6)).unwrap();
        let mut bad = frame(&L2A, &o6);
        bad[14 + 40 + 20 + 17] ^= 0x40; // inner TCP checksum
        assert!(verify_checksums(&bad).is_err());
        assert_eq!(
            field_at(&bad, 14 + 40 + 16),
            "IP header (depth 1) destination address"
        );
        assert_eq!(field_at(&bad, 14 + 6), "IP header (depth 0) next header");
    }

    #[test]
    fn icmp4_frag_needed_verifies() {
        let inner = Ip::tcp(v4("198.19.0.1"), 80, v4("198.18.0.1"), 1000, TCP_ACK).bytes();
        let ip = icmp4_frag_needed(
            "198.18.5.5".parse().unwrap(),
            "198.19.0.1".parse().unwrap(),
            1400,
            &inner[..28],
        );
        let f = frame(&L2A, &ip.bytes());
        verify_checksums(&f).unwrap();
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        assert!(matches!(p.transport, Some(TransportSlice::Icmpv4(_))));
    }
}
