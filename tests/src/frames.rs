//! Exact Ethernet frames for `BPF_PROG_TEST_RUN` verdict tests and raw sends.
//!
//! ```
//! use gateway_tests::frames::{Ext, Frame, TPID_8021Q};
//! use std::net::{Ipv4Addr, Ipv6Addr};
//!
//! let udp = Frame::udp4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 1234, 80, b"hi")
//!     .vlan(TPID_8021Q, 100)
//!     .build();
//! let syn = Frame::tcp6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 1234, 443)
//!     .syn()
//!     .ext(Ext::HopByHop)
//!     .ext(Ext::Fragment { offset: 0, more: true })
//!     .build();
//! assert_eq!(udp.len(), 14 + 4 + 20 + 8 + 2);
//! assert_eq!(syn.len(), 14 + 40 + 8 + 8 + 20);
//! ```
//!
//! Lengths and checksums are always computed from what is actually written; the few methods
//! that forge a header field (`ipv4_ihl`, `ip_protocol`, `truncate`) say so.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
/// 802.1Q VLAN tag.
pub const TPID_8021Q: u16 = 0x8100;
/// 802.1ad (QinQ) service tag.
pub const TPID_8021AD: u16 = 0x88a8;

/// IP protocol / IPv6 next-header numbers.
pub mod proto {
    pub const HOPOPTS: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const NONE: u8 = 59;
    pub const DSTOPTS: u8 = 60;
}

/// TCP flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Locally administered MACs used unless [`Frame::macs`] says otherwise.
pub const DEFAULT_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// An IPv6 extension header, in the order given to [`Frame::ext`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options, 8 bytes (one PadN option). Must come first to be valid.
    HopByHop,
    /// Destination options, 8 bytes (one PadN option).
    DestOpts,
    /// Routing header, 8 bytes: type 253 (experimental), segments left 0, which receivers
    /// ignore, so the destination stays the IPv6 destination.
    Routing,
    /// Fragment header; `offset` in 8-byte units, `more` is the M flag.
    Fragment { offset: u16, more: bool },
    /// Authentication header, 24 bytes (12-byte ICV); its length field counts 4-byte units.
    Ah,
    /// A header with the generic layout (next header, length in 8-byte units beyond the
    /// first 8, zero-filled body: Pad1 options), `8 * (1 + hdr_ext_len)` bytes long, under
    /// any `header` number: long option headers for parser-limit tests.
    Sized { header: u8, hdr_ext_len: u8 },
}

impl Ext {
    /// The next-header number that announces this header.
    pub fn header_number(&self) -> u8 {
        match self {
            Ext::HopByHop => proto::HOPOPTS,
            Ext::DestOpts => proto::DSTOPTS,
            Ext::Routing => proto::ROUTING,
            Ext::Fragment { .. } => proto::FRAGMENT,
            Ext::Ah => proto::AH,
            Ext::Sized { header, .. } => *header,
        }
    }

    /// The header's bytes, announcing `next` as the header that follows it.
    fn bytes(&self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop | Ext::DestOpts => {
                // PadN option (type 1) filling the 6 bytes after next-header and length.
                vec![next, 0, 1, 4, 0, 0, 0, 0]
            }
            Ext::Routing => vec![next, 0, 253, 0, 0, 0, 0, 0],
            Ext::Fragment { offset, more } => {
                assert!(*offset < 0x2000, "fragment offset {offset} exceeds 13 bits");
                let field = (offset << 3) | u16::from(*more);
                let mut h = vec![next, 0];
                h.extend(field.to_be_bytes());
                h.extend(FRAGMENT_ID.to_be_bytes());
                h
            }
            Ext::Ah => {
                const LEN: usize = 24;
                let mut h = vec![next, (LEN / 4 - 2) as u8, 0, 0];
                h.extend(0x100u32.to_be_bytes()); // SPI
                h.extend(1u32.to_be_bytes()); // sequence number
                h.resize(LEN, 0); // ICV
                h
            }
            Ext::Sized { hdr_ext_len, .. } => {
                let mut h = vec![next, *hdr_ext_len];
                h.resize(8 * (1 + usize::from(*hdr_ext_len)), 0);
                h
            }
        }
    }
}

