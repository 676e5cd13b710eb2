//! The XDP frame parser: random and mutated frames through the real program
//! (`BPF_PROG_TEST_RUN`), each verdict compared with the userspace model's. The first byte
//! picks the policy; the rest is the frame.
#![no_main]

use std::sync::OnceLock;

use gateway_fuzz::{XdpPrograms, require_root};

static PROGRAMS: OnceLock<XdpPrograms> = OnceLock::new();

/// The kernel refuses test frames under 14 bytes; a page holds at most about 3.5 KiB.
const FRAME_LEN: std::ops::RangeInclusive<usize> = 14..=1514;

libfuzzer_sys::fuzz_target!(
    init: {
        require_root("xdp");
        PROGRAMS.get_or_init(XdpPrograms::load);
    },
    |data: &[u8]| {
        let Some((&choice, frame)) = data.split_first() else {
            return;
        };
        if FRAME_LEN.contains(&frame.len()) {
            PROGRAMS.get_or_init(XdpPrograms::load).check(choice, frame);
        }
    }
);
