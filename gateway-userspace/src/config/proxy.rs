//! The L7 proxy's config: `[[listeners]]` (with `tls`), `[limits]`, `[[upstreams]]` and
//! `[[routes]]`, each in its own file; this one puts the sections together.
//!
//! Routes compile into one list in precedence order (most specific first), so the proxy takes
//! the first route that matches; routes that can never match are reported as warnings.

use super::{
    Problems,
    auth::{self, AuthConfig},
    cache::{CacheStoreConfig, RawCacheStore},
    http_limits::{HttpLimits, RawLimits},
    listeners::{ListenerConfig, RawListener, compile_listeners},
    normalise::{NormaliseConfig, RawNormalise},
    precedence::{precedence, report_shadowed},
    routes::{RawRoute, RouteConfig, compile_routes},
    upstreams::{RawUpstream, UpstreamConfig, compile_upstreams},
};

#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    pub listeners: Vec<ListenerConfig>,
    pub limits: HttpLimits,
    /// `[normalise]`: how request paths are made canonical before routing.
    pub normalise: NormaliseConfig,
    pub upstreams: Vec<UpstreamConfig>,
    /// In precedence order: the first route that matches a request takes it.
    pub routes: Vec<RouteConfig>,
    /// `[cache]`: the response cache's store.
    pub cache: CacheStoreConfig,
    /// JWT providers and API-key consumers (config/auth.rs).
    pub auth: AuthConfig,
}

/// The raw sections of the file that belong to the proxy.
pub(super) struct RawProxy {
    pub listeners: Vec<RawListener>,
    pub limits: RawLimits,
    pub normalise: RawNormalise,
    pub upstreams: Vec<RawUpstream>,
    pub routes: Vec<RawRoute>,
    pub cache: Option<RawCacheStore>,
    pub auth: auth::RawAuth,
    pub consumers: Vec<auth::RawConsumer>,
}

impl RawProxy {
    pub(super) fn compile(
        self,
        problems: &mut Problems,
        warnings: &mut Vec<String>,
    ) -> ProxyConfig {
        let listeners = compile_listeners(self.listeners, problems, warnings);
        let limits = self.limits.compile(problems);
        let normalise = self.normalise.compile();
        let upstreams = compile_upstreams(self.upstreams, problems, warnings);
        let cache = RawCacheStore::compile(self.cache, problems);
        let auth = auth::compile(self.auth, self.consumers, problems);
        let mut routes = compile_routes(self.routes, &upstreams, &cache, &auth, problems);
        // Stable sort: equally specific routes keep their file order.
        routes.sort_by(|a, b| precedence(&a.matcher, &b.matcher));
        report_shadowed(&routes, warnings);
        if !routes.is_empty() && listeners.is_empty() {
            warnings.push("routes: no [[listeners]] is configured, so no route is served".into());
        }
        ProxyConfig {
            listeners,
            limits,
            normalise,
            upstreams,
            routes,
            cache,
            auth,
        }
    }
}

