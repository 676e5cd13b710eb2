//! Per-source rate limits: GCRA (a token bucket kept as one "theoretical arrival time" per
//! limit), updated with compare-and-swap so that CPUs racing on one source never lose or
//! double-spend a token.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, LpmTrie, LruHashMap, lpm_trie::Key};
use gateway_common::{Bucket, RATE_CLASS_SLOTS, RateClass, Reason, Settings};

use crate::parse::Source;

#[map]
static RATE_PREFIXES_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(1024, 0);
#[map]
static RATE_PREFIXES_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(1024, 0);
#[map]
static RATE_CLASSES: Array<RateClass> = Array::with_max_entries(RATE_CLASS_SLOTS, 0);
#[map]
static RATE_STATE: LruHashMap<[u8; 16], Bucket> = LruHashMap::with_max_entries(1024, 0);

/// Compare-and-swap attempts before a contended update counts as over the limit.
const CAS_ATTEMPTS: usize = 4;

/// Byte intervals are kept in 1/16 ns.
const BYTE_SHIFT: u32 = 4;

/// `Passed`, or which limit the packet is over.
#[inline(always)]
pub fn admit(settings: &Settings, source: &Source, now: u64, bytes: u64, syn: bool) -> Reason {
    let key = source.key();
    let bucket = match RATE_STATE.get_ptr_mut(key) {
        Some(bucket) => bucket,
        None => {
            let fresh = Bucket {
                class: class_of(source),
                generation: settings.rate_generation,
                ..Bucket::default()
            };
            // Another CPU may insert first: either way the entry exists after this.
            let _ = RATE_STATE.insert(key, fresh, 0);
            match RATE_STATE.get_ptr_mut(key) {
                Some(bucket) => bucket,
                None => return Reason::Passed,
            }
        }
    };
    // SAFETY: a valid map value pointer; the integer fields are only touched atomically or
    // are plain reads of values that any CPU may rewrite wholesale (class, generation).
    let class_index = unsafe {
        if (*bucket).generation != settings.rate_generation {
            (*bucket).class = class_of(source);
            (*bucket).generation = settings.rate_generation;
        }
        (*bucket).class
    };
    let Some(class) = RATE_CLASSES.get(class_index) else {
        return Reason::Passed;
    };
    // SAFETY: valid, 8-byte aligned u64 fields of the map value.
    let (packet_tat, byte_tat, syn_tat) = unsafe {
        (
            &raw mut (*bucket).packet_tat,
            &raw mut (*bucket).byte_tat,
            &raw mut (*bucket).syn_tat,
        )
    };
    if syn && !conform(syn_tat, now, class.syn_interval_ns, class.syn_burst_ns) {
        return Reason::DroppedSynRateLimited;
    }
    if !conform(
        packet_tat,
        now,
        class.packet_interval_ns,
        class.packet_burst_ns,
    ) {
        return Reason::DroppedRateLimited;
    }
    let byte_cost = bytes.wrapping_mul(class.byte_interval_fp);
    if !conform(byte_tat, now << BYTE_SHIFT, byte_cost, class.byte_burst_fp) {
        return Reason::DroppedRateLimited;
    }
    Reason::Passed
}

/// GCRA: admit if the arrival time, advanced by `cost`, stays within `burst` of `now`.
/// A zero `cost` means the limit is off.
///
/// The BPF target has no `AtomicU64::compare_exchange` (its spec says no CAS), but the
/// kernel has had BPF_CMPXCHG since 5.12: the intrinsic emits it.
#[inline(always)]
pub fn conform(tat: *mut u64, now: u64, cost: u64, burst: u64) -> bool {
    if cost == 0 {
        return true;
    }
    // An aligned 64-bit load is single-copy atomic on BPF; a stale value only costs a retry.
    // SAFETY: `tat` points into a live map value for the whole program run.
    let mut seen = unsafe { core::ptr::read_volatile(tat) };
    for _ in 0..CAS_ATTEMPTS {
        let next = if seen > now { seen } else { now } + cost;
        if next - now > burst {
            return false;
        }
        // SAFETY: as above.
        let (current, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                tat, seen, next,
            )
        };
        if swapped {
            return true;
        }
        seen = current;
    }
    false
}

#[inline(always)]
fn class_of(source: &Source) -> u32 {
    let class = match source {
        Source::V4(addr) => RATE_PREFIXES_V4.get(Key::new(32, *addr)),
        Source::V6(addr) => RATE_PREFIXES_V6.get(Key::new(128, *addr)),
    };
    class.copied().unwrap_or(0)
}
