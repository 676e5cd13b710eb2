//! Types shared by the XDP program and the daemon: map names, map keys and values, verdict
//! reasons and the counter layout. Everything here is `#[repr(C)]` with explicit padding, so
//! both sides agree on every byte.
#![no_std]

/// Names of the maps in the eBPF object, as the daemon looks them up.
pub mod maps {
    /// `LpmTrie<[u8; 4], Rule>`: IPv4 source CIDR rules.
    pub const RULES_V4: &str = "RULES_V4";
    /// `LpmTrie<[u8; 16], Rule>`: IPv6 source CIDR rules.
    pub const RULES_V6: &str = "RULES_V6";
    /// `Array<u8>` of 65536 entries: per destination port, which protocols are protected
    /// (`PORT_TCP | PORT_UDP`).
    pub const PORTS: &str = "PORTS";
    /// `Array<Settings>` with one entry.
    pub const SETTINGS: &str = "SETTINGS";
    /// `PerCpuArray<Counter>` indexed by [`crate::Reason`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Interface index -> its block of counters (see [`super::INTERFACE_BLOCKS`]); an array.
    pub const INTERFACES: &str = "INTERFACES";
    /// `LpmTrie<[u8; 4], u64>`: banned IPv4 sources (or prefixes) -> expiry.
    pub const BANS_V4: &str = "BANS_V4";
    /// `LpmTrie<[u8; 16], u64>`: banned IPv6 sources (or prefixes) -> expiry.
    pub const BANS_V6: &str = "BANS_V6";
    /// `LpmTrie<[u8; 4], u32>`: IPv4 prefix -> rate class (index into `RATE_CLASSES`).
    pub const RATE_PREFIXES_V4: &str = "RATE_PREFIXES_V4";
    /// `LpmTrie<[u8; 16], u32>`: IPv6 prefix -> rate class.
    pub const RATE_PREFIXES_V6: &str = "RATE_PREFIXES_V6";
    /// `Array<RateClass>` of [`crate::RATE_CLASS_SLOTS`]; class 0 is the default.
    pub const RATE_CLASSES: &str = "RATE_CLASSES";
    /// `LruHashMap<[u8; 16], Bucket>`: per-source rate state (IPv4 as `::ffff:a.b.c.d`).
    pub const RATE_STATE: &str = "RATE_STATE";
    /// `LruHashMap<[u8; 16], u64>`: sampled packets dropped per source, for "top sources"
    /// (one in [`crate::DROP_SAMPLE_ONE_IN`]; the daemon scales the counts back).
    pub const DROPS_BY_SOURCE: &str = "DROPS_BY_SOURCE";
    /// `PerCpuArray<u64>`: packets matched per rule id (`Rule::id`).
    pub const RULE_HITS: &str = "RULE_HITS";
    /// `LruHashMap<[u8; 16], u64>`: known-good sources (IPv4 as `::ffff:a.b.c.d`) -> expiry
    /// (ns, `bpf_ktime_get_ns` clock). Admitted under attack.
    pub const KNOWN_GOOD: &str = "KNOWN_GOOD";
    /// `Array<NewSourceBudget>` with one entry: how many unknown sources are admitted per
    /// second under attack.
    pub const NEW_SOURCES: &str = "NEW_SOURCES";
}

/// Name of the XDP program in the eBPF object.
pub const PROGRAM_NAME: &str = "gateway_xdp";

/// Why the XDP program passed or dropped a packet; the index into the counters map.
///
/// The numbering is part of the map layout: append new reasons, never renumber.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Checked against the rules and let through (allowed, or not denied).
    Passed = 0,
    /// Not subject to policy: the destination port or protocol is not protected.
    PassedUnprotected = 1,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    PassedNotIp = 2,
    /// Truncated or inconsistent Ethernet or IP headers (a frame shorter than its IPv4 IHL,
    /// too many VLAN tags): the source cannot be trusted. Passed so the kernel's own checks
    /// decide; never a wrong drop. A short or hidden transport header is not this: it is
    /// judged by its port if readable, else by its source alone.
    PassedMalformed = 3,
    /// A non-first fragment while only some ports are protected: it carries no ports, and
    /// its first fragment was already judged.
    PassedFragment = 4,
    /// The most specific matching rule denies the source.
    DroppedDeny = 5,
    /// Allow-list policy and no allow rule matches the source.
    DroppedNotAllowed = 6,
    /// The source is banned (and the ban has not expired).
    DroppedBanned = 7,
    /// Over the source's packet or byte rate.
    DroppedRateLimited = 8,
    /// A TCP SYN over the source's SYN rate.
    DroppedSynRateLimited = 9,
    /// Under-attack mode: the source is not known-good and the new-source budget is spent.
    DroppedUnderAttack = 10,
}

