//! Under-attack mode's switch: by the operator (`gateway defend under-attack on|off`), or by
//! load, with hysteresis: on as soon as one second's sample reaches the threshold, off only
//! after the signal has stayed below `off_below` for `hold`.

use std::time::{Duration, Instant};

use crate::config::AutoSwitch;

/// The automatic switch's memory between samples.
#[derive(Debug, Clone)]
pub struct Hysteresis {
    switch: AutoSwitch,
    below_since: Option<Instant>,
}

impl Hysteresis {
    pub fn new(switch: AutoSwitch) -> Hysteresis {
        Hysteresis {
            switch,
            below_since: None,
        }
    }

    /// Given whether the mode is on and this second's sample, the switch to make, if any.
    pub fn step(&mut self, on: bool, sample: u64, now: Instant) -> Option<bool> {
        if !on {
            self.below_since = None;
            return (sample >= self.switch.on_at).then_some(true);
        }
        if sample >= self.switch.off_below {
            self.below_since = None;
            return None;
        }
        let since = *self.below_since.get_or_insert(now);
        if now.duration_since(since) >= self.switch.hold {
            self.below_since = None;
            return Some(false);
        }
        None
    }

    pub fn describe(&self) -> String {
        format!(
            "{} >= {}, off below {} for {}",
            self.switch.signal.name(),
            self.switch.on_at,
            self.switch.off_below,
            humantime::format_duration(self.switch.hold)
        )
    }
}

/// What the status shows about the last switch.
#[derive(Debug, Clone)]
pub struct LastSwitch {
    pub by: String,
    pub at: Instant,
}

impl Default for LastSwitch {
    fn default() -> Self {
        LastSwitch {
            by: "start".to_owned(),
            at: Instant::now(),
        }
    }
}

/// Sampling period of the automatic switch.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadSignal;

    #[test]
    fn switches_on_at_once_and_off_after_holding_below() {
        let mut switch = Hysteresis::new(AutoSwitch {
            signal: LoadSignal::DroppedPacketsPerSecond,
            on_at: 1000,
            off_below: 100,
            hold: Duration::from_secs(3),
        });
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        assert_eq!(switch.step(false, 999, at(0)), None);
        assert_eq!(switch.step(false, 1000, at(1)), Some(true));
        // Between the thresholds: stays on.
        assert_eq!(switch.step(true, 500, at(2)), None);
        assert_eq!(switch.step(true, 50, at(3)), None);
        assert_eq!(switch.step(true, 50, at(5)), None);
        // A burst resets the hold.
        assert_eq!(switch.step(true, 200, at(6)), None);
        assert_eq!(switch.step(true, 50, at(7)), None);
        assert_eq!(switch.step(true, 50, at(9)), None);
        assert_eq!(switch.step(true, 50, at(10)), Some(false));
        assert_eq!(switch.step(false, 50, at(11)), None);
    }
}
