//! `[defend]`: L7 signals that ban sources in the kernel (or at accept when XDP is off).
//!
//! ```toml
//! [defend]
//! never_ban = ["127.0.0.0/8"]
//! [[defend.triggers]]
//! signal = "auth-failure"   # 401/403, auth-failure | rate-limited | client-error | trap
//! count = 5
//! window = "1m"
//! ban = "10m"
//! [[defend.triggers]]
//! signal = "trap"
//! paths = ["/wp-login.php", "/cgi-bin/*"]   # exact, or a prefix ending in *
//! ban = "1h"
//! ```

use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::{Problems, units::duration};

/// Sources tracked at once unless `defend.max_tracked_sources` says (least recent forgotten).
const DEFAULT_MAX_TRACKED: usize = 100_000;
/// Largest `count` a trigger may ask for: the window keeps that many timestamps per source.
const MAX_COUNT: u32 = 10_000;

/// What a trigger counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Signal {
    /// A 401 or 403 answer, from the gateway or the upstream. Status-based, so it counts
    /// failures whoever decided them (the gateway's auth stage or the service).
    AuthFailure,
    /// A 429 answer.
    RateLimited,
    /// Any 4xx answer.
    ClientError,
    /// A request to one of the trigger's `paths`, whatever the answer.
    Trap,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::AuthFailure => "auth-failure",
            Signal::RateLimited => "rate-limited",
            Signal::ClientError => "client-error",
            Signal::Trap => "trap",
        }
    }

    /// What `count` of these is called in a ban's comment ("5 auth failures").
    pub fn plural(self) -> &'static str {
        match self {
            Signal::AuthFailure => "auth failures",
            Signal::RateLimited => "429s",
            Signal::ClientError => "4xx answers",
            Signal::Trap => "trap-path requests",
        }
    }
}

/// One validated trigger.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub signal: Signal,
    /// Signals from one source within `window` that ban it.
    pub count: u32,
    pub window: Duration,
    /// How long the ban lasts.
    pub ban: Duration,
    /// For `trap`: exact paths, or prefixes (written with a trailing `*`, stored without).
    pub paths: Vec<TrapPath>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrapPath {
    Exact(String),
    Prefix(String),
}

impl TrapPath {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            TrapPath::Exact(exact) => path == exact,
            TrapPath::Prefix(prefix) => path.starts_with(prefix.as_str()),
        }
    }
}

impl Trigger {
    /// Whether a finished request with this status and path is one of this trigger's signals.
    pub fn counts(&self, status: u16, path: &str) -> bool {
        match self.signal {
            Signal::AuthFailure => status == 401 || status == 403,
            Signal::RateLimited => status == 429,
            Signal::ClientError => (400..500).contains(&status),
            Signal::Trap => self.paths.iter().any(|trap| trap.matches(path)),
        }
    }
}

/// The validated `[defend]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct DefendConfig {
    /// Sources never banned automatically, whatever they do.
    pub never_ban: Vec<IpNet>,
    pub triggers: Vec<Trigger>,
    /// Sources whose signals are counted at once; the least recently seen are forgotten.
    pub max_tracked_sources: usize,
    pub under_attack: UnderAttackConfig,
}

impl Default for DefendConfig {
    fn default() -> Self {
        DefendConfig {
            never_ban: Vec::new(),
            triggers: Vec::new(),
            max_tracked_sources: DEFAULT_MAX_TRACKED,
            under_attack: UnderAttackConfig::default(),
        }
    }
}

/// `[defend.under_attack]`: who passes XDP while under attack, and when it switches itself.
#[derive(Debug, Clone, PartialEq)]
pub struct UnderAttackConfig {
    /// Unknown sources admitted per second (and at once) while under attack.
    pub new_sources_per_second: u32,
    pub new_source_burst: u32,
    /// How long an admitted unknown source stays admitted (to finish handshake and request).
    pub probation: Duration,
    /// How long a source stays known-good after authenticating successfully.
    pub known_good_ttl: Duration,
    /// Switch on and off by load; `None`: only by `gateway defend under-attack on|off`.
    pub auto: Option<AutoSwitch>,
}