/// Identification written in IPv4 headers and IPv6 fragment headers.
const FRAGMENT_ID: u32 = 0x1234_5678;

/// A frame under construction. Methods consume and return it; [`Frame::build`] renders it.
#[derive(Clone, Debug)]
pub struct Frame {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    /// `(tpid, tci)`, outermost first.
    vlans: Vec<(u16, u16)>,
    l3: L3,
    l4: L4,
    pad_to: Option<usize>,
    truncate_to: Option<usize>,
}

#[derive(Clone, Debug)]
enum L3 {
    V4(Ipv4),
    V6(Ipv6),
    /// No IP header: the L4 payload follows the ethertype directly.
    Other {
        ethertype: u16,
    },
}

#[derive(Clone, Debug)]
struct Ipv4 {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    dont_fragment: bool,
    more_fragments: bool,
    frag_offset: u16,
    options_len: usize,
    ihl_override: Option<u8>,
    protocol_override: Option<u8>,
}

#[derive(Clone, Debug)]
struct Ipv6 {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    exts: Vec<Ext>,
    protocol_override: Option<u8>,
}

#[derive(Clone, Debug)]
enum L4 {
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    },
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        payload: Vec<u8>,
    },
    /// ICMP echo request (v4) or ICMPv6 echo request (v6).
    Echo { payload: Vec<u8> },
    /// Any protocol, bytes as given.
    Raw { protocol: u8, payload: Vec<u8> },
}

impl L4 {
    fn protocol(&self, v6: bool) -> u8 {
        match self {
            L4::Udp { .. } => proto::UDP,
            L4::Tcp { .. } => proto::TCP,
            L4::Echo { .. } if v6 => proto::ICMPV6,
            L4::Echo { .. } => proto::ICMP,
            L4::Raw { protocol, .. } => *protocol,
        }
    }

    fn payload_mut(&mut self) -> &mut Vec<u8> {
        match self {
            L4::Udp { payload, .. }
            | L4::Tcp { payload, .. }
            | L4::Echo { payload }
            | L4::Raw { payload, .. } => payload,
        }
    }
}

impl Frame {
    fn new(l3: L3, l4: L4) -> Frame {
        Frame {
            dst_mac: DEFAULT_DST_MAC,
            src_mac: DEFAULT_SRC_MAC,
            vlans: Vec::new(),
            l3,
            l4,
            pad_to: None,
            truncate_to: None,
        }
    }

    fn v4(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Frame {
        Frame::new(
            L3::V4(Ipv4 {
                src,
                dst,
                ttl: 64,
                dont_fragment: false,
                more_fragments: false,
                frag_offset: 0,
                options_len: 0,
                ihl_override: None,
                protocol_override: None,
            }),
            l4,
        )
    }

    fn v6(src: Ipv6Addr, dst: Ipv6Addr, l4: L4) -> Frame {
        Frame::new(
            L3::V6(Ipv6 {
                src,
                dst,
                hop_limit: 64,
                exts: Vec::new(),
                protocol_override: None,
            }),
            l4,
        )
    }

    fn ip(src: IpAddr, dst: IpAddr, l4: L4) -> Frame {
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Frame::v4(src, dst, l4),
            (IpAddr::V6(src), IpAddr::V6(dst)) => Frame::v6(src, dst, l4),
            _ => panic!("mixed address families: {src} -> {dst}"),
        }
    }

    pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Frame {
        Frame::v4(src, dst, udp(sport, dport, payload))
    }

    pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Frame {
        Frame::v6(src, dst, udp(sport, dport, payload))
    }

    /// UDP over IPv4 or IPv6, from the addresses' family.
    pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Frame {
        Frame::ip(src, dst, udp(sport, dport, payload))
    }

    /// A TCP segment with ACK set and no payload; see [`Frame::syn`], [`Frame::tcp_flags`],
    /// [`Frame::payload`].
    pub fn tcp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Frame {
        Frame::v4(src, dst, tcp(sport, dport))
    }

    pub fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Frame {
        Frame::v6(src, dst, tcp(sport, dport))
    }

    /// TCP over IPv4 or IPv6, from the addresses' family.
    pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Frame {
        Frame::ip(src, dst, tcp(sport, dport))
    }