impl Reason {
    /// Every reason, in counter order.
    pub const ALL: [Reason; 11] = [
        Reason::Passed,
        Reason::PassedUnprotected,
        Reason::PassedNotIp,
        Reason::PassedMalformed,
        Reason::PassedFragment,
        Reason::DroppedDeny,
        Reason::DroppedNotAllowed,
        Reason::DroppedBanned,
        Reason::DroppedRateLimited,
        Reason::DroppedSynRateLimited,
        Reason::DroppedUnderAttack,
    ];

    /// Stable name used in the CLI, JSON and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Passed => "passed",
            Reason::PassedUnprotected => "passed-unprotected",
            Reason::PassedNotIp => "passed-not-ip",
            Reason::PassedMalformed => "passed-malformed",
            Reason::PassedFragment => "passed-fragment",
            Reason::DroppedDeny => "dropped-deny",
            Reason::DroppedNotAllowed => "dropped-not-allowed",
            Reason::DroppedBanned => "dropped-banned",
            Reason::DroppedRateLimited => "dropped-rate-limited",
            Reason::DroppedSynRateLimited => "dropped-syn-rate-limited",
            Reason::DroppedUnderAttack => "dropped-under-attack",
        }
    }

    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::DroppedDeny
                | Reason::DroppedNotAllowed
                | Reason::DroppedBanned
                | Reason::DroppedRateLimited
                | Reason::DroppedSynRateLimited
                | Reason::DroppedUnderAttack
        )
    }
}

/// Size of the counters map. Larger than `Reason::ALL` so later reasons fit without
/// changing the map's shape.
pub const COUNTER_SLOTS: u32 = 32;

/// XDP records one dropped packet in this many, drawn at random, in `DROPS_BY_SOURCE`; the
/// daemon multiplies the counts back. A source with n drops then reads
/// N * Binomial(n, 1/N), a relative standard error of sqrt((N - 1) / n): within 4 standard
/// errors, +-15.5% at 10,000 drops, +-4.9% at 100,000, +-1.6% at 1,000,000. The reason
/// counters and per-rule hits stay exact. A power of two (the program masks a random number).
pub const DROP_SAMPLE_ONE_IN: u32 = 16;
const _: () = assert!(DROP_SAMPLE_ONE_IN.is_power_of_two());

/// `COUNTERS` holds one block of `COUNTER_SLOTS` per attached interface (blocks 1 and up,
/// given out by the daemon at attach) and block 0 for frames from any other interface (e.g.
/// `BPF_PROG_TEST_RUN`), so every verdict is counted per interface as well as in total.
pub const INTERFACE_BLOCKS: u32 = 17;

/// `INTERFACES` is an array indexed by interface index (an array lookup is inlined by the
/// verifier, a hash lookup is a call); interfaces with a higher index count in block 0.
pub const INTERFACE_INDEXES: u32 = 4096;

/// Packets and bytes seen for one reason on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// What a matching CIDR rule does. The most specific matching prefix wins.
pub const ACTION_ALLOW: u8 = 1;
pub const ACTION_DENY: u8 = 2;
/// A dry-run deny: counted in `RULE_HITS`, while `Rule::fallback` decides.
pub const ACTION_SHADOW: u8 = 3;
/// `Rule::fallback` when no enclosing rule decides: the policy does.
pub const ACTION_POLICY: u8 = 0;

/// Value of a CIDR rule in the LPM tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `ACTION_ALLOW`, `ACTION_DENY` or `ACTION_SHADOW`.
    pub action: u8,
    /// For a shadow rule: what decides instead (the enclosing rule's action, or
    /// `ACTION_POLICY`), computed by the daemon.
    pub fallback: u8,
    pub _pad: [u8; 2],
    /// The daemon's identifier for the rule (for per-rule statistics).
    pub id: u32,
}

