//! L7 signals drive the kernel: the proxy reports every finished request here, through a
//! bounded channel it never waits on; the defender counts each source's signals against the
//! `[defend]` triggers and bans a source that crosses one (IPv6 sources as their /64),
//! through the daemon's own ban path, so auto-bans are persisted, listed by `gateway bans`
//! with their reason, and enforced in XDP (or at accept, see [`crate::guard`], when XDP is off).
//!
//! Memory is bounded: at most `defend.max_tracked_sources` sources are tracked (the least
//! recently seen are forgotten first), each with at most `count` timestamps per trigger and a
//! short ring of recent decisions that `gateway firewall explain` shows.

pub mod attack;
mod enforcer;
mod metrics;

pub use crate::guard::BanOrder;
pub use enforcer::Enforcer;

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use ipnet::IpNet;

use tokio::sync::mpsc;

use crate::{
    api::{
        KnownGood, L7Decision, SourceView, UnderAttackStatus,
        failure::{ServiceError, ServiceResult},
    },
    config::DefendConfig,
    guard::AcceptGuard,
    xdp::NewSources,
};

/// Reports waiting for the defender; beyond, reports are dropped (and counted), never waited on.
const QUEUE: usize = 8192;
/// Recent L7 decisions kept per source, for explain.
const RECENT: usize = 16;
/// Longest path kept in a recent decision.
const MAX_PATH: usize = 128;

/// One finished request, as the proxy reports it.
#[derive(Debug, Clone)]
pub struct L7Event {
    pub client: IpAddr,
    pub status: u16,
    pub path: String,
    /// The proxy's own name of the route, shared (no copy per request).
    pub route: Option<Arc<str>>,
    pub identity: Option<String>,
}

/// The address or prefix a source's signals are counted and banned under: IPv4 addresses
/// as themselves, IPv6 as their /64 (one host owns a /64, and can pick any address in it).
pub fn source_key(address: IpAddr) -> IpNet {
    match crate::guard::canonical(address) {
        IpAddr::V4(v4) => IpNet::from(IpAddr::V4(v4)),
        IpAddr::V6(v6) => IpNet::new(IpAddr::V6(v6), 64)
            .expect("64 is a valid prefix length")
            .trunc(),
    }
}

struct Source {
    /// Per trigger (same index as the config's), the times of its signals within the window.
    hits: Vec<VecDeque<Instant>>,
    recent: VecDeque<L7Decision>,
    last_seen: Instant,
}

/// Per-source counting: pure logic, fed events with their time.
pub struct Tracker {
    config: DefendConfig,
    sources: HashMap<IpNet, Source>,
}

impl Tracker {
    pub fn new(config: DefendConfig) -> Tracker {
        Tracker {
            config,
            sources: HashMap::new(),
        }
    }

    /// A new config (reload): counts restart for triggers that changed shape.
    pub fn reconfigure(&mut self, config: DefendConfig) {
        if config.triggers != self.config.triggers {
            for source in self.sources.values_mut() {
                source.hits = vec![VecDeque::new(); config.triggers.len()];
            }
        }
        self.config = config;
    }

