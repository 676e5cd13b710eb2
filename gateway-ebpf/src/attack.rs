//! Under-attack mode: known-good sources pass; unknown ones pass only within a budget of new
//! sources per second (GCRA, one CAS-updated word shared by all CPUs), and an admitted one is
//! known-good for a probation period, so its handshake and first request get through.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap},
};
use gateway_common::{NewSourceBudget, Reason};

use crate::{parse::Source, rate::conform};

#[map]
static KNOWN_GOOD: LruHashMap<[u8; 16], u64> = LruHashMap::with_max_entries(1024, 0);
#[map]
static NEW_SOURCES: Array<NewSourceBudget> = Array::with_max_entries(1, 0);

/// `Passed` for a known-good source or one the budget admits; else `DroppedUnderAttack`.
#[inline(always)]
pub fn admit(source: &Source, now: u64) -> Reason {
    let key = source.key();
    // SAFETY: a plain read of a live map value.
    if let Some(&expiry) = unsafe { KNOWN_GOOD.get(key) }
        && now < expiry
    {
        return Reason::Passed;
    }
    let Some(budget) = NEW_SOURCES.get_ptr_mut(0) else {
        return Reason::DroppedUnderAttack;
    };
    // SAFETY: a valid map value pointer; `tat` is only updated atomically.
    let (tat, interval, burst, probation) = unsafe {
        (
            &raw mut (*budget).tat,
            (*budget).interval_ns,
            (*budget).burst_ns,
            (*budget).probation_ns,
        )
    };
    // An interval of 0 admits no new source (conform would read it as "unlimited").
    if interval == 0 || !conform(tat, now, interval, burst) {
        return Reason::DroppedUnderAttack;
    }
    let _ = KNOWN_GOOD.insert(key, now + probation, 0);
    Reason::Passed
}
