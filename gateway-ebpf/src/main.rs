//! The XDP firewall: parse -> ban -> rules -> rate -> verdict -> count.
//!
//! Every packet ends in exactly one [`Reason`], which is counted and decides the verdict.
//! A frame whose Ethernet or IP header the parser cannot make sense of is passed (and counted
//! as such): the kernel's own checks are better placed to reject it, and a wrong drop is worse
//! than a late one. Once the source is known, though, a short or odd transport header is never
//! a pass by itself: it is judged by its port if that can be read, else by its source alone.
#![no_std]
#![no_main]
// BPF_CMPXCHG for the rate limiter, see rate.rs.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod attack;
mod parse;
mod rate;

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use gateway_common::{
    ACTION_ALLOW, ACTION_DENY, ACTION_SHADOW, COUNTER_SLOTS, Counter, DROP_SAMPLE_ONE_IN,
    INTERFACE_BLOCKS, INTERFACE_INDEXES, POLICY_ALLOW_LIST, PORT_SLOTS, PORT_TCP, PORT_UDP, Reason,
    Rule, Settings,
};
use parse::{L4, Source};

// Capacities are placeholders: the daemon sets them from config at load time.
#[map]
static RULES_V4: LpmTrie<[u8; 4], Rule> = LpmTrie::with_max_entries(1024, 0);
#[map]
static RULES_V6: LpmTrie<[u8; 16], Rule> = LpmTrie::with_max_entries(1024, 0);
#[map]
static BANS_V4: LpmTrie<[u8; 4], u64> = LpmTrie::with_max_entries(1024, 0);
#[map]
static BANS_V6: LpmTrie<[u8; 16], u64> = LpmTrie::with_max_entries(1024, 0);
#[map]
static PORTS: Array<u8> = Array::with_max_entries(PORT_SLOTS, 0);
#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);
#[map]
static COUNTERS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(COUNTER_SLOTS * INTERFACE_BLOCKS, 0);
#[map]
static INTERFACES: Array<u32> = Array::with_max_entries(INTERFACE_INDEXES, 0);
#[map]
static DROPS_BY_SOURCE: LruHashMap<[u8; 16], u64> = LruHashMap::with_max_entries(1024, 0);
#[map]
static RULE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2048, 0);

#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    let (reason, source) = match try_gateway_xdp(&ctx) {
        Ok(verdict) => verdict,
        Err(reason) => (reason, None),
    };
    count(&ctx, reason, source);
    if reason.is_drop() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// `Err` is an early pass (not IP, malformed, ...); `Ok` is the decision and the source.
#[inline(always)]
fn try_gateway_xdp(ctx: &XdpContext) -> Result<(Reason, Option<Source>), Reason> {
    let settings = SETTINGS.get(0).copied().unwrap_or_default();
    let packet = parse::ip(ctx)?;
    // Transport details are only read when something needs them.
    let l4 = if settings.port_filter != 0 || settings.rate_limit != 0 {
        Some(parse::l4(ctx, &packet))
    } else {
        None
    };
    if settings.port_filter != 0 && !is_protected(l4.unwrap_or(Ok(L4::Other))?) {
        return Ok((Reason::PassedUnprotected, None));
    }
    let source = packet.source;
    let mut reason = if settings.bans != 0 && is_banned(&source) {
        Reason::DroppedBanned
    } else {
        classify(&settings, &source)
    };
    if reason == Reason::Passed && settings.under_attack != 0 {
        // SAFETY: a helper without preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        reason = attack::admit(&source, now);
    }
    if reason == Reason::Passed && settings.rate_limit != 0 {
        let syn = matches!(
            l4,
            Some(Ok(L4::Tcp { syn: true, .. } | L4::Hidden { syn: true }))
        );
        let bytes = (ctx.data_end() - ctx.data()) as u64;
        // SAFETY: a helper without preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        reason = rate::admit(&settings, &source, now, bytes, syn);
    }
    Ok((reason, Some(source)))
}

