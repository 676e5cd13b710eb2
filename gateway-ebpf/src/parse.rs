//! Header parsing. Every read is bounds-checked against `data_end`. Loops have fixed bounds
//! for the verifier, and hitting a bound is an explicit outcome, never a guess.
//!
//! Up to the IP header, a read past the end of the frame is `Err(PassedMalformed)`: without a
//! whole IP header the source cannot be trusted. Past it, a short transport header is still
//! judged (RFC 1858, tiny fragments): by its port when the port can be read, else by the
//! source alone ([`L4::Hidden`]). Passing it unjudged would let a denied source through by
//! splitting its TCP header.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use gateway_common::Reason;

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// 802.1ad outer tag plus 802.1Q inner tag.
const MAX_VLAN_TAGS: usize = 2;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
const IPV6_MORE_FRAGMENTS: u16 = 0x0001;
/// Extension headers walked before giving up (RFC 8200 expects at most a handful).
const MAX_IPV6_EXT_HEADERS: usize = 8;
/// No real header chain reaches this far; a bound the verifier can see.
const MAX_L4_OFFSET: usize = 1024;

#[derive(Clone, Copy)]
pub enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Source {
    /// One key for both families: IPv4 as the IPv4-mapped IPv6 address `::ffff:a.b.c.d`.
    #[inline(always)]
    pub fn key(&self) -> [u8; 16] {
        match self {
            Source::V4([a, b, c, d]) => [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, *a, *b, *c, *d],
            Source::V6(addr) => *addr,
        }
    }
}

/// An IP packet: its source, and where its next header starts.
pub struct Packet {
    pub source: Source,
    /// IPv4 protocol or IPv6 next header.
    next_header: u8,
    /// Offset of the header after the fixed IP header (IPv4: after options).
    offset: usize,
    /// IPv4 non-first fragment: no L4 header here.
    later_fragment: bool,
    /// IPv4 first fragment (MF set, offset 0).
    first_fragment: bool,
}

/// The destination as far as port protection and SYN limits care.
///
/// `syn` is also true when the flags cannot be trusted: cut off, or in a first fragment
/// (Ethernet padding may stand in for them, and the kernel reassembles what the real ones
/// say). A fragmented SYN is never legitimate, so it costs nothing to charge one as a SYN,
/// and splitting a header never evades the SYN budget.
#[derive(Clone, Copy)]
pub enum L4 {
    Tcp {
        port: u16,
        syn: bool,
    },
    Udp(u16),
    /// Neither TCP nor UDP (ICMP, ESP, ...).
    Other,
    /// TCP or UDP whose destination port cannot be read: cut short before it, or behind an
    /// IPv6 extension header chain that is truncated or too long to walk. Not provably
    /// unprotected, so the source alone decides. `syn`: it may be a TCP SYN.
    Hidden {
        syn: bool,
    },
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, Reason> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return Err(Reason::PassedMalformed);
    }
    // SAFETY: bounds-checked above; packet data has no alignment guarantee.
    Ok(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}

#[inline(always)]
fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

