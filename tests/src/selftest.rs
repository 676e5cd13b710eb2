//! Real checks of the kernel-facing helpers: namespaces, veth, VLANs, raw frames, TCP/UDP.
//! Frames built by [`crate::frames`] are delivered by the real IPv4/IPv6 stack here, which
//! also proves their checksums and extension-header chains right.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::frames::{Ext, Frame, TPID_8021AD, TPID_8021Q};
use crate::kernel_tests_enabled;
use crate::netns::{NetNs, Side, VethLink, iface_stats, vlan_supported};
use crate::raw::RawSocket;
use crate::traffic::*;

const A4: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 1);
const B4: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 2);
const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 1, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 1, 0, 0, 0, 0, 2);
const WAIT: Duration = Duration::from_secs(3);

/// Two namespaces joined by a veth pair, addressed in IPv4 and IPv6.
fn pair(tag: &str) -> (NetNs, NetNs, VethLink) {
    let a = NetNs::new(&format!("{tag}a"));
    let b = NetNs::new(&format!("{tag}b"));
    let link = VethLink::new(&a, &b, tag);
    link.add_addr(Side::A, &format!("{A4}/24"));
    link.add_addr(Side::B, &format!("{B4}/24"));
    link.add_addr(Side::A, &format!("{A6}/64"));
    link.add_addr(Side::B, &format!("{B6}/64"));
    (a, b, link)
}

fn payloads(received: &[(SocketAddr, Vec<u8>)]) -> Vec<&[u8]> {
    received.iter().map(|(_, p)| p.as_slice()).collect()
}

#[test]
fn udp_crosses_the_veth_in_both_families() {
    if !kernel_tests_enabled("udp_crosses_the_veth_in_both_families") {
        return;
    }
    let (a, b, link) = pair("udp");
    assert!(link.a.name.len() <= 15 && link.b.name.len() <= 15);
    assert_ne!(link.a.mac, link.b.mac);
    assert!(link.a.ifindex > 0 && link.b.ifindex > 0);

    for (src, dst) in [(A4.into(), B4.into()), (A6.into(), B6.into())] {
        let receiver = udp_receiver(&b, SocketAddr::new(dst, 5000));
        let from = SocketAddr::new(src, 40000);
        let (_, _, rx_before, _) = iface_stats(&b, &link.b.name);
        for payload in [&b"one"[..], b"two", b"END"] {
            udp_send_from(&a, from, receiver.local_addr().unwrap(), payload);
        }
        let got = recv_until_sentinel(&receiver, b"END", WAIT);
        assert_eq!(payloads(&got), [b"one", b"two"]);
        assert!(got.iter().all(|(addr, _)| *addr == from), "{got:?}");
        let (_, _, rx_after, _) = iface_stats(&b, &link.b.name);
        assert!(rx_after >= rx_before + 3, "{rx_before} -> {rx_after}");
    }
}

#[test]
fn raw_frames_are_delivered_by_the_real_stack() {
    if !kernel_tests_enabled("raw_frames_are_delivered_by_the_real_stack") {
        return;
    }
    let (a, b, link) = pair("raw");
    let v4 = udp_receiver(&b, SocketAddr::new(B4.into(), 5001));
    let v6 = udp_receiver(&b, SocketAddr::new(B6.into(), 5001));
    let raw = RawSocket::open_in(&a, &link.a.name);
    let macs = |f: Frame| f.macs(link.b.mac, link.a.mac).build();

    raw.send(&macs(Frame::udp4(A4, B4, 1111, 5001, b"plain4")));
    raw.send(&macs(
        Frame::udp4(A4, B4, 1111, 5001, b"options4")
            .ipv4_options(12)
            .pad_to(60),
    ));
    // A wrong UDP checksum is dropped by B's stack: delivery above proves the checksums.
    let mut corrupt = macs(Frame::udp4(A4, B4, 1111, 5001, b"corrupt"));
    let checksum_at = corrupt.len() - b"corrupt".len() - 2;
    corrupt[checksum_at] ^= 0xff;
    raw.send(&corrupt);
    raw.send(&macs(Frame::udp4(A4, B4, 1111, 5001, b"END")));
    let got = recv_until_sentinel(&v4, b"END", WAIT);
    assert_eq!(payloads(&got), [&b"plain4"[..], b"options4"]);
    assert_eq!(got[0].0, SocketAddr::new(A4.into(), 1111));

    // The neighbour entry for A6 is learnt from nothing here: B answers through ND, which
    // needs no reply for UDP delivery. Hop-by-hop, routing (segments left 0), destination
    // options and an atomic fragment header are all accepted by Linux.
    raw.send(&macs(Frame::udp6(A6, B6, 2222, 5001, b"plain6")));
    raw.send(&macs(
        Frame::udp6(A6, B6, 2222, 5001, b"chain6")
            .ext(Ext::HopByHop)
            .ext(Ext::Routing)
            .ext(Ext::DestOpts)
            .ext(Ext::Fragment {
                offset: 0,
                more: false,
            }),
    ));
    raw.send(&macs(Frame::udp6(A6, B6, 2222, 5001, b"END")));
    let got = recv_until_sentinel(&v6, b"END", WAIT);
    assert_eq!(payloads(&got), [&b"plain6"[..], b"chain6"]);
}