/// Whether the policy applies to this destination. A port that cannot be read might be a
/// protected one.
#[inline(always)]
fn is_protected(l4: L4) -> bool {
    let (bit, port) = match l4 {
        L4::Tcp { port, .. } => (PORT_TCP, port),
        L4::Udp(port) => (PORT_UDP, port),
        L4::Other => return false,
        L4::Hidden { .. } => return true,
    };
    PORTS
        .get(u32::from(port))
        .is_some_and(|protocols| protocols & bit != 0)
}

/// A ban matches until its expiry passes; the daemon sweeps expired entries later. The
/// clock is only read when a ban matches.
#[inline(always)]
fn is_banned(source: &Source) -> bool {
    let expiry = match source {
        Source::V4(addr) => BANS_V4.get(Key::new(32, *addr)),
        Source::V6(addr) => BANS_V6.get(Key::new(128, *addr)),
    };
    // SAFETY: a helper without preconditions.
    expiry.is_some_and(|&expiry| unsafe { bpf_ktime_get_ns() } < expiry)
}

/// The most specific matching rule decides; with none, the policy does.
#[inline(always)]
fn classify(settings: &Settings, source: &Source) -> Reason {
    let rule = match source {
        Source::V4(addr) => RULES_V4.get(Key::new(32, *addr)),
        Source::V6(addr) => RULES_V6.get(Key::new(128, *addr)),
    };
    match rule {
        Some(rule) => {
            if let Some(hits) = RULE_HITS.get_ptr_mut(rule.id) {
                // SAFETY: a per-CPU slot, only this CPU writes it while the program runs.
                unsafe { *hits += 1 };
            }
            // A shadow rule only counts; the rule it sits in (or the policy) decides.
            let action = if rule.action == ACTION_SHADOW {
                rule.fallback
            } else {
                rule.action
            };
            match action {
                ACTION_DENY => Reason::DroppedDeny,
                ACTION_ALLOW => Reason::Passed,
                _ => by_policy(settings),
            }
        }
        None => by_policy(settings),
    }
}

#[inline(always)]
fn by_policy(settings: &Settings) -> Reason {
    if settings.policy == POLICY_ALLOW_LIST {
        Reason::DroppedNotAllowed
    } else {
        Reason::Passed
    }
}

#[inline(always)]
fn count(ctx: &XdpContext, reason: Reason, source: Option<Source>) {
    // SAFETY: the context the kernel gave this run.
    let if_index = unsafe { (*ctx.ctx).ingress_ifindex };
    let block = INTERFACES
        .get(if_index)
        .copied()
        .filter(|&block| block < INTERFACE_BLOCKS)
        .unwrap_or(0);
    if let Some(counter) = COUNTERS.get_ptr_mut(block * COUNTER_SLOTS + reason as u32) {
        let bytes = (ctx.data_end() - ctx.data()) as u64;
        // SAFETY: a per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
    if let (true, Some(source)) = (reason.is_drop(), source) {
        // Sampled: one drop in DROP_SAMPLE_ONE_IN, drawn at random so no sender can time its
        // packets around it, updates the per-source table; the daemon scales the counts back.
        // A flood then pays a random number per packet instead of a hash lookup and an atomic
        // add on a cache line every CPU shares.
        // SAFETY: a helper without preconditions.
        if unsafe { bpf_get_prandom_u32() } & (DROP_SAMPLE_ONE_IN - 1) != 0 {
            return;
        }
        let key = source.key();
        // A shared (not per-CPU) LRU hash: the verifier inlines its lookup, and an atomic
        // add keeps CPUs counting one source exact.
        match DROPS_BY_SOURCE.get_ptr_mut(key) {
            // SAFETY: a live map value, updated atomically.
            Some(drops) => unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(drops, 1);
            },
            None => {
                let _ = DROPS_BY_SOURCE.insert(key, 1, 0);
            }
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel lets only GPL-compatible programs call GPL-only helpers; "Dual MIT/GPL" is
/// what Cargo.toml's `license = "MIT OR GPL-2.0-only"` says, in the kernel's words.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
