//! The `balance` stage: pick the upstream target for a routed request.
//!
//! [`Balancer`] is an enum with one small type per algorithm (`balance = "..."`):
//! - `round-robin`: [`SmoothWeightedRoundRobin`], nginx's smooth weighted round robin;
//! - `least-outstanding`: [`LeastOutstanding`], fewest requests in flight per unit of weight;
//! - `p2c-ewma`: [`PowerOfTwoChoices`], two random targets, the lower EWMA latency x
//!   (requests in flight + 1) / weight wins (Finagle/Linkerd "peak EWMA");
//! - `consistent-hash`: [`HashRing`], a ring of virtual nodes keyed by the client IP or a
//!   header, so adding or removing a target moves only about 1/n of the keys.
//!
//! Every algorithm only offers targets that are available (weight above 0, healthy, not
//! ejected; see health.rs) and not already tried by this request (retries, forward.rs).

use std::{
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use hyper::{HeaderMap, Request};

use crate::config::{Balance, TargetConfig};

use super::{
    ProxyBody, RequestCtx, Routed,
    error::{ErrorKind, ProxyError},
    health::TargetState,
    snapshot::Upstream,
};

/// Picks a target of the routed upstream (noted in `ctx.target` for the log); 503 when it
/// has no target to offer.
pub fn pick(
    routed: &Routed<'_>,
    ctx: &mut RequestCtx,
    req: &Request<ProxyBody>,
) -> Result<usize, ProxyError> {
    let upstream = routed.upstream;
    let key = request_key(upstream, ctx.connection.client.ip(), req.headers());
    let Some(target) = choose(upstream, key, &[]) else {
        return Err(ProxyError::new(
            ErrorKind::NoTarget,
            format!(
                "upstream {:?} has no available target (weight 0, unhealthy or ejected)",
                upstream.config.name
            ),
        ));
    };
    ctx.target = Some(target);
    Ok(target)
}

/// The consistent-hash key of a request: its `hash_header` value when configured and
/// present, else the client IP (0 for the other algorithms, which do not use it).
pub fn request_key(upstream: &Upstream, client: IpAddr, headers: &HeaderMap) -> u64 {
    if !matches!(upstream.balancer, Balancer::ConsistentHash(_)) {
        return 0;
    }
    let header = upstream
        .config
        .hash_header
        .as_ref()
        .and_then(|name| headers.get(name));
    match (header, client) {
        (Some(value), _) => hash(value.as_bytes()),
        (None, IpAddr::V4(ip)) => hash(&ip.octets()),
        (None, IpAddr::V6(ip)) => hash(&ip.octets()),
    }
}

/// An available target of `upstream` not in `tried`, or `None`.
pub fn choose(upstream: &Upstream, key: u64, tried: &[usize]) -> Option<usize> {
    let targets = &upstream.targets;
    let eligible = |index: usize| !tried.contains(&index) && targets[index].available();
    upstream.balancer.pick(targets, key, &eligible)
}

/// Per-upstream balancing state; rebuilt on reload (target health survives: see health.rs).
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(SmoothWeightedRoundRobin),
    LeastOutstanding(LeastOutstanding),
    P2cEwma(PowerOfTwoChoices),
    ConsistentHash(HashRing),
}

impl Balancer {
    pub fn new(balance: Balance, targets: &[TargetConfig]) -> Balancer {
        let weights = targets.iter().map(|target| target.weight);
        match balance {
            Balance::RoundRobin => Balancer::RoundRobin(SmoothWeightedRoundRobin::new(weights)),
            Balance::LeastOutstanding => Balancer::LeastOutstanding(LeastOutstanding::new(weights)),
            Balance::P2cEwma => Balancer::P2cEwma(PowerOfTwoChoices::new(weights)),
            Balance::ConsistentHash => Balancer::ConsistentHash(HashRing::new(
                targets
                    .iter()
                    .map(|target| (target.address.as_str(), target.weight)),
            )),
        }
    }