    /// ICMP echo request (type 8), checksummed.
    pub fn icmp4_echo(src: Ipv4Addr, dst: Ipv4Addr) -> Frame {
        Frame::v4(
            src,
            dst,
            L4::Echo {
                payload: Vec::new(),
            },
        )
    }

    /// ICMPv6 echo request (type 128), checksummed over the pseudo-header.
    pub fn icmp6_echo(src: Ipv6Addr, dst: Ipv6Addr) -> Frame {
        Frame::v6(
            src,
            dst,
            L4::Echo {
                payload: Vec::new(),
            },
        )
    }

    /// IPv4 carrying `protocol` with `payload` as its bytes, unchanged.
    pub fn ip4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Frame {
        Frame::v4(src, dst, raw(protocol, payload))
    }

    /// IPv6 whose last next-header is `protocol`, with `payload` as its bytes, unchanged.
    pub fn ip6(src: Ipv6Addr, dst: Ipv6Addr, protocol: u8, payload: &[u8]) -> Frame {
        Frame::v6(src, dst, raw(protocol, payload))
    }

    /// A non-IP frame: `payload` right after `ethertype` (and any VLAN tags).
    pub fn ether(ethertype: u16, payload: &[u8]) -> Frame {
        Frame::new(L3::Other { ethertype }, raw(0, payload))
    }

    /// Destination and source MAC addresses.
    pub fn macs(mut self, dst: [u8; 6], src: [u8; 6]) -> Frame {
        self.dst_mac = dst;
        self.src_mac = src;
        self
    }

    /// Adds a VLAN tag inside the ones already added (call outermost first), priority 0.
    pub fn vlan(self, tpid: u16, vid: u16) -> Frame {
        assert!(vid < 0x1000, "VLAN id {vid} exceeds 12 bits");
        self.vlan_tci(tpid, vid)
    }

    /// Adds a VLAN tag with a raw TCI (priority, DEI and id).
    pub fn vlan_tci(mut self, tpid: u16, tci: u16) -> Frame {
        self.vlans.push((tpid, tci));
        self
    }

    /// IPv4 TTL or IPv6 hop limit.
    pub fn ttl(mut self, ttl: u8) -> Frame {
        match &mut self.l3 {
            L3::V4(ip) => ip.ttl = ttl,
            L3::V6(ip) => ip.hop_limit = ttl,
            L3::Other { .. } => panic!("ttl() on a non-IP frame"),
        }
        self
    }

    /// `len` bytes of IPv4 options (NOPs), raising IHL to `5 + len / 4`.
    pub fn ipv4_options(mut self, len: usize) -> Frame {
        assert!(
            len.is_multiple_of(4) && len <= 40,
            "IPv4 options: {len} is not 0..=40 in steps of 4"
        );
        self.ipv4_mut("ipv4_options").options_len = len;
        self
    }

    /// Makes this a fragment: `offset` in 8-byte units, `more` the MF flag. On IPv4 this sets
    /// the header fields; on IPv6 it appends a fragment header ([`Ext::Fragment`]).
    ///
    /// The L4 header and payload are written as given either way, so for a non-first fragment
    /// use [`Frame::ip4`]/[`Frame::ip6`] to control the bytes exactly.
    pub fn fragment(mut self, offset: u16, more: bool) -> Frame {
        assert!(offset < 0x2000, "fragment offset {offset} exceeds 13 bits");
        match &mut self.l3 {
            L3::V4(ip) => {
                ip.frag_offset = offset;
                ip.more_fragments = more;
            }
            L3::V6(_) => return self.ext(Ext::Fragment { offset, more }),
            L3::Other { .. } => panic!("fragment() on a non-IP frame"),
        }
        self
    }

    /// Sets the IPv4 don't-fragment flag.
    pub fn dont_fragment(mut self) -> Frame {
        self.ipv4_mut("dont_fragment").dont_fragment = true;
        self
    }

    /// Forges the IPv4 IHL field (lengths and checksum still cover the real header), e.g. 4
    /// for a malformed header.
    pub fn ipv4_ihl(mut self, ihl: u8) -> Frame {
        assert!(ihl < 16, "IHL {ihl} exceeds 4 bits");
        self.ipv4_mut("ipv4_ihl").ihl_override = Some(ihl);
        self
    }