/// Policy for sources that match no rule.
pub const POLICY_DENY_LIST: u8 = 0;
pub const POLICY_ALLOW_LIST: u8 = 1;

/// Protocol bits in the `PORTS` map.
pub const PORT_TCP: u8 = 1;
pub const PORT_UDP: u8 = 2;
/// Entries in the `PORTS` map: one per port number.
pub const PORT_SLOTS: u32 = 65536;

/// Program-wide settings, the single entry of the `SETTINGS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `POLICY_DENY_LIST` or `POLICY_ALLOW_LIST`.
    pub policy: u8,
    /// 0: every packet is subject to policy. 1: only TCP/UDP to ports marked in `PORTS`.
    pub port_filter: u8,
    /// 1: per-source rate limits apply (see `RATE_CLASSES`).
    pub rate_limit: u8,
    /// 1: the ban tries may hold entries. 0 spares every packet the ban lookup.
    pub bans: u8,
    /// Bumped by the daemon when rate classes change, so sources are classified again.
    pub rate_generation: u32,
    /// 1: under-attack mode: only known-good sources and the new-source budget pass.
    pub under_attack: u8,
    pub _pad: [u8; 3],
}

/// The new-source budget under attack, GCRA as [`RateClass`]: each unknown source admitted
/// advances `tat` by `interval_ns`, while it stays within `burst_ns` of now. An admitted
/// source is known-good for `probation_ns`, to finish its handshake and prove itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewSourceBudget {
    pub tat: u64,
    /// 1e9 / new sources per second; 0 admits none.
    pub interval_ns: u64,
    pub burst_ns: u64,
    pub probation_ns: u64,
}

/// Rate classes: 0 is the default, the others are named by `RATE_PREFIXES_*`.
pub const RATE_CLASS_SLOTS: u32 = 64;

/// Limits of one rate class, as GCRA parameters (a token bucket in one word per limit):
/// a packet advances the source's theoretical arrival time by `*_interval_ns`, and is
/// admitted while that time stays within `*_burst_ns` of now. An interval of 0 means
/// unlimited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateClass {
    /// 1e9 / packets per second.
    pub packet_interval_ns: u64,
    /// `packet_interval_ns` * burst packets.
    pub packet_burst_ns: u64,
    /// 1e9 / bytes per second: the interval per byte, in 1/16 ns (bytes need fractions).
    pub byte_interval_fp: u64,
    /// `byte_interval_fp` * burst bytes.
    pub byte_burst_fp: u64,
    /// 1e9 / SYNs per second.
    pub syn_interval_ns: u64,
    /// `syn_interval_ns` * burst SYNs.
    pub syn_burst_ns: u64,
}

/// Per-source rate state: one theoretical arrival time per limit, each updated with a
/// compare-and-swap so concurrent CPUs never lose an update.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub packet_tat: u64,
    pub byte_tat: u64,
    pub syn_tat: u64,
    /// Index into `RATE_CLASSES`, chosen when the source was first seen in `generation`.
    pub class: u32,
    pub generation: u32,
}

/// A never-expiring ban.
pub const BAN_PERMANENT: u64 = u64::MAX;

// The kernel and the daemon read these bytes each with its own compile of this file: a size
// that changes (a field added, padding the compiler inserted) must be a deliberate change of
// the map layout, so it fails the build until the numbers here are changed with it. Each
// size is also the sum of the fields', so no implicit padding hides in them.
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<Reason>() == 4);
    assert!(size_of::<Counter>() == 16 && align_of::<Counter>() == 8);
    assert!(size_of::<Rule>() == 8 && align_of::<Rule>() == 4);
    assert!(size_of::<Settings>() == 12 && align_of::<Settings>() == 4);
    assert!(size_of::<NewSourceBudget>() == 32 && align_of::<NewSourceBudget>() == 8);
    assert!(size_of::<RateClass>() == 48 && align_of::<RateClass>() == 8);
    assert!(size_of::<Bucket>() == 32 && align_of::<Bucket>() == 8);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with explicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::Rule {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::RateClass {}
    unsafe impl aya::Pod for super::Bucket {}
    unsafe impl aya::Pod for super::NewSourceBudget {}
}
