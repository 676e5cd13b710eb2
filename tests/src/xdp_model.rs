//! A model of the XDP program's verdict in plain Rust: parse (Ethernet, VLAN tags, IPv4/IPv6,
//! the extension header walk, TCP/UDP ports) and classify (protected ports, bans, the most
//! specific rule, the policy), written from the rules the program documents rather than from
//! its code. Rate limits and under-attack mode are left out: they depend on time.
//!
//! The fuzz target `xdp` (`cargo xtask fuzz xdp`) compares it with the real program on random
//! and mutated frames; `xdp_verdicts.rs` compares them on its tables.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gateway_common::Reason;
use ipnet::IpNet;

/// What the program is loaded with, as the model sees it; [`Model::firewall_toml`] renders the
/// same thing as a `[firewall]` section for the real program.
#[derive(Clone, Debug)]
pub struct Model {
    pub allow_list: bool,
    /// `(tcp, port)` pairs subject to policy; empty means every packet is.
    pub protected: Vec<(bool, u16)>,
    pub deny: Vec<IpNet>,
    pub allow: Vec<IpNet>,
    /// Permanent bans.
    pub bans: Vec<IpNet>,
}

/// Bounds the program walks within (parse.rs): a verifier needs them, the model must agree.
const MAX_VLAN_TAGS: usize = 2;
const MAX_IPV6_EXT_HEADERS: usize = 8;
const MAX_L4_OFFSET: usize = 1024;

/// Where the transport header leads, as far as port protection cares.
enum Destination {
    Port {
        tcp: bool,
        port: u16,
    },
    /// Not TCP or UDP: never protected.
    Other,
    /// TCP or UDP whose port cannot be read: the source alone decides.
    Hidden,
}

struct Packet {
    source: IpAddr,
    next_header: u8,
    /// Where the header after the IP header starts, from the start of the frame.
    offset: usize,
    later_fragment: bool,
}

impl Model {
    /// The reason the program counts `frame` under.
    pub fn verdict(&self, frame: &[u8]) -> Reason {
        match self.decide(frame) {
            Ok(reason) | Err(reason) => reason,
        }
    }

    fn decide(&self, frame: &[u8]) -> Result<Reason, Reason> {
        let packet = ip(frame)?;
        if !self.protected.is_empty() {
            match destination(frame, &packet)? {
                Destination::Port { tcp, port } if !self.protected.contains(&(tcp, port)) => {
                    return Ok(Reason::PassedUnprotected);
                }
                Destination::Other => return Ok(Reason::PassedUnprotected),
                Destination::Port { .. } | Destination::Hidden => {}
            }
        }
        let source = packet.source;
        if self.bans.iter().any(|net| net.contains(&source)) {
            return Ok(Reason::DroppedBanned);
        }
        let most_specific = |nets: &[IpNet]| {
            nets.iter()
                .filter(|net| net.contains(&source))
                .map(IpNet::prefix_len)
                .max()
        };
        Ok(
            match (most_specific(&self.deny), most_specific(&self.allow)) {
                (Some(deny), Some(allow)) if deny > allow => Reason::DroppedDeny,
                (Some(_), None) => Reason::DroppedDeny,
                (_, Some(_)) => Reason::Passed,
                (None, None) if self.allow_list => Reason::DroppedNotAllowed,
                (None, None) => Reason::Passed,
            },
        )
    }

    /// The same rules as a `[firewall]` section body (bans are set through the API).
    pub fn firewall_toml(&self) -> String {
        let list = |nets: &[IpNet]| {
            let quoted: Vec<String> = nets.iter().map(|net| format!("\"{net}\"")).collect();
            quoted.join(", ")
        };
        let ports: Vec<String> = self
            .protected
            .iter()
            .map(|(tcp, port)| format!("\"{port}/{}\"", if *tcp { "tcp" } else { "udp" }))
            .collect();
        let policy = if self.allow_list {
            "allow-list"
        } else {
            "deny-list"
        };
        format!(
            "policy = \"{policy}\"\nprotected_ports = [{}]\ndeny = [{}]\nallow = [{}]\n",
            ports.join(", "),
            list(&self.deny),
            list(&self.allow)
        )
    }
}

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    let bytes = frame.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