    /// Counts `event` at `now`; returns the ban to place if a trigger is crossed.
    pub fn observe(&mut self, event: &L7Event, now: Instant, wall: f64) -> Option<BanOrder> {
        let key = source_key(event.client);
        if !self.sources.contains_key(&key) && self.sources.len() >= self.config.max_tracked_sources
        {
            self.evict();
        }
        let triggers = self.config.triggers.len();
        let source = self.sources.entry(key).or_insert_with(|| Source {
            hits: vec![VecDeque::new(); triggers],
            recent: VecDeque::new(),
            last_seen: now,
        });
        source.last_seen = now;
        let mut signals = Vec::new();
        let mut order = None;
        for (index, trigger) in self.config.triggers.iter().enumerate() {
            if !trigger.counts(event.status, &event.path) {
                continue;
            }
            signals.push(trigger.signal.name().to_owned());
            let hits = &mut source.hits[index];
            while hits
                .front()
                .is_some_and(|&at| now.duration_since(at) > trigger.window)
            {
                hits.pop_front();
            }
            hits.push_back(now);
            if hits.len() > trigger.count as usize {
                hits.pop_front();
            }
            if hits.len() >= trigger.count as usize && order.is_none() {
                let comment = if trigger.count == 1 {
                    format!("auto: {} {}", trigger.signal.name(), event.path)
                } else {
                    format!(
                        "auto: {} {} in {}",
                        trigger.count,
                        trigger.signal.plural(),
                        humantime::format_duration(trigger.window)
                    )
                };
                order = Some(BanOrder {
                    net: key,
                    duration: trigger.ban,
                    comment,
                });
            }
        }
        let never_ban = self
            .config
            .never_banned(crate::guard::canonical(event.client));
        if order.is_some() {
            // Counting starts over: the ban answers what was counted.
            source.hits.iter_mut().for_each(VecDeque::clear);
        }
        let mut path = event.path.clone();
        if path.len() > MAX_PATH {
            let mut end = MAX_PATH;
            while !path.is_char_boundary(end) {
                end -= 1;
            }
            path.truncate(end);
        }
        if source.recent.len() == RECENT {
            source.recent.pop_front();
        }
        source.recent.push_back(L7Decision {
            at: wall,
            status: event.status,
            path,
            route: event.route.as_deref().map(str::to_owned),
            identity: event.identity.clone(),
            signals,
        });
        order.filter(|_| !never_ban)
    }

    /// Forgets the least recently seen tenth of the sources (at least one).
    fn evict(&mut self) {
        let mut seen: Vec<(Instant, IpNet)> = self
            .sources
            .iter()
            .map(|(key, source)| (source.last_seen, *key))
            .collect();
        let forget = (seen.len() / 10).max(1);
        seen.select_nth_unstable_by_key(forget - 1, |(at, _)| *at);
        for (_, key) in &seen[..forget] {
            self.sources.remove(key);
        }
    }

    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// What is known about `address`'s source, for explain.
    pub fn view(&self, address: IpAddr, now: Instant) -> SourceView {
        let key = source_key(address);
        let source = self.sources.get(&key);
        let progress = self
            .config
            .triggers
            .iter()
            .enumerate()
            .map(|(index, trigger)| {
                let within = source.map_or(0, |source| {
                    source.hits[index]
                        .iter()
                        .filter(|&&at| now.duration_since(at) <= trigger.window)
                        .count()
                });
                format!(
                    "{}: {within}/{} in {}",
                    trigger.signal.name(),
                    trigger.count,
                    humantime::format_duration(trigger.window)
                )
            })
            .collect();
        SourceView {
            counted_as: key.to_string(),
            never_ban: self.config.never_banned(crate::guard::canonical(address)),
            progress,
            recent: source.map_or_else(Vec::new, |source| source.recent.iter().cloned().collect()),
        }
    }
}

/// The running defender: its queue's sender, its tracker, and what it has done.
pub struct Defender {
    queue: mpsc::Sender<L7Event>,
    /// Whether `[defend]` has triggers: without, only known-good marks need reports.
    counting: AtomicBool,
    tracker: Mutex<Tracker>,
    config: ArcSwap<DefendConfig>,
    dropped: AtomicU64,
    bans: AtomicU64,
    state: Arc<dyn Enforcer>,
    /// The accept stage's counts (the `connections_per_second` load signal).
    guard: Arc<AcceptGuard>,
    /// Sources marked known-good, and when (so a busy client is not re-marked per request).
    marked: Mutex<HashMap<IpAddr, Instant>>,
    last_switch: Mutex<attack::LastSwitch>,
    last_sample: Mutex<Option<u64>>,
}

