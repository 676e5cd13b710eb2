//! The XDP firewall: parse -> classify -> verdict -> count.
//!
//! Every packet ends in exactly one [`Reason`], which is counted and decides the verdict.
//! Anything the parser cannot make sense of is passed (and counted as such): the kernel's own
//! checks are better placed to reject it, and a wrong drop is worse than a late one.
#![no_std]
#![no_main]

mod parse;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use gateway_common::{
    ACTION_DENY, COUNTER_SLOTS, Counter, POLICY_ALLOW_LIST, PORT_SLOTS, PORT_TCP, PORT_UDP, Reason,
    Rule, Settings,
};
use parse::{L4, Source};

// Rule capacities are placeholders: the daemon sets them from config at load time.
#[map]
static RULES_V4: LpmTrie<[u8; 4], Rule> = LpmTrie::with_max_entries(1024, 0);
#[map]
static RULES_V6: LpmTrie<[u8; 16], Rule> = LpmTrie::with_max_entries(1024, 0);
#[map]
static PORTS: Array<u8> = Array::with_max_entries(PORT_SLOTS, 0);
#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);
#[map]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    let reason = match try_gateway_xdp(&ctx) {
        Ok(reason) | Err(reason) => reason,
    };
    count(&ctx, reason);
    if reason.is_drop() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// `Err` is an early pass (not IP, malformed, ...); `Ok` is the policy's decision.
#[inline(always)]
fn try_gateway_xdp(ctx: &XdpContext) -> Result<Reason, Reason> {
    let settings = SETTINGS.get(0).copied().unwrap_or_default();
    let packet = parse::ip(ctx)?;
    if settings.port_filter != 0 && !is_protected(parse::l4(ctx, &packet)?) {
        return Ok(Reason::PassedUnprotected);
    }
    Ok(classify(&settings, &packet.source))
}

/// Whether the policy applies to this destination.
#[inline(always)]
fn is_protected(l4: L4) -> bool {
    let (bit, port) = match l4 {
        L4::Tcp(port) => (PORT_TCP, port),
        L4::Udp(port) => (PORT_UDP, port),
        L4::Other => return false,
    };
    PORTS
        .get(u32::from(port))
        .is_some_and(|protocols| protocols & bit != 0)
}

/// The most specific matching rule decides; with none, the policy does.
#[inline(always)]
fn classify(settings: &Settings, source: &Source) -> Reason {
    let rule = match source {
        Source::V4(addr) => RULES_V4.get(Key::new(32, *addr)),
        Source::V6(addr) => RULES_V6.get(Key::new(128, *addr)),
    };
    match rule {
        Some(rule) if rule.action == ACTION_DENY => Reason::DroppedDeny,
        Some(_) => Reason::Passed,
        None if settings.policy == POLICY_ALLOW_LIST => Reason::DroppedNotAllowed,
        None => Reason::Passed,
    }
}

#[inline(always)]
fn count(ctx: &XdpContext, reason: Reason) {
    if let Some(counter) = COUNTERS.get_ptr_mut(reason as u32) {
        let bytes = (ctx.data_end() - ctx.data()) as u64;
        // SAFETY: a per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