    /// Forges the protocol field (IPv4) or the last next-header (IPv6); the L4 bytes and
    /// their checksum stay those of the real protocol.
    pub fn ip_protocol(mut self, protocol: u8) -> Frame {
        match &mut self.l3 {
            L3::V4(ip) => ip.protocol_override = Some(protocol),
            L3::V6(ip) => ip.protocol_override = Some(protocol),
            L3::Other { .. } => panic!("ip_protocol() on a non-IP frame"),
        }
        self
    }

    /// Appends an IPv6 extension header (after those already added).
    pub fn ext(mut self, ext: Ext) -> Frame {
        match &mut self.l3 {
            L3::V6(ip) => ip.exts.push(ext),
            _ => panic!("ext() needs an IPv6 frame"),
        }
        self
    }

    /// Sets the TCP flags to SYN only.
    pub fn syn(self) -> Frame {
        self.tcp_flags(tcp_flags::SYN)
    }

    /// Sets the TCP flags byte (see [`tcp_flags`]).
    pub fn tcp_flags(mut self, value: u8) -> Frame {
        match &mut self.l4 {
            L4::Tcp { flags, .. } => *flags = value,
            _ => panic!("tcp_flags() on a non-TCP frame"),
        }
        self
    }

    /// Sets the TCP sequence number.
    pub fn seq(mut self, value: u32) -> Frame {
        match &mut self.l4 {
            L4::Tcp { seq, .. } => *seq = value,
            _ => panic!("seq() on a non-TCP frame"),
        }
        self
    }

    /// Replaces the L4 payload (after the TCP/UDP/ICMP header, or all of a raw protocol's).
    pub fn payload(mut self, bytes: &[u8]) -> Frame {
        *self.l4.payload_mut() = bytes.to_vec();
        self
    }

    /// Appends zero bytes after the packet up to `len` bytes in all (Ethernet padding: IP
    /// lengths do not count it). 60 is the Ethernet minimum without FCS.
    pub fn pad_to(mut self, len: usize) -> Frame {
        self.pad_to = Some(len);
        self
    }

    /// Cuts the built frame to at most `len` bytes (headers keep their full-length values).
    pub fn truncate(mut self, len: usize) -> Frame {
        self.truncate_to = Some(len);
        self
    }

    /// Renders the frame.
    pub fn build(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(128);
        frame.extend(self.dst_mac);
        frame.extend(self.src_mac);
        for (tpid, tci) in &self.vlans {
            frame.extend(tpid.to_be_bytes());
            frame.extend(tci.to_be_bytes());
        }
        match &self.l3 {
            L3::V4(ip) => {
                frame.extend(ETH_P_IPV4.to_be_bytes());
                frame.extend(ipv4_packet(ip, &self.l4));
            }
            L3::V6(ip) => {
                frame.extend(ETH_P_IPV6.to_be_bytes());
                frame.extend(ipv6_packet(ip, &self.l4));
            }
            L3::Other { ethertype } => {
                frame.extend(ethertype.to_be_bytes());
                frame.extend(l4_bytes(&self.l4, None));
            }
        }
        if let Some(len) = self.pad_to
            && frame.len() < len
        {
            frame.resize(len, 0);
        }
        if let Some(len) = self.truncate_to {
            frame.truncate(len);
        }
        frame
    }

    fn ipv4_mut(&mut self, what: &str) -> &mut Ipv4 {
        match &mut self.l3 {
            L3::V4(ip) => ip,
            _ => panic!("{what}() needs an IPv4 frame"),
        }
    }
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> L4 {
    L4::Udp {
        sport,
        dport,
        payload: payload.to_vec(),
    }
}

fn tcp(sport: u16, dport: u16) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags: tcp_flags::ACK,
        seq: 1,
        payload: Vec::new(),
    }
}

fn raw(protocol: u8, payload: &[u8]) -> L4 {
    L4::Raw {
        protocol,
        payload: payload.to_vec(),
    }
}