impl Default for UnderAttackConfig {
    fn default() -> Self {
        UnderAttackConfig {
            new_sources_per_second: 20,
            new_source_burst: 40,
            probation: Duration::from_secs(10),
            known_good_ttl: Duration::from_secs(3600),
            auto: None,
        }
    }
}

/// The load signal sampled every second for the automatic switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSignal {
    /// Packets XDP dropped per second, all drop reasons.
    DroppedPacketsPerSecond,
    /// Connections the proxy's listeners accepted per second.
    ConnectionsPerSecond,
}

impl LoadSignal {
    pub fn name(self) -> &'static str {
        match self {
            LoadSignal::DroppedPacketsPerSecond => "dropped_packets_per_second",
            LoadSignal::ConnectionsPerSecond => "connections_per_second",
        }
    }
}

/// On when the signal reaches `on_at`; off once it has stayed below `off_below` for `hold`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutoSwitch {
    pub signal: LoadSignal,
    pub on_at: u64,
    pub off_below: u64,
    pub hold: Duration,
}

impl DefendConfig {
    pub fn never_banned(&self, address: std::net::IpAddr) -> bool {
        self.never_ban.iter().any(|net| net.contains(&address))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefend {
    #[serde(default)]
    never_ban: Vec<String>,
    #[serde(default)]
    triggers: Vec<RawTrigger>,
    max_tracked_sources: Option<usize>,
    #[serde(default)]
    under_attack: RawUnderAttack,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnderAttack {
    new_sources_per_second: Option<u32>,
    new_source_burst: Option<u32>,
    probation: Option<String>,
    known_good_ttl: Option<String>,
    #[serde(default)]
    auto: bool,
    on_when: Option<RawOnWhen>,
    off_below: Option<u64>,
    hold: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOnWhen {
    dropped_packets_per_second: Option<u64>,
    connections_per_second: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    signal: Signal,
    count: Option<u32>,
    window: Option<String>,
    ban: Option<String>,
    #[serde(default)]
    paths: Vec<String>,
}

impl RawDefend {
    pub(super) fn compile(self, problems: &mut Problems) -> DefendConfig {
        let mut never_ban = Vec::new();
        for (index, text) in self.never_ban.iter().enumerate() {
            let parsed = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => never_ban.push(net.trunc()),
                Err(_) => problems.add(
                    format!("defend.never_ban[{index}]"),
                    format!("{text:?} is not an IP address or CIDR (e.g. \"10.0.0.0/8\")"),
                ),
            }
        }
        let triggers = self
            .triggers
            .into_iter()
            .enumerate()
            .filter_map(|(index, raw)| raw.compile(&format!("defend.triggers[{index}]"), problems))
            .collect();
        let max_tracked_sources = self.max_tracked_sources.unwrap_or(DEFAULT_MAX_TRACKED);
        if !(1..=10_000_000).contains(&max_tracked_sources) {
            problems.add(
                "defend.max_tracked_sources",
                format!("{max_tracked_sources} is out of range 1..=10000000"),
            );
        }
        DefendConfig {
            never_ban,
            triggers,
            max_tracked_sources,
            under_attack: self.under_attack.compile(problems),
        }
    }
}

impl RawUnderAttack {
    fn compile(self, problems: &mut Problems) -> UnderAttackConfig {
        const KEY: &str = "defend.under_attack";
        let defaults = UnderAttackConfig::default();
        let mut span = |text: Option<String>, name: &str, default: Duration| {
            duration(text, &format!("{KEY}.{name}"), problems).unwrap_or(default)
        };
        let probation = span(self.probation, "probation", defaults.probation);
        let known_good_ttl = span(
            self.known_good_ttl,
            "known_good_ttl",
            defaults.known_good_ttl,
        );
        let hold = span(self.hold, "hold", Duration::from_secs(30));
        let new_sources_per_second = self
            .new_sources_per_second
            .unwrap_or(defaults.new_sources_per_second);
        let new_source_burst = self
            .new_source_burst
            .unwrap_or(new_sources_per_second.saturating_mul(2).max(1));
        if new_source_burst == 0 {
            problems.add(format!("{KEY}.new_source_burst"), "must be at least 1");
        }
        // on_when is checked even with auto = false, so switching auto on later just works.
        let auto = match (self.auto, self.on_when) {
            (false, None) => None,
            (true, None) => {
                problems.add(
                    format!("{KEY}.on_when"),
                    "auto = true needs a load signal, e.g. on_when = { dropped_packets_per_second = 50000 } \
                     or { connections_per_second = 2000 }",
                );
                None
            }
            (auto, Some(on_when)) => {
                let signal = match (
                    on_when.dropped_packets_per_second,
                    on_when.connections_per_second,
                ) {
                    (Some(on_at), None) => Some((LoadSignal::DroppedPacketsPerSecond, on_at)),
                    (None, Some(on_at)) => Some((LoadSignal::ConnectionsPerSecond, on_at)),
                    _ => {
                        problems.add(
                            format!("{KEY}.on_when"),
                            "name exactly one of dropped_packets_per_second, connections_per_second",
                        );
                        None
                    }
                };
                signal
                    .and_then(|(signal, on_at)| {
                        let off_below = self.off_below.unwrap_or(on_at / 2);
                        if on_at == 0 {
                            problems.add(
                                format!("{KEY}.on_when.{}", signal.name()),
                                "must be above 0",
                            );
                            return None;
                        }
                        if off_below > on_at {
                            problems.add(
                                format!("{KEY}.off_below"),
                                format!(
                                    "{off_below} is above on_when's {on_at}: it would switch off \
                                 while still over the threshold (hysteresis needs off_below <= on)"
                                ),
                            );
                            return None;
                        }
                        Some(AutoSwitch {
                            signal,
                            on_at,
                            off_below,
                            hold,
                        })
                    })
                    .filter(|_| auto)
            }
        };
        UnderAttackConfig {
            new_sources_per_second,
            new_source_burst,
            probation,
            known_good_ttl,
            auto,
        }
    }
}

impl RawTrigger {
    fn compile(self, key: &str, problems: &mut Problems) -> Option<Trigger> {
        let before = problems.0.len();
        let count = self.count.unwrap_or(1);
        if !(1..=MAX_COUNT).contains(&count) {
            problems.add(
                format!("{key}.count"),
                format!("{count} is out of range 1..={MAX_COUNT}"),
            );
        }
        let window = match self.window {
            Some(text) => duration(Some(text), &format!("{key}.window"), problems),
            None if count > 1 => {
                problems.add(
                    format!("{key}.window"),
                    format!("count = {count} needs a window to count in (e.g. \"1m\")"),
                );
                None
            }
            None => Some(Duration::from_secs(1)),
        };
        let ban = match self.ban {
            Some(text) => duration(Some(text), &format!("{key}.ban"), problems),
            None => {
                problems.add(
                    format!("{key}.ban"),
                    "say how long a ban lasts (e.g. \"10m\")",
                );
                None
            }
        };
        let mut paths = Vec::new();
        match (self.signal, self.paths.is_empty()) {
            (Signal::Trap, true) => problems.add(
                format!("{key}.paths"),
                "a trap needs at least one path (e.g. [\"/wp-login.php\"])",
            ),
            (Signal::Trap, false) => {}
            (signal, false) => problems.add(
                format!("{key}.paths"),
                format!(
                    "only signal = \"trap\" takes paths; {} counts every path",
                    signal.name()
                ),
            ),
            (_, true) => {}
        }
        for (index, path) in self.paths.iter().enumerate() {
            if !path.starts_with('/') {
                problems.add(
                    format!("{key}.paths[{index}]"),
                    format!("{path:?} must start with \"/\""),
                );
                continue;
            }
            paths.push(match path.strip_suffix('*') {
                Some(prefix) => TrapPath::Prefix(prefix.to_owned()),
                None => TrapPath::Exact(path.clone()),
            });
        }
        if problems.0.len() != before {
            return None;
        }
        Some(Trigger {
            signal: self.signal,
            count,
            window: window?,
            ban: ban?,
            paths,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ParseError};

    fn parse(defend: &str) -> Result<super::DefendConfig, Vec<String>> {
        match Config::parse(&format!("[xdp]\nmode = \"off\"\n{defend}")) {
            Ok(config) => Ok(config.defend),
            Err(ParseError::Invalid(problems)) => {
                Err(problems.iter().map(ToString::to_string).collect())
            }
            Err(ParseError::Syntax(error)) => Err(vec![error.to_string()]),
        }
    }

    #[test]
    fn triggers_compile() {
        let config = parse(
            "[defend]\nnever_ban = [\"10.0.0.0/8\", \"::1\"]\n\
             [[defend.triggers]]\nsignal = \"auth-failure\"\ncount = 5\nwindow = \"1m\"\nban = \"10m\"\n\
             [[defend.triggers]]\nsignal = \"trap\"\npaths = [\"/.env\", \"/cgi-bin/*\"]\nban = \"1h\"\n",
        )
        .unwrap();
        assert_eq!(config.never_ban.len(), 2);
        assert!(config.never_banned("10.1.2.3".parse().unwrap()));
        let auth = &config.triggers[0];
        assert!(auth.counts(401, "/x") && auth.counts(403, "/x") && !auth.counts(404, "/x"));
        let trap = &config.triggers[1];
        assert_eq!(trap.count, 1);
        assert!(trap.counts(404, "/.env") && !trap.counts(404, "/.env2"));
        assert!(trap.counts(200, "/cgi-bin/x.sh") && !trap.counts(200, "/cgi"));
    }

    #[test]
    fn problems_name_their_key() {
        let problems = parse(
            "[defend]\nnever_ban = [\"10.0.0.300/8\"]\n\
             [[defend.triggers]]\nsignal = \"auth-failure\"\ncount = 5\nban = \"soon\"\n\
             [[defend.triggers]]\nsignal = \"trap\"\nban = \"1h\"\n\
             [[defend.triggers]]\nsignal = \"client-error\"\npaths = [\"/x\"]\nban = \"1h\"\n",
        )
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "defend.never_ban[0]: \"10.0.0.300/8\" is not an IP address or CIDR (e.g. \"10.0.0.0/8\")",
                "defend.triggers[0].window: count = 5 needs a window to count in (e.g. \"1m\")",
                "defend.triggers[0].ban: \"soon\" is not a duration (e.g. \"500ms\", \"30s\", \"2m\")",
                "defend.triggers[1].paths: a trap needs at least one path (e.g. [\"/wp-login.php\"])",
                "defend.triggers[2].paths: only signal = \"trap\" takes paths; client-error counts every path",
            ]
        );
        let unknown =
            parse("[[defend.triggers]]\nsignal = \"too-many\"\nban = \"1h\"\n").unwrap_err();
        assert!(
            unknown[0].contains("unknown variant `too-many`"),
            "{unknown:?}"
        );
        let auto = parse(
            "[defend.under_attack]\nauto = true\non_when = { connections_per_second = 100 }\noff_below = 200\n",
        )
        .unwrap_err();
        assert!(
            auto[0].starts_with("defend.under_attack.off_below: 200 is above on_when's 100"),
            "{auto:?}"
        );
        let ok = parse(
            "[defend.under_attack]\nauto = true\non_when = { dropped_packets_per_second = 5000 }\nhold = \"5s\"\n",
        )
        .unwrap();
        let auto = ok.under_attack.auto.unwrap();
        assert_eq!((auto.on_at, auto.off_below), (5000, 2500));
        assert_eq!(auto.signal, super::LoadSignal::DroppedPacketsPerSecond);
        let typo = parse("[defend]\nnever_bam = []\n").unwrap_err();
        assert!(typo[0].contains("unknown field `never_bam`"), "{typo:?}");
    }
}