    /// Index of the chosen target among those `eligible` says yes to, `None` if there is
    /// none to choose. `states` is in target order.
    pub fn pick(
        &self,
        states: &[Arc<TargetState>],
        key: u64,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        match self {
            Balancer::RoundRobin(rr) => rr.pick(eligible),
            Balancer::LeastOutstanding(lo) => {
                lo.pick(|index| states[index].outstanding(), eligible)
            }
            Balancer::P2cEwma(p2c) => p2c.pick(|index| states[index].load_score(), eligible),
            Balancer::ConsistentHash(ring) => ring.pick(key, eligible),
        }
    }
}

/// nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a, not a a a a a b c.
/// Each pick adds every weight to its target's score, takes the highest score and subtracts
/// the total weight from it. Unavailable targets sit the round out.
///
/// When every weighted target has the same weight (the common case) that sequence is a plain
/// rotation, taken from one atomic ticket counter instead of the scores' lock.
#[derive(Debug)]
pub enum SmoothWeightedRoundRobin {
    /// Equal weights: the targets of weight above 0, in target order, and the next ticket.
    Rotation {
        targets: Vec<usize>,
        next: AtomicUsize,
    },
    /// (weight, current score) per target, in target order.
    Weighted(Mutex<Vec<(i64, i64)>>),
}