/// The IPv4 header (with options) followed by the L4 bytes.
fn ipv4_packet(ip: &Ipv4, l4: &L4) -> Vec<u8> {
    let protocol = l4.protocol(false);
    let l4 = l4_bytes(l4, Some(&Pseudo::v4(ip.src, ip.dst, protocol)));
    let header_len = 20 + ip.options_len;
    let total_len = u16::try_from(header_len + l4.len()).expect("IPv4 packet over 65535 bytes");
    let ihl = ip.ihl_override.unwrap_or((header_len / 4) as u8);
    let mut flags: u16 = 0;
    if ip.dont_fragment {
        flags |= 0x4000;
    }
    if ip.more_fragments {
        flags |= 0x2000;
    }

    let mut h = Vec::with_capacity(header_len + l4.len());
    h.push(0x40 | ihl);
    h.push(0); // DSCP/ECN
    h.extend(total_len.to_be_bytes());
    h.extend((FRAGMENT_ID as u16).to_be_bytes());
    h.extend((flags | ip.frag_offset).to_be_bytes());
    h.push(ip.ttl);
    h.push(ip.protocol_override.unwrap_or(protocol));
    h.extend([0, 0]); // checksum, below
    h.extend(ip.src.octets());
    h.extend(ip.dst.octets());
    h.resize(header_len, 1); // options: NOPs
    let sum = checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend(l4);
    h
}

/// The IPv6 header, the extension headers in order, then the L4 bytes.
fn ipv6_packet(ip: &Ipv6, l4: &L4) -> Vec<u8> {
    let protocol = l4.protocol(true);
    // The routing header we write has segments left 0, so the pseudo-header's destination is
    // the IPv6 destination.
    let l4 = l4_bytes(l4, Some(&Pseudo::v6(ip.src, ip.dst, protocol)));
    let last = ip.protocol_override.unwrap_or(protocol);

    let mut exts = Vec::new();
    for (i, ext) in ip.exts.iter().enumerate() {
        let next = ip.exts.get(i + 1).map_or(last, Ext::header_number);
        exts.extend(ext.bytes(next));
    }
    let first = ip.exts.first().map_or(last, Ext::header_number);
    let payload_len = u16::try_from(exts.len() + l4.len()).expect("IPv6 payload over 65535 bytes");

    let mut h = Vec::with_capacity(40 + exts.len() + l4.len());
    h.extend(0x6000_0000u32.to_be_bytes()); // version 6, no traffic class, no flow label
    h.extend(payload_len.to_be_bytes());
    h.push(first);
    h.push(ip.hop_limit);
    h.extend(ip.src.octets());
    h.extend(ip.dst.octets());
    h.extend(exts);
    h.extend(l4);
    h
}

/// The pseudo-header that TCP, UDP and ICMPv6 checksums cover (without the length, which
/// depends on the segment).
struct Pseudo {
    addrs: Vec<u8>,
    protocol: u8,
    v6: bool,
}

impl Pseudo {
    fn v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8) -> Pseudo {
        Pseudo {
            addrs: [src.octets(), dst.octets()].concat(),
            protocol,
            v6: false,
        }
    }

    fn v6(src: Ipv6Addr, dst: Ipv6Addr, protocol: u8) -> Pseudo {
        Pseudo {
            addrs: [src.octets(), dst.octets()].concat(),
            protocol,
            v6: true,
        }
    }

    /// The pseudo-header for a segment of `len` bytes.
    fn bytes(&self, len: usize) -> Vec<u8> {
        let mut p = self.addrs.clone();
        if self.v6 {
            p.extend((len as u32).to_be_bytes());
            p.extend([0, 0, 0, self.protocol]);
        } else {
            p.extend([0, self.protocol]);
            p.extend((len as u16).to_be_bytes());
        }
        p
    }
}