#[test]
fn tagged_frames_go_out_raw() {
    if !kernel_tests_enabled("tagged_frames_go_out_raw") {
        return;
    }
    let (a, b, link) = pair("tag");
    link.set_tx_vlan_offload_off(Side::A);
    let raw = RawSocket::open_in(&a, &link.a.name);
    let frame = |payload: &[u8]| Frame::udp4(A4, B4, 7, 6000, payload).macs(link.b.mac, link.a.mac);
    let (_, _, rx_before, rx_bytes_before) = iface_stats(&b, &link.b.name);
    let tagged = [
        frame(b"q100").vlan(TPID_8021Q, 100).build(),
        frame(b"qinq")
            .vlan(TPID_8021AD, 300)
            .vlan(TPID_8021Q, 400)
            .build(),
    ];
    for f in &tagged {
        raw.send(f);
    }
    // The frames reach B's device (what XDP sees); without a VLAN interface for their tags,
    // B's stack does not deliver them further.
    let (_, _, rx_after, rx_bytes_after) = iface_stats(&b, &link.b.name);
    assert!(rx_after >= rx_before + 2, "{rx_before} -> {rx_after}");
    assert!(rx_bytes_after >= rx_bytes_before + (tagged[0].len() + tagged[1].len()) as u64);
}

#[test]
fn vlan_interfaces_when_the_kernel_has_them() {
    if !kernel_tests_enabled("vlan_interfaces_when_the_kernel_has_them") {
        return;
    }
    if !vlan_supported() {
        eprintln!("skipping the VLAN interface check: the kernel has no CONFIG_VLAN_8021Q");
        return;
    }
    let (a, b, link) = pair("vlan");
    // 802.1Q VLAN 100 on both ends; QinQ (802.1ad 300 outside, 802.1Q 400 inside) on B.
    let a100 = link.add_vlan(Side::A, 100);
    let b100 = link.add_vlan(Side::B, 100);
    let b300 = link.add_vlan_proto(Side::B, 300, "802.1ad");
    let b300_400 = link.add_vlan_on(Side::B, &b300, 400, "802.1Q");
    assert!(b300_400.len() <= 15, "{b300_400}");
    link.add_addr_on(Side::A, &a100, "10.201.1.1/24");
    link.add_addr_on(Side::B, &b100, "10.201.1.2/24");
    link.add_addr_on(Side::B, &b300_400, "10.202.1.2/24");
    link.set_tx_vlan_offload_off(Side::A);

    let on_100 = udp_receiver(&b, "10.201.1.2:6000".parse().unwrap());
    udp_send_from(
        &a,
        "10.201.1.1:6001".parse().unwrap(),
        on_100.local_addr().unwrap(),
        b"END",
    );
    assert!(recv_until_sentinel(&on_100, b"END", WAIT).is_empty());

    let raw = RawSocket::open_in(&a, &link.a.name);
    let dst400 = Ipv4Addr::new(10, 202, 1, 2);
    let on_400 = udp_receiver(&b, SocketAddr::new(dst400.into(), 6000));
    let qinq = |payload: &[u8]| {
        Frame::udp4(Ipv4Addr::new(10, 202, 1, 1), dst400, 7, 6000, payload)
            .vlan(TPID_8021AD, 300)
            .vlan(TPID_8021Q, 400)
            .macs(link.b.mac, link.a.mac)
            .build()
    };
    raw.send(&qinq(b"qinq"));
    raw.send(&qinq(b"END"));
    assert_eq!(
        payloads(&recv_until_sentinel(&on_400, b"END", WAIT)),
        [b"qinq"]
    );
}

#[test]
fn tcp_connects_and_counts_unanswered_syns() {
    if !kernel_tests_enabled("tcp_connects_and_counts_unanswered_syns") {
        return;
    }
    let (a, b, link) = pair("tcp");
    let listener = tcp_listener(&b, SocketAddr::new(B6.into(), 7000));
    let stream = tcp_connect_from(
        &a,
        SocketAddr::new(A6.into(), 0),
        listener.local_addr().unwrap(),
        WAIT,
    )
    .expect("connecting to a listener");
    assert_eq!(tcp_syn_count(&stream), 1);
    let accepted = accept_timeout(&listener, WAIT).expect("a pending connection");
    assert_eq!(accepted.peer_addr().unwrap(), stream.local_addr().unwrap());

    // Nothing listens on 7001: the peer answers with a RST.
    let refused = tcp_connect_from(&a, SocketAddr::new(A4.into(), 0), (B4, 7001).into(), WAIT);
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );

    // 10.200.1.9 resolves to B's MAC, but B does not own it: SYNs go out and nobody answers.
    a.ip(&[
        "neigh",
        "add",
        "10.200.1.9",
        "lladdr",
        &mac_text(link.b.mac),
        "dev",
        &link.a.name,
        "nud",
        "permanent",
    ]);
    let attempt = tcp_connect_attempt(
        &a,
        SocketAddr::new(A4.into(), 0),
        (Ipv4Addr::new(10, 200, 1, 9), 7000).into(),
        Duration::from_millis(1500),
    );
    assert_eq!(
        attempt.result.as_ref().unwrap_err().kind(),
        std::io::ErrorKind::TimedOut
    );
    // The first SYN at 0 s, the first retransmission after 1 s.
    assert_eq!(attempt.syns_sent(), 2);
    assert!(accept_timeout(&listener, Duration::from_millis(10)).is_none());
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}