/// Starts the defender (the daemon calls it once, and hands the result to whoever reports
/// to it or asks it).
pub fn start(
    config: DefendConfig,
    state: Arc<dyn Enforcer>,
    guard: Arc<AcceptGuard>,
) -> Arc<Defender> {
    let (queue, events) = mpsc::channel(QUEUE);
    let defender = Arc::new(Defender {
        queue,
        counting: AtomicBool::new(!config.triggers.is_empty()),
        tracker: Mutex::new(Tracker::new(config.clone())),
        config: ArcSwap::from_pointee(config),
        dropped: AtomicU64::new(0),
        bans: AtomicU64::new(0),
        state: state.clone(),
        guard,
        marked: Mutex::new(HashMap::new()),
        last_switch: Mutex::new(attack::LastSwitch::default()),
        last_sample: Mutex::new(None),
    });
    tokio::spawn(run(defender.clone(), events, state));
    tokio::spawn(auto_switch(defender.clone()));
    defender
}

/// Samples the load signal every second and switches under-attack mode with hysteresis.
async fn auto_switch(defender: Arc<Defender>) {
    let mut every = tokio::time::interval(attack::SAMPLE_EVERY);
    let mut memory: Option<(crate::config::AutoSwitch, attack::Hysteresis)> = None;
    let mut previous: Option<(crate::config::LoadSignal, u64)> = None;
    loop {
        every.tick().await;
        let Some(switch) = defender.config.load().under_attack.auto else {
            memory = None;
            previous = None;
            *defender
                .last_sample
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
            continue;
        };
        if memory.as_ref().is_none_or(|(config, _)| *config != switch) {
            memory = Some((switch, attack::Hysteresis::new(switch)));
        }
        let total = match switch.signal {
            crate::config::LoadSignal::DroppedPacketsPerSecond => {
                let state = defender.state.clone();
                match tokio::task::spawn_blocking(move || state.dropped_packets()).await {
                    Ok(Some(total)) => total,
                    _ => continue,
                }
            }
            crate::config::LoadSignal::ConnectionsPerSecond => defender.guard.accepted(),
        };
        let sample = match previous {
            Some((signal, before)) if signal == switch.signal => total.saturating_sub(before),
            _ => {
                previous = Some((switch.signal, total));
                continue;
            }
        };
        previous = Some((switch.signal, total));
        *defender
            .last_sample
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(sample);
        let Some(on) = defender.state.under_attack() else {
            continue;
        };
        let (_, hysteresis) = memory.as_mut().expect("set above");
        if let Some(next) = hysteresis.step(on, sample, Instant::now()) {
            let by = format!(
                "auto: {} = {sample} ({})",
                switch.signal.name(),
                hysteresis.describe()
            );
            if let Err(failure) = defender.switch_under_attack(next, by) {
                tracing::error!("under-attack mode not switched: {failure}");
            }
        }
    }
}