/// Ethernet (up to two VLAN tags) and the IPv4 or IPv6 header.
#[inline(always)]
pub fn ip(ctx: &XdpContext) -> Result<Packet, Reason> {
    let mut ethertype = be16(read(ctx, 12)?);
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // The tag is 2 bytes of TCI, then the encapsulated ethertype.
        ethertype = be16(read(ctx, offset + 2)?);
        offset += 4;
    }
    match ethertype {
        ETH_P_IPV4 => ipv4(ctx, offset),
        ETH_P_IPV6 => ipv6(ctx, offset),
        ETH_P_8021Q | ETH_P_8021AD => Err(Reason::PassedMalformed),
        _ => Err(Reason::PassedNotIp),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, offset: usize) -> Result<Packet, Reason> {
    let header: [u8; 20] = read(ctx, offset)?;
    let header_len = usize::from(header[0] & 0x0f) * 4;
    // The frame must hold the options IHL claims, or the source is not to be trusted.
    if header[0] >> 4 != 4 || header_len < 20 || ctx.data() + offset + header_len > ctx.data_end() {
        return Err(Reason::PassedMalformed);
    }
    let flags = be16([header[6], header[7]]);
    let fragment_offset = flags & 0x1fff;
    Ok(Packet {
        source: Source::V4([header[12], header[13], header[14], header[15]]),
        next_header: header[9],
        offset: offset + header_len,
        later_fragment: fragment_offset != 0,
        first_fragment: fragment_offset == 0 && flags & IPV4_MORE_FRAGMENTS != 0,
    })
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, offset: usize) -> Result<Packet, Reason> {
    let header: [u8; 40] = read(ctx, offset)?;
    if header[0] >> 4 != 6 {
        return Err(Reason::PassedMalformed);
    }
    let mut source = [0u8; 16];
    source.copy_from_slice(&header[8..24]);
    Ok(Packet {
        source: Source::V6(source),
        next_header: header[6],
        offset: offset + 40,
        later_fragment: false,
        first_fragment: false,
    })
}

/// The transport header: walks IPv6 extension headers, reads TCP/UDP destination ports and
/// the TCP SYN flag. Only called when ports or rates need it, so others never pay for it.
/// `Err` only for a non-first fragment, which carries no transport header.
#[inline(always)]
pub fn l4(ctx: &XdpContext, packet: &Packet) -> Result<L4, Reason> {
    if packet.later_fragment {
        return Err(Reason::PassedFragment);
    }
    let mut next = packet.next_header;
    let mut offset = packet.offset;
    let mut first_fragment = packet.first_fragment;
    // One pass per extension header, plus the final transport header.
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        if offset > MAX_L4_OFFSET {
            break;
        }
        match next {
            IPPROTO_TCP => return Ok(tcp(ctx, offset, first_fragment)),
            IPPROTO_UDP => {
                return Ok(match read::<[u8; 4]>(ctx, offset) {
                    Ok(ports) => L4::Udp(be16([ports[2], ports[3]])),
                    Err(_) => L4::Hidden { syn: false },
                });
            }
            // Extension headers only follow IPv6; in IPv4 these numbers are other protocols.
            _ if matches!(packet.source, Source::V4(_)) => return Ok(L4::Other),
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Ok(header) = read::<[u8; 2]>(ctx, offset) else {
                    break;
                };
                next = header[0];
                offset += (usize::from(header[1]) + 1) * 8;
            }
            IPPROTO_AH => {
                let Ok(header) = read::<[u8; 2]>(ctx, offset) else {
                    break;
                };
                next = header[0];
                offset += (usize::from(header[1]) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let Ok(header) = read::<[u8; 4]>(ctx, offset) else {
                    break;
                };
                let field = be16([header[2], header[3]]);
                if field & 0xfff8 != 0 {
                    return Err(Reason::PassedFragment);
                }
                first_fragment |= field & IPV6_MORE_FRAGMENTS != 0;
                next = header[0];
                offset += 8;
            }
            _ => return Ok(L4::Other),
        }
    }
    // The chain is cut short or longer than the bound: whatever follows may be TCP or UDP.
    Ok(L4::Hidden { syn: true })
}

/// A TCP header from `offset`: the full fixed header normally, the ports alone when it is cut
/// short (the flags are then unknown and count as a SYN).
#[inline(always)]
fn tcp(ctx: &XdpContext, offset: usize, first_fragment: bool) -> L4 {
    // Ports, sequence and acknowledgement numbers, offset, then the flags byte.
    if let Ok(header) = read::<[u8; 14]>(ctx, offset) {
        return L4::Tcp {
            port: be16([header[2], header[3]]),
            syn: first_fragment || header[13] & (TCP_SYN | TCP_ACK) == TCP_SYN,
        };
    }
    match read::<[u8; 4]>(ctx, offset) {
        Ok(ports) => L4::Tcp {
            port: be16([ports[2], ports[3]]),
            syn: true,
        },
        Err(_) => L4::Hidden { syn: true },
    }
}
