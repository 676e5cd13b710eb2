//! One frame through the real XDP program with `BPF_PROG_TEST_RUN`, and the reason it was
//! counted under.

use aya::programs::{TestRun, TestRunOptions};
use gateway::xdp::XdpFirewall;
use gateway_common::Reason;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Runs `frame` (14 bytes or more: the kernel's minimum) and returns the reason it was
/// counted under, after checking that exactly that counter moved, by one packet and the
/// frame's length, and that the action matches the reason.
pub fn verdict(xdp: &mut XdpFirewall, frame: &[u8]) -> Reason {
    let before = xdp.unattached_counters().expect("counters");
    let result = xdp
        .program_mut()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    let after = xdp.unattached_counters().expect("counters");
    let moved: Vec<Reason> = before
        .iter()
        .zip(&after)
        .filter(|((_, b), (_, a))| a != b)
        .map(|((reason, b), (_, a))| {
            assert_eq!(a.packets - b.packets, 1, "{reason:?} packets");
            assert_eq!(a.bytes - b.bytes, frame.len() as u64, "{reason:?} bytes");
            *reason
        })
        .collect();
    assert_eq!(moved.len(), 1, "exactly one counter moves, got {moved:?}");
    let reason = moved[0];
    let expected_action = if reason.is_drop() { XDP_DROP } else { XDP_PASS };
    assert_eq!(
        result.return_value, expected_action,
        "action for {reason:?}"
    );
    reason
}