impl Defender {
    /// Called for every finished request: never blocks, never fails the request. Nothing
    /// is copied or queued for a request that can neither count towards a trigger nor mark
    /// its source known-good.
    pub fn report(
        &self,
        client: IpAddr,
        status: u16,
        path: &str,
        route: Option<&Arc<str>>,
        identity: Option<&str>,
    ) {
        if !wanted(
            self.counting.load(Ordering::Relaxed),
            status,
            identity.is_some(),
        ) {
            return;
        }
        let event = L7Event {
            client,
            status,
            path: path.to_owned(),
            route: route.cloned(),
            identity: identity.map(str::to_owned),
        };
        if self.queue.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Applies a reloaded `[defend]` section.
    pub fn reconfigure(&self, config: DefendConfig) {
        self.counting
            .store(!config.triggers.is_empty(), Ordering::Relaxed);
        self.lock().reconfigure(config.clone());
        self.config.store(Arc::new(config));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn budget(&self) -> NewSources {
        let config = &self.config.load().under_attack;
        NewSources {
            per_second: config.new_sources_per_second,
            burst: config.new_source_burst,
            probation: config.probation,
        }
    }

    /// Switches under-attack mode in XDP; `by` says who (the operator, or the auto switch).
    pub fn switch_under_attack(&self, on: bool, by: String) -> ServiceResult<UnderAttackStatus> {
        self.state.set_under_attack(on, &self.budget())?;
        tracing::warn!(
            switched_by = by,
            "under-attack mode {}",
            if on { "on" } else { "off" }
        );
        *self.last_switch.lock().unwrap_or_else(|p| p.into_inner()) = attack::LastSwitch {
            by,
            at: Instant::now(),
        };
        Ok(self.under_attack_status())
    }

    pub fn under_attack_status(&self) -> UnderAttackStatus {
        let config = self.config.load();
        let last = self
            .last_switch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        UnderAttackStatus {
            on: self.state.under_attack().unwrap_or(false),
            switched_by: last.by,
            since_secs: last.at.elapsed().as_secs_f64(),
            new_sources_per_second: config.under_attack.new_sources_per_second,
            new_source_burst: config.under_attack.new_source_burst,
            auto: config.under_attack.auto.map_or_else(
                || "off".to_owned(),
                |switch| attack::Hysteresis::new(switch).describe(),
            ),
            last_sample: *self.last_sample.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Marks `parsed` known-good for `ttl` (default `known_good_ttl`): the operator's
    /// pre-seeding (checked by `KnownGoodRequest::validate`).
    pub fn mark_known_good(
        &self,
        parsed: IpAddr,
        ttl: Option<Duration>,
    ) -> ServiceResult<KnownGood> {
        let ttl = ttl.unwrap_or(self.config.load().under_attack.known_good_ttl);
        if !self.state.mark_known_good(parsed, ttl)? {
            return Err(ServiceError::Conflict(
                "known-good sources are admitted by XDP, and xdp.mode is \"off\": \
                 set xdp.mode and restart"
                    .to_owned(),
            ));
        }
        tracing::info!(source = %parsed, ttl = %humantime::format_duration(ttl), "source marked known-good");
        Ok(KnownGood {
            address: crate::guard::canonical(parsed).to_string(),
            expires_in_secs: ttl.as_secs_f64(),
        })
    }

    /// After a successful authenticated request: whether to (re-)mark the source known-good,
    /// at most every half TTL, so a busy client costs no map write per request.
    fn due_for_mark(&self, address: IpAddr) -> bool {
        let ttl = self.config.load().under_attack.known_good_ttl;
        let now = Instant::now();
        let mut marked = self.marked.lock().unwrap_or_else(|p| p.into_inner());
        if marked
            .get(&address)
            .is_some_and(|&at| now.duration_since(at) < ttl / 2)
        {
            return false;
        }
        if marked.len() >= self.config.load().max_tracked_sources {
            marked.clear();
        }
        marked.insert(address, now);
        true
    }

    fn authenticated(&self, address: IpAddr) {
        let ttl = self.config.load().under_attack.known_good_ttl;
        if let Err(failure) = self.state.mark_known_good(address, ttl) {
            tracing::warn!(source = %address, "marking known-good failed: {failure}");
        }
    }

    pub fn view(&self, address: IpAddr) -> SourceView {
        self.lock().view(address, Instant::now())
    }

    /// (reports dropped because the queue was full, auto-bans placed, sources tracked).
    pub fn counts(&self) -> (u64, u64, usize) {
        (
            self.dropped.load(Ordering::Relaxed),
            self.bans.load(Ordering::Relaxed),
            self.lock().tracked(),
        )
    }
}

/// Most auto-bans placed in one store transaction.
const BAN_BATCH: usize = 1024;

async fn run(
    defender: Arc<Defender>,
    mut events: mpsc::Receiver<L7Event>,
    state: Arc<dyn Enforcer>,
) {
    while let Some(event) = events.recv().await {
        // What is queued now is handled as one batch: a burst of bans costs one store
        // transaction per batch, not one per ban.
        let mut orders = Vec::new();
        let mut next = Some(event);
        while let Some(event) = next.take() {
            if let Some(order) = observe(&defender, &event).await {
                orders.push((event.client, order));
            }
            if orders.len() < BAN_BATCH {
                next = events.try_recv().ok();
            }
        }
        if orders.is_empty() {
            continue;
        }
        let state = state.clone();
        // Placing bans syncs the store to disk: off the async workers.
        let placed = tokio::task::spawn_blocking(move || {
            let bans: Vec<BanOrder> = orders.iter().map(|(_, order)| order.clone()).collect();
            let result = state.auto_ban(&bans);
            (orders, result)
        })
        .await;
        match placed {
            Ok((orders, Ok(placed))) => {
                defender
                    .bans
                    .fetch_add(placed.len() as u64, Ordering::Relaxed);
                for (client, order) in orders
                    .iter()
                    .filter(|(_, order)| placed.contains(&order.net))
                {
                    tracing::warn!(
                        source = %client,
                        net = %order.net,
                        duration = %humantime::format_duration(order.duration),
                        reason = order.comment,
                        "source auto-banned"
                    );
                }
            }
            Ok((orders, Err(failure))) => {
                for (_, order) in &orders {
                    tracing::error!(net = %order.net, reason = order.comment, "auto-ban failed: {failure}");
                }
            }
            Err(error) => tracing::error!("auto-ban task failed: {error}"),
        }
    }
}

/// Counts one finished request; the ban it calls for, if any.
/// Whether a finished request is worth a report: with triggers (`counting`) every one is
/// (each is a decision explain shows); without, only an authenticated success, which may
/// mark its source known-good.
fn wanted(counting: bool, status: u16, authenticated: bool) -> bool {
    counting || marks_known_good(status, authenticated)
}

fn marks_known_good(status: u16, authenticated: bool) -> bool {
    authenticated && status < 400
}

async fn observe(defender: &Arc<Defender>, event: &L7Event) -> Option<BanOrder> {
    if marks_known_good(event.status, event.identity.is_some())
        && defender.due_for_mark(event.client)
    {
        let defender = defender.clone();
        let client = event.client;
        let _ = tokio::task::spawn_blocking(move || defender.authenticated(client)).await;
    }
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    defender.lock().observe(event, Instant::now(), wall)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn tracker(defend: &str) -> Tracker {
        let config = Config::parse(&format!("[xdp]\nmode = \"off\"\n{defend}")).unwrap();
        Tracker::new(config.defend)
    }

    fn event(client: &str, status: u16, path: &str) -> L7Event {
        L7Event {
            client: client.parse().unwrap(),
            status,
            path: path.to_owned(),
            route: Some("api".into()),
            identity: None,
        }
    }

    const AUTH: &str = "[defend]\nnever_ban = [\"10.0.0.0/8\"]\n[[defend.triggers]]\n\
        signal = \"auth-failure\"\ncount = 3\nwindow = \"10s\"\nban = \"10m\"\n\
        [[defend.triggers]]\nsignal = \"trap\"\npaths = [\"/.env\"]\nban = \"1h\"\n";

    /// A firewall that is never asked: these tests place no bans.
    struct NoEnforcer;

    impl Enforcer for NoEnforcer {
        fn auto_ban(&self, _: &[BanOrder]) -> ServiceResult<Vec<IpNet>> {
            Ok(Vec::new())
        }
        fn set_under_attack(&self, _: bool, _: &NewSources) -> ServiceResult<()> {
            Ok(())
        }
        fn under_attack(&self) -> Option<bool> {
            None
        }
        fn mark_known_good(&self, _: IpAddr, _: Duration) -> ServiceResult<bool> {
            Ok(false)
        }
        fn dropped_packets(&self) -> Option<u64> {
            None
        }
    }

    /// (triggers configured, status, authenticated) -> reported.
    #[test]
    fn only_requests_that_can_matter_are_reported() {
        let table = [
            (true, 200, false, true),
            (true, 401, false, true),
            (true, 404, true, true),
            (true, 500, true, true),
            (false, 200, false, false),
            (false, 401, false, false),
            (false, 404, false, false),
            (false, 503, false, false),
            (false, 101, false, false),
            (false, 200, true, true),
            (false, 302, true, true),
            (false, 399, true, true),
            (false, 400, true, false),
            (false, 403, true, false),
            (false, 500, true, false),
        ];
        for (counting, status, authenticated, reported) in table {
            assert_eq!(
                wanted(counting, status, authenticated),
                reported,
                "triggers {counting}, status {status}, authenticated {authenticated}"
            );
        }
    }

    #[tokio::test]
    async fn without_triggers_nothing_is_queued_until_a_reload_adds_one() {
        let config = |defend: &str| {
            Config::parse(&format!("[xdp]\nmode = \"off\"\n{defend}"))
                .unwrap()
                .defend
        };
        let (queue, mut events) = mpsc::channel(QUEUE);
        let defender = Defender {
            queue,
            counting: AtomicBool::new(false),
            tracker: Mutex::new(Tracker::new(config(""))),
            config: ArcSwap::from_pointee(config("")),
            dropped: AtomicU64::new(0),
            bans: AtomicU64::new(0),
            state: Arc::new(NoEnforcer),
            guard: Default::default(),
            marked: Mutex::new(HashMap::new()),
            last_switch: Mutex::new(attack::LastSwitch::default()),
            last_sample: Mutex::new(None),
        };
        let route: Arc<str> = "api".into();
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        for status in [200, 401, 404, 500] {
            defender.report(client, status, "/.env", Some(&route), None);
        }
        assert!(
            events.try_recv().is_err(),
            "nothing queued without triggers"
        );
        defender.report(client, 200, "/me", Some(&route), Some("alice"));
        let marked = events.try_recv().unwrap();
        assert_eq!(marked.identity.as_deref(), Some("alice"));
        assert!(
            Arc::ptr_eq(marked.route.as_ref().unwrap(), &route),
            "shared, not copied"
        );
        defender.reconfigure(config(AUTH));
        defender.report(client, 200, "/", None, None);
        assert_eq!(events.try_recv().unwrap().status, 200);
    }

    #[test]
    fn a_trigger_bans_after_count_signals_within_the_window() {
        let mut tracker = tracker(AUTH);
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert_eq!(
            tracker.observe(&event("192.0.2.7", 401, "/a"), at(0), 0.0),
            None
        );
        assert_eq!(
            tracker.observe(&event("192.0.2.7", 200, "/a"), at(1), 0.0),
            None
        );
        assert_eq!(
            tracker.observe(&event("192.0.2.7", 403, "/a"), at(2), 0.0),
            None
        );
        // The first failure left the window: two within it.
        assert_eq!(
            tracker.observe(&event("192.0.2.7", 401, "/a"), at(11), 0.0),
            None
        );
        let order = tracker
            .observe(&event("192.0.2.7", 401, "/a"), at(12), 0.0)
            .expect("three failures within 10s");
        assert_eq!(order.net, "192.0.2.7/32".parse::<IpNet>().unwrap());
        assert_eq!(order.duration, Duration::from_secs(600));
        assert_eq!(order.comment, "auto: 3 auth failures in 10s");
        // Counting starts over after a ban.
        assert_eq!(
            tracker.observe(&event("192.0.2.7", 401, "/a"), at(13), 0.0),
            None
        );
        let view = tracker.view("192.0.2.7".parse().unwrap(), at(13));
        assert_eq!(view.progress[0], "auth-failure: 1/3 in 10s");
        assert_eq!(view.recent.len(), 6);
        assert_eq!(view.recent[5].signals, ["auth-failure"]);
    }

    #[test]
    fn traps_ban_at_once_ipv6_as_its_64_and_never_ban_is_respected() {
        let mut tracker = tracker(AUTH);
        let now = Instant::now();
        let order = tracker
            .observe(&event("2001:db8:1:2::99", 404, "/.env"), now, 0.0)
            .unwrap();
        assert_eq!(order.net, "2001:db8:1:2::/64".parse::<IpNet>().unwrap());
        assert_eq!(order.comment, "auto: trap /.env");
        assert_eq!(
            tracker.observe(&event("10.1.2.3", 404, "/.env"), now, 0.0),
            None
        );
        assert!(tracker.view("10.1.2.3".parse().unwrap(), now).never_ban);
    }

    #[test]
    fn tracked_sources_are_bounded() {
        let mut tracker =
            tracker(&AUTH.replace("[defend]\n", "[defend]\nmax_tracked_sources = 100\n"));
        let now = Instant::now();
        for i in 0..1000u32 {
            let client = std::net::Ipv4Addr::from(0xc000_0000 + i).to_string();
            tracker.observe(&event(&client, 401, "/"), now, 0.0);
            assert!(tracker.tracked() <= 100);
        }
    }
}