/// Ethernet, up to two VLAN tags, and a whole IPv4 (options included) or IPv6 header.
fn ip(frame: &[u8]) -> Result<Packet, Reason> {
    let malformed = Reason::PassedMalformed;
    let mut ethertype = be16(frame, 12).ok_or(malformed)?;
    let mut at = 14;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        ethertype = be16(frame, at + 2).ok_or(malformed)?;
        at += 4;
    }
    match ethertype {
        0x0800 => {
            let header = frame.get(at..at + 20).ok_or(malformed)?;
            let header_len = usize::from(header[0] & 0x0f) * 4;
            if header[0] >> 4 != 4 || header_len < 20 || frame.len() < at + header_len {
                return Err(malformed);
            }
            let octets: [u8; 4] = header[12..16].try_into().expect("4 bytes");
            Ok(Packet {
                source: IpAddr::V4(Ipv4Addr::from(octets)),
                next_header: header[9],
                offset: at + header_len,
                later_fragment: u16::from_be_bytes([header[6], header[7]]) & 0x1fff != 0,
            })
        }
        0x86dd => {
            let header = frame.get(at..at + 40).ok_or(malformed)?;
            if header[0] >> 4 != 6 {
                return Err(malformed);
            }
            let octets: [u8; 16] = header[8..24].try_into().expect("16 bytes");
            Ok(Packet {
                source: IpAddr::V6(Ipv6Addr::from(octets)),
                next_header: header[6],
                offset: at + 40,
                later_fragment: false,
            })
        }
        0x8100 | 0x88a8 => Err(malformed),
        _ => Err(Reason::PassedNotIp),
    }
}

/// The destination port, past IPv6 extension headers. `Err(PassedFragment)`: a non-first
/// fragment, which has no transport header.
fn destination(frame: &[u8], packet: &Packet) -> Result<Destination, Reason> {
    if packet.later_fragment {
        return Err(Reason::PassedFragment);
    }
    let port = |at: usize, tcp: bool| match be16(frame, at + 2) {
        Some(port) => Destination::Port { tcp, port },
        None => Destination::Hidden,
    };
    let (mut next, mut at) = (packet.next_header, packet.offset);
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        if at > MAX_L4_OFFSET {
            break;
        }
        let length = match next {
            6 => return Ok(port(at, true)),
            17 => return Ok(port(at, false)),
            _ if packet.source.is_ipv4() => return Ok(Destination::Other),
            // Hop-by-hop, routing, destination options: 8-byte units beyond the first 8.
            0 | 43 | 60 => frame.get(at + 1).map(|&len| (usize::from(len) + 1) * 8),
            // AH: 4-byte units, minus 2.
            51 => frame.get(at + 1).map(|&len| (usize::from(len) + 2) * 4),
            44 => match be16(frame, at + 2) {
                Some(field) if field & 0xfff8 != 0 => return Err(Reason::PassedFragment),
                Some(_) => Some(8),
                None => None,
            },
            _ => return Ok(Destination::Other),
        };
        let Some(length) = length else {
            break;
        };
        next = frame[at];
        at += length;
    }
    Ok(Destination::Hidden)
}

impl Model {
    /// Rules for comparing the model with the program: the documentation prefixes the verdict
    /// tests use, plus wide ones so that random sources land in every class (banned, denied,
    /// an allow carved out of a deny, unknown). Three policies: deny-list and allow-list on
    /// some ports, and deny-list on every packet.
    pub fn examples() -> Vec<Model> {
        let nets = |list: &[&str]| -> Vec<IpNet> {
            list.iter()
                .map(|net| net.parse().expect("a valid network"))
                .collect()
        };
        let ports = vec![(true, 80), (true, 443), (false, 443), (false, 53)];
        let base = Model {
            allow_list: false,
            protected: ports,
            deny: nets(&[
                "203.0.113.0/24",
                "2001:db8:bad::/48",
                "128.0.0.0/2",
                "8000::/2",
            ]),
            allow: nets(&[
                "203.0.113.10/32",
                "2001:db8:bad:1::/64",
                "160.0.0.0/4",
                "a000::/4",
            ]),
            bans: nets(&[
                "198.51.100.7/32",
                "2001:db8:600d:2::/64",
                "64.0.0.0/3",
                "4000::/3",
            ]),
        };
        let allow_list = Model {
            allow_list: true,
            ..base.clone()
        };
        let every_port = Model {
            protected: Vec::new(),
            ..base.clone()
        };
        vec![base, allow_list, every_port]
    }
}