impl SmoothWeightedRoundRobin {
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        let peers: Vec<(i64, i64)> = weights
            .into_iter()
            .map(|weight| (i64::from(weight), 0))
            .collect();
        let mut weighted = peers.iter().map(|(weight, _)| *weight).filter(|w| *w > 0);
        let first = weighted.next();
        if weighted.all(|weight| Some(weight) == first) {
            return SmoothWeightedRoundRobin::Rotation {
                targets: (0..peers.len()).filter(|&i| peers[i].0 > 0).collect(),
                next: AtomicUsize::new(0),
            };
        }
        SmoothWeightedRoundRobin::Weighted(Mutex::new(peers))
    }

    pub fn pick(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            SmoothWeightedRoundRobin::Rotation { targets, next } => {
                Self::rotate(targets, next, eligible)
            }
            SmoothWeightedRoundRobin::Weighted(peers) => Self::weighted(peers, eligible),
        }
    }

    /// Each pick takes a ticket; an unavailable target's ticket is passed on, so the
    /// available ones share the rotation evenly. After a round of passed tickets (other
    /// requests may take tickets meanwhile), the first available target in order.
    fn rotate(
        targets: &[usize],
        next: &AtomicUsize,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if targets.is_empty() {
            return None;
        }
        for _ in 0..targets.len() {
            let target = targets[next.fetch_add(1, Ordering::Relaxed) % targets.len()];
            if eligible(target) {
                return Some(target);
            }
        }
        targets.iter().copied().find(|&target| eligible(target))
    }

    fn weighted(peers: &Mutex<Vec<(i64, i64)>>, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let mut peers = peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut total = 0;
        let mut best: Option<usize> = None;
        for index in 0..peers.len() {
            let (weight, current) = peers[index];
            if weight == 0 || !eligible(index) {
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

/// The target with the fewest requests in flight per unit of weight; ties rotate, so an
/// idle pool is served in turn.
#[derive(Debug)]
pub struct LeastOutstanding {
    weights: Vec<u64>,
    next: AtomicUsize,
}

impl LeastOutstanding {
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        LeastOutstanding {
            weights: weights.into_iter().map(u64::from).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn pick(
        &self,
        outstanding: impl Fn(usize) -> u64,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let count = self.weights.len();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        // (index, load, weight): compares load / weight without division.
        let mut best: Option<(usize, u64, u64)> = None;
        for offset in 0..count {
            let index = (start + offset) % count;
            let weight = self.weights[index];
            if weight == 0 || !eligible(index) {
                continue;
            }
            let load = outstanding(index) + 1;
            if best.is_none_or(|(_, best_load, best_weight)| {
                u128::from(load) * u128::from(best_weight)
                    < u128::from(best_load) * u128::from(weight)
            }) {
                best = Some((index, load, weight));
            }
        }
        best.map(|(index, _, _)| index)
    }
}

/// Power of two choices: two distinct random available targets; the one with the lower
/// score wins, where the score is the target's EWMA response time x (requests in
/// flight + 1) / weight. health.rs keeps the EWMA: a slower response raises it at once,
/// faster ones lower it gradually, and it decays while the target is idle so a once-slow
/// target is tried again.
#[derive(Debug)]
pub struct PowerOfTwoChoices {
    weights: Vec<u32>,
}

impl PowerOfTwoChoices {
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        PowerOfTwoChoices {
            weights: weights.into_iter().collect(),
        }
    }

    /// `load(index)` is EWMA latency x (in flight + 1), before the weight.
    pub fn pick(
        &self,
        load: impl Fn(usize) -> f64,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        // Counted, then walked to the two drawn: no candidate list allocated per pick.
        let candidates =
            || (0..self.weights.len()).filter(|&index| self.weights[index] > 0 && eligible(index));
        let (a, b) = match candidates().count() {
            0 => return None,
            1 => return candidates().next(),
            count => {
                let a = fastrand::usize(..count);
                let mut b = fastrand::usize(..count - 1);
                if b >= a {
                    b += 1;
                }
                (candidates().nth(a)?, candidates().nth(b)?)
            }
        };
        let score = |index: usize| load(index) / f64::from(self.weights[index]);
        Some(if score(b) < score(a) { b } else { a })
    }
}

/// A consistent-hash ring: each target owns `weight x POINTS` points (virtual nodes) at
/// hashes of its address; a key goes to the owner of the first point at or after its hash,
/// walking on past unavailable or tried targets. The ring depends only on the addresses
/// and weights, so every gateway node (and every reload) maps keys the same way.
#[derive(Debug)]
pub struct HashRing {
    /// (point hash, target index), sorted by hash.
    points: Vec<(u64, usize)>,
}

impl HashRing {
    /// Virtual nodes per unit of weight (fewer when the weights sum above `MAX_POINTS`).
    const POINTS: u64 = 160;
    const MAX_POINTS: u64 = 100_000;

    pub fn new<'a>(targets: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let targets: Vec<(&str, u32)> = targets.into_iter().collect();
        let total: u64 = targets.iter().map(|(_, weight)| u64::from(*weight)).sum();
        let per_weight = (Self::MAX_POINTS / total.max(1)).clamp(1, Self::POINTS);
        let mut points = Vec::new();
        for (index, (address, weight)) in targets.iter().enumerate() {
            for point in 0..u64::from(*weight) * per_weight {
                points.push((hash(format!("{address}#{point}").as_bytes()), index));
            }
        }
        points.sort_unstable();
        HashRing { points }
    }

    pub fn pick(&self, key: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.points.partition_point(|&(point, _)| point < key);
        let count = self.points.len();
        (0..count)
            .map(|step| self.points[(start + step) % count].1)
            .find(|&index| eligible(index))
    }
}

/// FNV-1a, then a splitmix64 finalizer to spread the bits: stable across processes,
/// versions and nodes (unlike std's `DefaultHasher`).
pub fn hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(weights: &[u32], picks: usize) -> Vec<usize> {
        let rr = SmoothWeightedRoundRobin::new(weights.iter().copied());
        (0..picks).map(|_| rr.pick(|_| true).unwrap()).collect()
    }

    #[test]
    fn smooth_like_nginx() {
        assert_eq!(sequence(&[5, 1, 1], 7), [0, 0, 1, 0, 2, 0, 0]);
    }

    /// nginx's algorithm, written out plainly: the sequence every weighting must give.
    fn reference(weights: &[u32], picks: usize) -> Vec<usize> {
        let mut scores = vec![0i64; weights.len()];
        let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
        (0..picks)
            .map(|_| {
                let mut best = None;
                for (index, &weight) in weights.iter().enumerate() {
                    if weight == 0 {
                        continue;
                    }
                    scores[index] += i64::from(weight);
                    if best.is_none_or(|best: usize| scores[index] > scores[best]) {
                        best = Some(index);
                    }
                }
                let best = best.unwrap();
                scores[best] -= total;
                best
            })
            .collect()
    }

    #[test]
    fn sequences_by_weights() {
        let table: &[(&[u32], &[usize])] = &[
            (&[1], &[0, 0, 0]),
            (&[1, 1], &[0, 1, 0, 1]),
            (&[1, 1, 1], &[0, 1, 2, 0, 1, 2]),
            (&[7, 7, 7], &[0, 1, 2, 0, 1, 2]),
            (&[0, 3, 0, 3], &[1, 3, 1, 3]),
            (&[2, 0, 2, 2], &[0, 2, 3, 0, 2, 3]),
            (&[2, 1], &[0, 1, 0, 0, 1, 0]),
            (&[1, 2], &[1, 0, 1, 1, 0, 1]),
            (&[5, 1, 1], &[0, 0, 1, 0, 2, 0, 0]),
            (&[3, 0, 1], &[0, 0, 2, 0, 0, 0, 2, 0]),
            (&[1, 1, 2], &[2, 0, 1, 2, 2, 0, 1, 2]),
        ];
        for (weights, expected) in table {
            let rotates = matches!(
                SmoothWeightedRoundRobin::new(weights.iter().copied()),
                SmoothWeightedRoundRobin::Rotation { .. }
            );
            let distinct: std::collections::HashSet<_> =
                weights.iter().filter(|&&w| w > 0).collect();
            assert_eq!(rotates, distinct.len() <= 1, "{weights:?}");
            assert_eq!(sequence(weights, expected.len()), *expected, "{weights:?}");
            assert_eq!(reference(weights, expected.len()), *expected, "{weights:?}");
        }
    }

    proptest::proptest! {
        /// The lock-free rotation and the scored path give nginx's sequence for any weights.
        #[test]
        fn every_weighting_follows_nginx(
            weights in proptest::collection::vec(0u32..6, 1..7),
            picks in 1usize..64,
        ) {
            proptest::prop_assume!(weights.iter().any(|&w| w > 0));
            proptest::prop_assert_eq!(sequence(&weights, picks), reference(&weights, picks));
        }

        /// With some targets unavailable, the rest share the picks evenly (equal weights).
        #[test]
        fn unavailable_targets_leave_an_even_share(
            count in 2usize..8,
            down in proptest::collection::vec(proptest::bool::ANY, 8),
            rounds in 1usize..20,
        ) {
            let up: Vec<usize> = (0..count).filter(|&i| !down[i]).collect();
            proptest::prop_assume!(!up.is_empty());
            let rr = SmoothWeightedRoundRobin::new(vec![1; count]);
            let mut seen = vec![0usize; count];
            for _ in 0..rounds * count {
                let picked = rr.pick(|i| !down[i]).unwrap();
                seen[picked] += 1;
            }
            let shares: Vec<usize> = up.iter().map(|&i| seen[i]).collect();
            let (least, most) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            // Each round of `count` tickets gives every available target one pick.
            proptest::prop_assert!(most - least <= 1, "{:?}", seen);
            proptest::prop_assert_eq!(seen.iter().sum::<usize>(), rounds * count);
        }
    }

    #[test]
    fn concurrent_picks_split_evenly() {
        let rr = Arc::new(SmoothWeightedRoundRobin::new([1, 1, 1, 1]));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let rr = rr.clone();
                std::thread::spawn(move || {
                    let mut seen = [0usize; 4];
                    for _ in 0..10_000 {
                        seen[rr.pick(|_| true).unwrap()] += 1;
                    }
                    seen
                })
            })
            .collect();
        let mut total = [0usize; 4];
        for thread in threads {
            for (sum, count) in total.iter_mut().zip(thread.join().unwrap()) {
                *sum += count;
            }
        }
        assert_eq!(total, [10_000; 4]);
    }

    #[test]
    fn exact_shares_over_whole_cycles() {
        let picks = sequence(&[3, 1, 0, 2], 600);
        let count = |target| picks.iter().filter(|&&p| p == target).count();
        assert_eq!([count(0), count(1), count(2), count(3)], [300, 100, 0, 200]);
    }

    #[test]
    fn nothing_to_pick() {
        assert_eq!(SmoothWeightedRoundRobin::new([0, 0]).pick(|_| true), None);
        assert_eq!(SmoothWeightedRoundRobin::new([]).pick(|_| true), None);
        assert_eq!(SmoothWeightedRoundRobin::new([1, 1]).pick(|_| false), None);
        assert_eq!(LeastOutstanding::new([1, 0]).pick(|_| 0, |i| i == 1), None);
        assert_eq!(
            PowerOfTwoChoices::new([1, 1]).pick(|_| 1.0, |_| false),
            None
        );
        assert_eq!(HashRing::new([("a:1", 1)]).pick(7, |_| false), None);
        assert_eq!(HashRing::new([]).pick(7, |_| true), None);
    }

    #[test]
    fn unavailable_targets_sit_out() {
        let rr = SmoothWeightedRoundRobin::new([1, 1, 1]);
        let picks: Vec<usize> = (0..6).map(|_| rr.pick(|i| i != 1).unwrap()).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        assert!(picks.contains(&0) && picks.contains(&2), "{picks:?}");
    }

    #[test]
    fn least_outstanding_takes_the_least_loaded_and_rotates_ties() {
        let lo = LeastOutstanding::new([1, 1, 1]);
        let load = [4, 1, 3];
        assert_eq!(lo.pick(|i| load[i], |_| true), Some(1));
        // Weight 3 with 5 in flight is less loaded than weight 1 with 2.
        let weighted = LeastOutstanding::new([1, 3]);
        assert_eq!(weighted.pick(|i| [2, 5][i], |_| true), Some(1));
        let picks: Vec<usize> = (0..3).map(|_| lo.pick(|_| 0, |_| true).unwrap()).collect();
        let mut sorted = picks.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2], "{picks:?}");
    }

    #[test]
    fn p2c_prefers_the_lower_score() {
        let p2c = PowerOfTwoChoices::new([1, 1]);
        let load = [10.0, 1.0];
        for _ in 0..50 {
            assert_eq!(p2c.pick(|i| load[i], |_| true), Some(1));
        }
        // With three targets the worst one is never chosen (it always loses its pair).
        let p2c = PowerOfTwoChoices::new([1, 1, 1]);
        let load = [1.0, 2.0, 30.0];
        for _ in 0..100 {
            assert_ne!(p2c.pick(|i| load[i], |_| true), Some(2));
        }
    }

    fn owners(ring: &HashRing, keys: u64) -> Vec<usize> {
        (0..keys)
            .map(|key| ring.pick(hash(&key.to_be_bytes()), |_| true).unwrap())
            .collect()
    }

    #[test]
    fn hash_ring_spreads_keys_and_moves_about_one_nth_on_add() {
        let addresses = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];
        let three = HashRing::new(addresses[..3].iter().map(|a| (*a, 1)));
        let four = HashRing::new(addresses.iter().map(|a| (*a, 1)));
        let keys = 20_000;
        let before = owners(&three, keys);
        let after = owners(&four, keys);
        for target in 0..3 {
            let share = before.iter().filter(|&&t| t == target).count() as f64 / keys as f64;
            assert!((0.25..0.42).contains(&share), "target {target}: {share}");
        }
        let moved: Vec<usize> = (0..keys as usize)
            .filter(|&key| before[key] != after[key])
            .collect();
        // Ideally 1/4 of the keys, all of them to the new target.
        let fraction = moved.len() as f64 / keys as f64;
        assert!((0.15..0.35).contains(&fraction), "{fraction}");
        assert!(moved.iter().all(|&key| after[key] == 3));
        // Removing it again puts every key back.
        assert_eq!(owners(&three, keys), before);
    }

    #[test]
    fn hash_ring_skips_unavailable_targets_only_for_their_keys() {
        let ring = HashRing::new([("a:1", 1), ("b:1", 1), ("c:1", 1)]);
        for key in 0..2_000u64 {
            let key = hash(&key.to_be_bytes());
            let owner = ring.pick(key, |_| true).unwrap();
            let without_b = ring.pick(key, |i| i != 1).unwrap();
            if owner == 1 {
                assert_ne!(without_b, 1);
            } else {
                assert_eq!(without_b, owner);
            }
        }
    }

    #[test]
    fn hash_is_stable() {
        // Pinned: nodes and versions must agree on the ring.
        assert_eq!(hash(b""), hash(b""));
        assert_ne!(hash(b"a"), hash(b"b"));
        assert_eq!(hash(b"10.0.0.1:80#0"), hash(b"10.0.0.1:80#0"));
    }
}
