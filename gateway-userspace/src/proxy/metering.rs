//! Metering: requests and bytes per (consumer, route) since start, for the admin API, the
//! cluster's metering push and `/metrics`. Counted with atomics, no lock shared by all
//! requests: a route's anonymous requests in the route's own counters, named consumers in
//! the route's map (a read lock finds one already seen; the write lock is taken once per new
//! consumer). At most [`MAX_METERED`] (consumer, route) pairs are kept; beyond, requests add
//! up under ("other", "other").

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

/// Distinct (consumer, route) pairs metered; beyond, they add up under "other".
pub const MAX_METERED: usize = 10_000;
/// The consumer of requests without a verified identity.
const ANONYMOUS: &str = "anonymous";
/// Consumer and route of the pairs beyond the bound.
const OTHER: &str = "other";

/// Requests and bytes for one consumer on one route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Metered {
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The live counts of one pair.
#[derive(Debug, Default)]
struct Meter {
    requests: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Meter {
    fn add(&self, bytes_in: u64, bytes_out: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    }

    fn read(&self) -> Metered {
        Metered {
            requests: self.requests.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}

/// One route's metering; the same for the proxy's life, whatever reloads do to the route.
#[derive(Debug, Default)]
pub struct RouteMeter {
    anonymous: Meter,
    /// Whether (anonymous, this route) got a pair of its own (decided at its first request).
    anonymous_kept: OnceLock<bool>,
    consumers: RwLock<HashMap<Box<str>, Meter>>,
}

/// Every route's metering, and the pairs beyond the bound.
#[derive(Debug)]
pub struct Metering {
    /// By route name; taken when a snapshot is built, never by a request.
    routes: Mutex<HashMap<String, Arc<RouteMeter>>>,
    /// Pairs kept so far.
    pairs: AtomicUsize,
    bound: usize,
    other: Meter,
}

impl Default for Metering {
    fn default() -> Self {
        Metering::with_bound(MAX_METERED)
    }
}

impl Metering {
    fn with_bound(bound: usize) -> Metering {
        Metering {
            routes: Mutex::default(),
            pairs: AtomicUsize::new(0),
            bound,
            other: Meter::default(),
        }
    }

    /// The meter of the route named `route` (kept across reloads by name).
    pub fn route(&self, route: &str) -> Arc<RouteMeter> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.entry(route.to_owned()).or_default().clone()
    }

    /// Counts one request of `consumer` (`None`: anonymous) on `route`.
    pub fn record(
        &self,
        route: &RouteMeter,
        consumer: Option<&str>,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let Some(consumer) = consumer else {
            let kept = *route.anonymous_kept.get_or_init(|| self.take_pair());
            let meter = if kept { &route.anonymous } else { &self.other };
            return meter.add(bytes_in, bytes_out);
        };
        let consumers = route.consumers.read().unwrap_or_else(|p| p.into_inner());
        if let Some(meter) = consumers.get(consumer) {
            return meter.add(bytes_in, bytes_out);
        }
        drop(consumers);
        let mut consumers = route.consumers.write().unwrap_or_else(|p| p.into_inner());
        // Another request may have added it between the two locks.
        if let Some(meter) = consumers.get(consumer) {
            return meter.add(bytes_in, bytes_out);
        }
        if !self.take_pair() {
            return self.other.add(bytes_in, bytes_out);
        }
        consumers
            .entry(consumer.into())
            .or_default()
            .add(bytes_in, bytes_out);
    }

    /// Takes one of the bounded pairs, if one is left.
    fn take_pair(&self) -> bool {
        if self.pairs.fetch_add(1, Ordering::Relaxed) < self.bound {
            return true;
        }
        self.pairs.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// (consumer, route) -> counts, sorted, for the admin API. Survives reloads.
    pub fn rows(&self) -> Vec<(String, String, Metered)> {
        let mut rows: BTreeMap<(String, String), Metered> = BTreeMap::new();
        let mut add = |consumer: &str, route: &str, counts: Metered| {
            let row = rows
                .entry((consumer.to_owned(), route.to_owned()))
                .or_default();
            row.requests += counts.requests;
            row.bytes_in += counts.bytes_in;
            row.bytes_out += counts.bytes_out;
        };
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        for (name, route) in routes.iter() {
            if route.anonymous_kept.get() == Some(&true) {
                add(ANONYMOUS, name, route.anonymous.read());
            }
            let consumers = route.consumers.read().unwrap_or_else(|p| p.into_inner());
            for (consumer, meter) in consumers.iter() {
                add(consumer, name, meter.read());
            }
        }
        drop(routes);
        let other = self.other.read();
        if other.requests > 0 {
            add(OTHER, OTHER, other);
        }
        rows.into_iter()
            .map(|((consumer, route), counts)| (consumer, route, counts))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64, bytes_in: u64, bytes_out: u64) -> Metered {
        Metered {
            requests,
            bytes_in,
            bytes_out,
        }
    }

    fn row(consumer: &str, route: &str, counts: Metered) -> (String, String, Metered) {
        (consumer.to_owned(), route.to_owned(), counts)
    }

    #[test]
    fn pairs_by_consumer_and_route_sorted() {
        let metering = Metering::default();
        let (a, b) = (metering.route("a"), metering.route("b"));
        metering.record(&b, Some("zed"), 1, 10);
        metering.record(&a, None, 2, 20);
        metering.record(&a, Some("amy"), 3, 30);
        metering.record(&a, Some("amy"), 4, 40);
        metering.record(&b, None, 5, 50);
        assert_eq!(
            metering.rows(),
            [
                row("amy", "a", counts(2, 7, 70)),
                row("anonymous", "a", counts(1, 2, 20)),
                row("anonymous", "b", counts(1, 5, 50)),
                row("zed", "b", counts(1, 1, 10)),
            ]
        );
        assert!(Metering::default().rows().is_empty());
    }

    #[test]
    fn a_route_keeps_its_counts_when_a_reload_asks_for_it_again() {
        let metering = Metering::default();
        metering.record(&metering.route("r"), Some("c"), 1, 1);
        metering.record(&metering.route("r"), Some("c"), 1, 1);
        assert_eq!(metering.rows(), [row("c", "r", counts(2, 2, 2))]);
    }

    /// (bound, requests as (consumer, route)) -> rows: pairs beyond the bound spill into
    /// ("other", "other"), pairs already kept go on counting on their own.
    #[test]
    fn spill_at_the_bound() {
        type Case = (
            usize,
            &'static [(Option<&'static str>, &'static str)],
            &'static [(&'static str, &'static str, u64)],
        );
        let table: &[Case] = &[
            (
                0,
                &[(None, "r"), (Some("a"), "r")],
                &[("other", "other", 2)],
            ),
            (
                1,
                &[
                    (Some("a"), "r"),
                    (Some("b"), "r"),
                    (Some("a"), "r"),
                    (None, "r"),
                ],
                &[("a", "r", 2), ("other", "other", 2)],
            ),
            (
                2,
                &[
                    (None, "r"),
                    (None, "s"),
                    (None, "t"),
                    (None, "r"),
                    (Some("a"), "r"),
                ],
                &[
                    ("anonymous", "r", 2),
                    ("anonymous", "s", 1),
                    ("other", "other", 2),
                ],
            ),
            (
                2,
                &[
                    (Some("a"), "r"),
                    (Some("a"), "s"),
                    (Some("a"), "t"),
                    (Some("a"), "s"),
                ],
                &[("a", "r", 1), ("a", "s", 2), ("other", "other", 1)],
            ),
            // A consumer really named "other" on a route named "other" shares the row.
            (
                1,
                &[(Some("other"), "other"), (Some("x"), "y")],
                &[("other", "other", 2)],
            ),
            (
                3,
                &[(Some("a"), "r"), (Some("b"), "r"), (None, "r")],
                &[("a", "r", 1), ("anonymous", "r", 1), ("b", "r", 1)],
            ),
        ];
        for (bound, requests, expected) in table {
            let metering = Metering::with_bound(*bound);
            for (consumer, route) in *requests {
                metering.record(&metering.route(route), *consumer, 1, 0);
            }
            let rows: Vec<(String, String, u64)> = metering
                .rows()
                .into_iter()
                .map(|(consumer, route, counts)| (consumer, route, counts.requests))
                .collect();
            let expected: Vec<(String, String, u64)> = expected
                .iter()
                .map(|(c, r, n)| ((*c).to_owned(), (*r).to_owned(), *n))
                .collect();
            assert_eq!(rows, expected, "bound {bound}, {requests:?}");
        }
    }

    #[test]
    fn concurrent_requests_are_all_counted_within_the_bound() {
        let metering = Arc::new(Metering::with_bound(50));
        let route = metering.route("r");
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let (metering, route) = (metering.clone(), route.clone());
                std::thread::spawn(move || {
                    for request in 0..5_000u64 {
                        let consumer = format!("c{}", (request + thread) % 80);
                        let consumer = (request % 7 != 0).then_some(consumer.as_str());
                        metering.record(&route, consumer, 1, 2);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let rows = metering.rows();
        let total: u64 = rows.iter().map(|(_, _, counts)| counts.requests).sum();
        assert_eq!(total, 20_000);
        assert_eq!(
            rows.iter().map(|(_, _, c)| c.bytes_out).sum::<u64>(),
            40_000
        );
        // 50 pairs of their own, and the spill row.
        assert_eq!(rows.len(), 51, "{rows:?}");
    }
}