/// The L4 header and payload, with its checksum filled in. `pseudo` is `None` outside IP.
fn l4_bytes(l4: &L4, pseudo: Option<&Pseudo>) -> Vec<u8> {
    let (mut segment, checksum_at) = match l4 {
        L4::Udp {
            sport,
            dport,
            payload,
        } => {
            let len = u16::try_from(8 + payload.len()).expect("UDP datagram over 65535 bytes");
            let mut s = Vec::with_capacity(8 + payload.len());
            s.extend(sport.to_be_bytes());
            s.extend(dport.to_be_bytes());
            s.extend(len.to_be_bytes());
            s.extend([0, 0]);
            s.extend(payload);
            (s, Some(6))
        }
        L4::Tcp {
            sport,
            dport,
            flags,
            seq,
            payload,
        } => {
            let mut s = Vec::with_capacity(20 + payload.len());
            s.extend(sport.to_be_bytes());
            s.extend(dport.to_be_bytes());
            s.extend(seq.to_be_bytes());
            let ack: u32 = if flags & tcp_flags::ACK != 0 { 1 } else { 0 };
            s.extend(ack.to_be_bytes());
            s.push(5 << 4); // data offset: 20 bytes, no options
            s.push(*flags);
            s.extend(64240u16.to_be_bytes()); // window
            s.extend([0, 0, 0, 0]); // checksum, urgent pointer
            s.extend(payload);
            (s, Some(16))
        }
        L4::Echo { payload } => {
            let v6 = pseudo.is_some_and(|p| p.v6);
            let kind = if v6 { 128 } else { 8 };
            let mut s = vec![kind, 0, 0, 0];
            s.extend(0x4754u16.to_be_bytes()); // identifier
            s.extend(1u16.to_be_bytes()); // sequence
            s.extend(payload);
            (s, Some(2))
        }
        L4::Raw { payload, .. } => (payload.clone(), None),
    };
    if let Some(at) = checksum_at {
        // ICMPv4 covers only its message; TCP, UDP and ICMPv6 also the pseudo-header.
        let covered = match (l4, pseudo) {
            (L4::Echo { .. }, Some(p)) if !p.v6 => segment.clone(),
            (_, Some(p)) => [p.bytes(segment.len()), segment.clone()].concat(),
            (_, None) => segment.clone(),
        };
        let mut sum = checksum(&covered);
        if sum == 0 && matches!(l4, L4::Udp { .. }) {
            sum = 0xffff; // 0 means "no checksum" in UDP
        }
        segment[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }
    segment
}

/// The Internet checksum (RFC 1071) of `data`: over a header that contains its own correct
/// checksum, this is 0.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `frame` cut to its first `len` bytes.
pub fn truncate(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}

/// ARP body (28 bytes) for Ethernet/IPv4: `op` 1 is a request, 2 a reply.
pub fn arp_payload(
    op: u16,
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut p = Vec::with_capacity(28);
    p.extend(1u16.to_be_bytes()); // hardware: Ethernet
    p.extend(ETH_P_IPV4.to_be_bytes());
    p.extend([6, 4]);
    p.extend(op.to_be_bytes());
    p.extend(sender_mac);
    p.extend(sender_ip.octets());
    p.extend(target_mac);
    p.extend(target_ip.octets());
    p
}

/// A whole ARP frame: a request (`op` 1) is broadcast, a reply goes to `target_mac`. For a
/// tagged one, use `Frame::ether(ETH_P_ARP, &arp_payload(..)).vlan(..)`.
pub fn arp(
    op: u16,
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let dst = if op == 1 { BROADCAST_MAC } else { target_mac };
    Frame::ether(
        ETH_P_ARP,
        &arp_payload(op, sender_mac, sender_ip, target_mac, target_ip),
    )
    .macs(dst, sender_mac)
    .build()
}

/// A broadcast "who has `target_ip`?" from `sender_mac`/`sender_ip`.
pub fn arp_request(sender_mac: [u8; 6], sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    arp(1, sender_mac, sender_ip, [0; 6], target_ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const B4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
    const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 2);

    fn be16(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    /// Checksum of an L4 segment together with its IPv4 pseudo-header: 0 when correct.
    fn verify_v4_l4(packet: &[u8]) -> u16 {
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        let segment = &packet[ihl..];
        let mut covered = packet[12..20].to_vec();
        covered.extend([0, packet[9]]);
        covered.extend((segment.len() as u16).to_be_bytes());
        covered.extend(segment);
        checksum(&covered)
    }

    #[test]
    fn checksum_matches_a_known_ipv4_header() {
        // The worked example from RFC 1071 folklore (Wikipedia, "IPv4 header checksum").
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&header), 0xb861);
        assert_eq!(checksum(&[0x01]), !0x0100);
    }

    #[test]
    fn udp4_layout_lengths_and_checksums() {
        let f = Frame::udp4(A4, B4, 40000, 443, b"hello").build();
        assert_eq!(f.len(), 14 + 20 + 8 + 5);
        assert_eq!(&f[0..6], &DEFAULT_DST_MAC);
        assert_eq!(&f[6..12], &DEFAULT_SRC_MAC);
        assert_eq!(be16(&f, 12), ETH_P_IPV4);
        let ip = &f[14..];
        assert_eq!(ip[0], 0x45);
        assert_eq!(usize::from(be16(ip, 2)), ip.len());
        assert_eq!(ip[9], proto::UDP);
        assert_eq!(&ip[12..16], &A4.octets());
        assert_eq!(&ip[16..20], &B4.octets());
        assert_eq!(checksum(&ip[..20]), 0);
        assert_eq!((be16(ip, 20), be16(ip, 22), be16(ip, 24)), (40000, 443, 13));
        assert_eq!(&ip[28..], b"hello");
        assert_ne!(be16(ip, 26), 0);
        assert_eq!(verify_v4_l4(ip), 0);
    }

    #[test]
    fn ipv4_options_fragments_and_forgeries() {
        let f = Frame::tcp4(A4, B4, 1, 80)
            .syn()
            .ipv4_options(8)
            .fragment(3, true)
            .dont_fragment()
            .build();
        let ip = &f[14..];
        assert_eq!(ip[0], 0x47, "IHL 7 with 8 option bytes");
        assert_eq!(checksum(&ip[..28]), 0);
        assert_eq!(usize::from(be16(ip, 2)), 28 + 20);
        assert_eq!(be16(ip, 6), 0x4000 | 0x2000 | 3);
        assert_eq!(ip[28 + 13], tcp_flags::SYN);
        assert_eq!(verify_v4_l4(ip), 0);

        let forged = Frame::udp4(A4, B4, 1, 53, b"")
            .ipv4_ihl(4)
            .ip_protocol(200)
            .build();
        assert_eq!(forged[14], 0x44);
        assert_eq!(forged[14 + 9], 200);
        assert_eq!(
            checksum(&forged[14..34]),
            0,
            "checksum covers the real 20 bytes"
        );
    }

    #[test]
    fn vlan_tags_sit_between_macs_and_ethertype() {
        let f = Frame::udp4(A4, B4, 1, 2, b"")
            .macs([1; 6], [2; 6])
            .vlan(TPID_8021AD, 100)
            .vlan(TPID_8021Q, 4094)
            .build();
        assert_eq!(&f[0..12], &[[1; 6], [2; 6]].concat()[..]);
        assert_eq!((be16(&f, 12), be16(&f, 14)), (TPID_8021AD, 100));
        assert_eq!((be16(&f, 16), be16(&f, 18)), (TPID_8021Q, 4094));
        assert_eq!(be16(&f, 20), ETH_P_IPV4);
        assert_eq!(f.len(), 22 + 20 + 8);
    }

    /// Walks an IPv6 header chain: the header numbers met, the L4 protocol and its offset.
    fn parse_chain(ip6: &[u8]) -> (Vec<u8>, u8, usize) {
        let mut next = ip6[6];
        let mut at = 40;
        let mut seen = Vec::new();
        for _ in 0..16 {
            let len = match next {
                proto::HOPOPTS | proto::ROUTING | proto::DSTOPTS => {
                    8 * (1 + usize::from(ip6[at + 1]))
                }
                proto::FRAGMENT => 8,
                proto::AH => 4 * (2 + usize::from(ip6[at + 1])),
                _ => return (seen, next, at),
            };
            seen.push(next);
            next = ip6[at];
            at += len;
        }
        panic!("header chain too long");
    }

    #[test]
    fn ipv6_extension_chain_parses_back() {
        let f = Frame::tcp6(A6, B6, 5555, 443)
            .syn()
            .ext(Ext::HopByHop)
            .ext(Ext::Routing)
            .ext(Ext::Fragment {
                offset: 0,
                more: true,
            })
            .ext(Ext::Ah)
            .ext(Ext::DestOpts)
            .ext(Ext::Sized {
                header: proto::DSTOPTS,
                hdr_ext_len: 3,
            })
            .build();
        assert_eq!(be16(&f, 12), ETH_P_IPV6);
        let ip6 = &f[14..];
        assert_eq!(ip6[0] >> 4, 6);
        let (seen, l4, at) = parse_chain(ip6);
        assert_eq!(
            seen,
            [
                proto::HOPOPTS,
                proto::ROUTING,
                proto::FRAGMENT,
                proto::AH,
                proto::DSTOPTS,
                proto::DSTOPTS
            ]
        );
        assert_eq!(l4, proto::TCP);
        assert_eq!(at, 40 + 8 + 8 + 8 + 24 + 8 + 32);
        assert_eq!(usize::from(be16(ip6, 4)), ip6.len() - 40);
        assert_eq!(ip6.len(), at + 20);
        // Fragment header: offset 0, M set.
        assert_eq!(be16(ip6, 40 + 16 + 2), 1);
        let tcp = &ip6[at..];
        assert_eq!(
            (be16(tcp, 0), be16(tcp, 2), tcp[13]),
            (5555, 443, tcp_flags::SYN)
        );

        // TCP checksum over the IPv6 pseudo-header.
        let mut covered = ip6[8..40].to_vec();
        covered.extend((tcp.len() as u32).to_be_bytes());
        covered.extend([0, 0, 0, proto::TCP]);
        covered.extend(tcp);
        assert_eq!(checksum(&covered), 0);
    }

    #[test]
    fn ipv6_fragment_helper_and_icmpv6() {
        let f = Frame::udp6(A6, B6, 1, 2, b"x").fragment(100, false).build();
        let ip6 = &f[14..];
        assert_eq!(ip6[6], proto::FRAGMENT);
        assert_eq!(ip6[40], proto::UDP);
        assert_eq!(be16(ip6, 42), 100 << 3);

        let echo = Frame::icmp6_echo(A6, B6).payload(b"ping").build();
        let ip6 = &echo[14..];
        assert_eq!(ip6[6], proto::ICMPV6);
        let msg = &ip6[40..];
        assert_eq!(msg[0], 128);
        let mut covered = ip6[8..40].to_vec();
        covered.extend((msg.len() as u32).to_be_bytes());
        covered.extend([0, 0, 0, proto::ICMPV6]);
        covered.extend(msg);
        assert_eq!(checksum(&covered), 0);

        let echo4 = Frame::icmp4_echo(A4, B4).build();
        assert_eq!(echo4[14 + 9], proto::ICMP);
        assert_eq!(checksum(&echo4[34..]), 0, "ICMPv4 covers only the message");
    }

    #[test]
    fn raw_protocols_and_mixed_family_helpers() {
        let f = Frame::ip4(A4, B4, proto::ICMP, &[8, 0, 0xf7, 0xff]).build();
        assert_eq!(&f[34..], &[8, 0, 0xf7, 0xff]);
        let f = Frame::ip6(A6, B6, proto::NONE, b"").build();
        assert_eq!((f[14 + 6], f.len()), (proto::NONE, 54));
        let f = Frame::tcp(A6.into(), B6.into(), 1, 2).build();
        assert_eq!(be16(&f, 12), ETH_P_IPV6);
        let f = Frame::udp(A4.into(), B4.into(), 1, 2, b"").build();
        assert_eq!(be16(&f, 12), ETH_P_IPV4);
    }

    #[test]
    #[should_panic(expected = "mixed address families")]
    fn mixed_families_are_refused() {
        Frame::udp(A4.into(), B6.into(), 1, 2, b"");
    }

    #[test]
    fn arp_padding_and_truncation() {
        let f = arp_request([2; 6], A4, B4);
        assert_eq!(f.len(), 42);
        assert_eq!(&f[0..6], &BROADCAST_MAC);
        assert_eq!(be16(&f, 12), ETH_P_ARP);
        assert_eq!(be16(&f, 14 + 6), 1);
        assert_eq!(&f[14 + 24..], &B4.octets());

        let padded = Frame::udp4(A4, B4, 1, 2, b"").pad_to(60).build();
        assert_eq!(padded.len(), 60);
        assert_eq!(be16(&padded, 16), 28, "IP total length excludes padding");

        let cut = Frame::udp4(A4, B4, 1, 2, b"payload").truncate(20).build();
        assert_eq!(cut.len(), 20);
        assert_eq!(truncate(cut, 14).len(), 14);
    }
}