/// Listener, upstream and route names.
pub(super) fn check_name(name: &str, key: &str, problems: &mut Problems) {
    if name.is_empty() || name.len() > 64 || name.contains(char::is_whitespace) {
        problems.add(
            key,
            format!("{name:?}: names are 1 to 64 characters without spaces"),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ParseError};

    const BASE: &str = "[xdp]\nmode = \"off\"\n";

    fn parse(text: &str) -> Config {
        Config::parse(&format!("{BASE}{text}")).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(&format!("{BASE}{text}")) {
            Err(ParseError::Invalid(problems)) => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    const UPSTREAM: &str =
        "[[upstreams]]\nname = \"u\"\ntargets = [{ address = \"127.0.0.1:9000\" }]\n";

    #[test]
    fn balancing_health_and_retry_keys() {
        let config = parse(
            "[[upstreams]]\nname = \"u\"\ntargets = [{ address = \"127.0.0.1:9000\" }]\n\
             balance = \"consistent-hash\"\nhash_header = \"X-User\"\n\
             health_check = { path = \"/up\", interval = \"2s\", timeout = \"1s\" }\n\
             consecutive_failures = 3\nejection_time = \"5s\"\n\
             retry = { attempts = 2, on_status = [502, 503] }\n",
        );
        let upstream = &config.proxy.upstreams[0];
        assert_eq!(upstream.balance, crate::config::Balance::ConsistentHash);
        assert_eq!(upstream.hash_header.as_ref().unwrap(), "x-user");
        let check = upstream.health_check.as_ref().unwrap();
        assert_eq!((check.healthy_threshold, check.unhealthy_threshold), (2, 3));
        assert_eq!(check.interval.as_secs(), 2);
        assert_eq!(upstream.consecutive_failures, 3);
        assert_eq!(upstream.ejection_time.as_secs(), 5);
        let retry = upstream.retry.as_ref().unwrap();
        assert_eq!((retry.attempts, retry.budget_percent), (2, 20));
        assert_eq!(retry.on_status, [502, 503]);
        let defaults = parse(UPSTREAM);
        let upstream = &defaults.proxy.upstreams[0];
        assert!(upstream.health_check.is_none() && upstream.retry.is_none());
        assert_eq!(upstream.consecutive_failures, 0);

        let found = problems(
            "[[upstreams]]\nname = \"u\"\ntargets = [{ address = \"127.0.0.1:9000\" }]\n\
             hash_header = \"bad name\"\nejection_time = \"1s\"\n\
             health_check = { path = \"up\", interval = \"1s\", timeout = \"2s\", healthy_threshold = 0 }\n\
             retry = { attempts = 11, on_status = [404], budget_percent = 101 }\n",
        );
        for prefix in [
            "upstreams[0].hash_header: only used with balance = \"consistent-hash\"",
            "upstreams[0].hash_header: \"bad name\" is not a header name",
            "upstreams[0].ejection_time: only used with consecutive_failures above 0",
            "upstreams[0].health_check.path: \"up\" is not a path",
            "upstreams[0].health_check.healthy_threshold: 0 is out of range",
            "upstreams[0].health_check.timeout: 2s is longer than the interval",
            "upstreams[0].retry.attempts: 11 is out of range",
            "upstreams[0].retry.on_status[0]: 404 is not a 5xx status",
            "upstreams[0].retry.budget_percent: 101 is out of range",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(prefix)),
                "{prefix}\nnot in {found:#?}"
            );
        }
    }

    #[test]
    fn limits_default_and_accept_human_units() {
        let config = parse("");
        assert_eq!(config.proxy.limits.max_header_bytes, 64 * 1024);
        assert_eq!(config.proxy.limits.max_body_bytes, 1024 * 1024);
        assert_eq!(config.proxy.limits.header_read_timeout.as_secs(), 10);
        assert_eq!(config.proxy.limits.drain_timeout.as_secs(), 30);
        assert!(config.proxy.listeners.is_empty());
        let config = parse(
            "[limits]\nmax_header_bytes = \"8KiB\"\nmax_body_bytes = 4096\nheader_read_timeout = \"1500ms\"\n",
        );
        assert_eq!(config.proxy.limits.max_header_bytes, 8192);
        assert_eq!(config.proxy.limits.max_body_bytes, 4096);
        assert_eq!(config.proxy.limits.header_read_timeout.as_millis(), 1500);
    }

    #[test]
    fn body_timers_default_parse_and_name_the_key() {
        let limits = parse("").proxy.limits;
        assert_eq!(limits.body_read_timeout.as_secs(), 10);
        assert_eq!(limits.min_body_rate, 1024);
        let table = [
            ("\"2KiB/s\"", 2048),
            ("\"100 B/s\"", 100),
            ("512", 512),
            ("0", 0),
        ];
        for (text, bytes) in table {
            let limits = parse(&format!(
                "[limits]\nmin_body_rate = {text}\nbody_read_timeout = \"2s\"\n"
            ))
            .proxy
            .limits;
            assert_eq!(limits.min_body_rate, bytes, "{text}");
            assert_eq!(limits.body_read_timeout.as_secs(), 2);
        }
        for (text, problem) in [
            (
                "min_body_rate = \"1KiB\"",
                "limits.min_body_rate: \"1KiB\" is not a rate",
            ),
            (
                "min_body_rate = \"fast/s\"",
                "limits.min_body_rate: \"fast\" is not a size",
            ),
            ("body_read_timeout = \"0s\"", "limits.body_read_timeout:"),
        ] {
            let found = problems(&format!("[limits]\n{text}\n"));
            assert!(
                found.iter().any(|p| p.starts_with(problem)),
                "{problem}\nnot in {found:#?}"
            );
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let found = problems(
            "[limits]\nmax_body_bytes = \"lots\"\nidle_timeout = \"soon\"\nmax_connections = 0\n\
             [[listeners]]\nname = \"a\"\naddress = \"localhost\"\n\
             [[upstreams]]\nname = \"u\"\ntargets = [{ address = \"no-port\" }]\n\
             [[routes]]\nname = \"r\"\nupstream = \"missing\"\nstrip_prefix = true\n\
             match = { path_regex = \"(\", methods = [\"G ET\"], headers = { \"bad name\" = \"x\" } }\n\
             request_headers = { set = { connection = \"close\" } }\n",
        );
        let expected = [
            "listeners[0].address: \"localhost\" is not an IP:port address (e.g. \"0.0.0.0:8080\", \"[::]:8080\")",
            "limits.max_body_bytes: \"lots\" is not a size (e.g. 65536, \"64KiB\", \"8MiB\")",
            "limits.idle_timeout: \"soon\" is not a duration (e.g. \"500ms\", \"30s\", \"2m\")",
            "limits.max_connections: 0 is out of range 1..=1000000",
            "upstreams[0].targets[0].address: \"no-port\" is not host:port (e.g. \"127.0.0.1:9000\", \"users.internal:80\")",
            "routes[0].upstream: no upstream is named \"missing\"",
        ];
        for line in expected {
            assert!(found.iter().any(|p| p == line), "{line}\nnot in {found:#?}");
        }
        for prefix in [
            "routes[0].match.path_regex: \"(\" is not a valid regex",
            "routes[0].match.methods[0]: \"G ET\" is not an HTTP method",
            "routes[0].match.headers.\"bad name\": \"bad name\" is not a valid header name",
            "routes[0].request_headers.set.\"connection\": \"connection\" is managed by the proxy",
            "routes[0].strip_prefix: needs match.path_prefix",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(prefix)),
                "{prefix}\nnot in {found:#?}"
            );
        }
    }

    #[test]
    fn unknown_route_keys_are_errors() {
        let text = format!(
            "{BASE}{UPSTREAM}[[routes]]\nname = \"r\"\nupstream = \"u\"\nmatch = {{ pth = \"/\" }}\n"
        );
        let Err(ParseError::Syntax(error)) = Config::parse(&text) else {
            panic!("expected a syntax error");
        };
        assert!(error.to_string().contains("unknown field `pth`"), "{error}");
    }

    fn route_order(routes: &str) -> Vec<String> {
        parse(&format!("{UPSTREAM}{routes}"))
            .proxy
            .routes
            .iter()
            .map(|route| route.name.clone())
            .collect()
    }

    #[test]
    fn precedence_is_most_specific_first_then_file_order() {
        let order = route_order(
            "[[routes]]\nname = \"any\"\nupstream = \"u\"\n\
             [[routes]]\nname = \"regex\"\nupstream = \"u\"\nmatch = { path_regex = \"/r/[0-9]+\" }\n\
             [[routes]]\nname = \"short-prefix\"\nupstream = \"u\"\nmatch = { path_prefix = \"/v1\" }\n\
             [[routes]]\nname = \"long-prefix\"\nupstream = \"u\"\nmatch = { path_prefix = \"/v1/users\" }\n\
             [[routes]]\nname = \"prefix-with-header\"\nupstream = \"u\"\nmatch = { path_prefix = \"/v1\", headers = { accept-version = \"2\" } }\n\
             [[routes]]\nname = \"exact\"\nupstream = \"u\"\nmatch = { path = \"/v1\" }\n\
             [[routes]]\nname = \"wildcard\"\nupstream = \"u\"\nmatch = { host = \"*.example.com\" }\n\
             [[routes]]\nname = \"longer-wildcard\"\nupstream = \"u\"\nmatch = { host = \"*.api.example.com\" }\n\
             [[routes]]\nname = \"host\"\nupstream = \"u\"\nmatch = { host = \"API.example.com\" }\n\
             [[routes]]\nname = \"regex-2\"\nupstream = \"u\"\nmatch = { path_regex = \"/s/.*\" }\n",
        );
        assert_eq!(
            order,
            [
                "host",
                "longer-wildcard",
                "wildcard",
                "exact",
                "long-prefix",
                "prefix-with-header",
                "short-prefix",
                "regex",
                "regex-2",
                "any",
            ]
        );
    }

    #[test]
    fn shadowed_routes_are_reported() {
        let config = parse(&format!(
            "{UPSTREAM}\
             [[routes]]\nname = \"reads\"\nupstream = \"u\"\nmatch = {{ path_prefix = \"/a\", methods = [\"GET\", \"HEAD\"] }}\n\
             [[routes]]\nname = \"gets\"\nupstream = \"u\"\nmatch = {{ path_prefix = \"/a\", methods = [\"GET\"] }}\n\
             [[routes]]\nname = \"dup\"\nupstream = \"u\"\nmatch = {{ path_prefix = \"/a\", methods = [\"HEAD\", \"GET\"] }}\n\
             [[routes]]\nname = \"sub\"\nupstream = \"u\"\nmatch = {{ host = \"*.example.com\" }}\n\
             [[routes]]\nname = \"sub-sub\"\nupstream = \"u\"\nmatch = {{ host = \"*.example.com\", path_regex = \"/x\" }}\n\
             [[routes]]\nname = \"fine\"\nupstream = \"u\"\nmatch = {{ path_prefix = \"/a\", methods = [\"POST\"] }}\n\
             [[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n"
        ));
        assert_eq!(
            config.warnings,
            [
                "routes[1] (\"gets\") can never match: every request it matches goes to routes[0] (\"reads\"), which takes precedence",
                "routes[2] (\"dup\") can never match: every request it matches goes to routes[0] (\"reads\"), which takes precedence",
            ]
        );
    }

    #[test]
    fn versioning_by_prefix_and_header_compiles() {
        let config = parse(&format!(
            "{UPSTREAM}\
             [[routes]]\nname = \"v1\"\nupstream = \"u\"\nmatch = {{ path_prefix = \"/v1\" }}\nstrip_prefix = true\n\
             [[routes]]\nname = \"v2\"\nupstream = \"u\"\nmatch = {{ path_prefix = \"/v2\" }}\nrewrite_prefix = \"/api/v2\"\n\
             [[routes]]\nname = \"v2-header\"\nupstream = \"u\"\nmatch = {{ headers = {{ Accept-Version = \"2\" }} }}\n"
        ));
        let routes = &config.proxy.routes;
        assert_eq!(routes[0].rewrite_prefix.as_deref(), Some(""));
        assert_eq!(routes[1].rewrite_prefix.as_deref(), Some("/api/v2"));
        assert_eq!(routes[2].matcher.headers[0].0.as_str(), "accept-version");
    }

    #[test]
    fn tls_listener_problems_name_the_key_and_the_file() {
        let found = problems(
            "[limits]\ntls_handshake_timeout = \"0s\"\n\
             [[listeners]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nprotocol = \"https\"\n\
             [[listeners]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\n\
             tls = { certificates = [] }\n\
             [[listeners]]\nname = \"c\"\naddress = \"127.0.0.1:3\"\nprotocol = \"https\"\n\
             tls = { certificates = [] }\n\
             [[listeners]]\nname = \"d\"\naddress = \"127.0.0.1:4\"\nprotocol = \"https\"\n\
             tls = { default = \"x.test\", certificates = [{ cert = \"/nonexistent/d.pem\", \
             key = \"/nonexistent/d.key\", names = [\"bad name\", \"*.ok.test\", \"*.ok.test\"] }] }\n",
        );
        for prefix in [
            "limits.tls_handshake_timeout: must be longer than 0s",
            "listeners[0].tls: protocol = \"https\" needs tls",
            "listeners[1].tls: only used with protocol = \"https\"",
            "listeners[2].tls.certificates: needs at least one",
            "listeners[3].tls.certificates[0].names[0]: \"bad name\" is not a host name",
            "listeners[3].tls.certificates[0].names[2]: \"*.ok.test\" is also a name of listeners[3].tls.certificates[0]",
            "listeners[3].tls.certificates[0].cert: cannot read /nonexistent/d.pem",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(prefix)),
                "{prefix}\nnot in {found:#?}"
            );
        }
    }

    #[test]
    fn unknown_tls_keys_are_errors() {
        let text = format!(
            "{BASE}[[listeners]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nprotocol = \"https\"\n\
             tls = {{ certificates = [{{ cert = \"c\", key = \"k\", name = \"x\" }}] }}\n"
        );
        let Err(ParseError::Syntax(error)) = Config::parse(&text) else {
            panic!("expected a syntax error");
        };
        assert!(
            error.to_string().contains("unknown field `name`"),
            "{error}"
        );
    }
}
