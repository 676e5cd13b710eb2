//! The `balance` stage: pick the upstream target for a routed request.
//!
//! [`Balancer`] is an enum of algorithms so new ones (least outstanding requests, P2C over
//! EWMA latency, consistent hashing) sit beside round robin with their own state.

use std::sync::Mutex;

use crate::config::{Balance, TargetConfig};

use super::{
    Flow, RequestContext,
    error::{ErrorKind, ProxyError},
};

/// Picks `ctx.target` from the routed upstream; 503 when it has no target to offer.
pub fn pick(ctx: &mut RequestContext) -> Result<Flow, ProxyError> {
    let upstream = ctx.upstream();
    let Some(target) = upstream.balancer.pick() else {
        return Err(ProxyError::new(
            ErrorKind::NoTarget,
            format!(
                "upstream {:?} has no target with weight above 0",
                upstream.config.name
            ),
        ));
    };
    ctx.target = Some(target);
    Ok(Flow::Continue)
}

/// Per-upstream balancing state; rebuilt (and so reset) on reload.
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(SmoothWeightedRoundRobin),
}

impl Balancer {
    pub fn new(balance: Balance, targets: &[TargetConfig]) -> Balancer {
        match balance {
            Balance::RoundRobin => Balancer::RoundRobin(SmoothWeightedRoundRobin::new(
                targets.iter().map(|target| target.weight),
            )),
        }
    }

    /// Index of the chosen target, `None` if there is none to choose.
    pub fn pick(&self) -> Option<usize> {
        match self {
            Balancer::RoundRobin(rr) => rr.pick(),
        }
    }
}

/// nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a, not a a a a a b c.
/// Each pick adds every weight to its target's score, takes the highest score and subtracts
/// the total weight from it.
#[derive(Debug)]
pub struct SmoothWeightedRoundRobin {
    /// (weight, current score) per target, in target order.
    peers: Mutex<Vec<(i64, i64)>>,
}

impl SmoothWeightedRoundRobin {
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        let peers = weights
            .into_iter()
            .map(|weight| (i64::from(weight), 0))
            .collect();
        SmoothWeightedRoundRobin {
            peers: Mutex::new(peers),
        }
    }

    pub fn pick(&self) -> Option<usize> {
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut total = 0;
        let mut best: Option<usize> = None;
        for index in 0..peers.len() {
            let (weight, current) = peers[index];
            if weight == 0 {
                continue;
            }
            peers[index].1 = current + weight;
            total += weight;
            // Strictly greater: ties go to the earlier target.
            if best.is_none_or(|best| peers[index].1 > peers[best].1) {
                best = Some(index);
            }
        }
        let best = best?;
        peers[best].1 -= total;
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(weights: &[u32], picks: usize) -> Vec<usize> {
        let rr = SmoothWeightedRoundRobin::new(weights.iter().copied());
        (0..picks).map(|_| rr.pick().unwrap()).collect()
    }

    #[test]
    fn smooth_like_nginx() {
        assert_eq!(sequence(&[5, 1, 1], 7), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn exact_shares_over_whole_cycles() {
        let picks = sequence(&[3, 1, 0, 2], 600);
        let count = |target| picks.iter().filter(|&&p| p == target).count();
        assert_eq!([count(0), count(1), count(2), count(3)], [300, 100, 0, 200]);
    }

    #[test]
    fn nothing_to_pick() {
        assert_eq!(SmoothWeightedRoundRobin::new([0, 0]).pick(), None);
        assert_eq!(SmoothWeightedRoundRobin::new([]).pick(), None);
    }
}
