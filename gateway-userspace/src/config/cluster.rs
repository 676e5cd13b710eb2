//! `[cluster]`: several gateways sharing rate limits, bans, operator rules and metering totals
//! through one Redis server. Without the section nothing changes.

use std::{fmt, time::Duration};

use serde::Deserialize;

use super::Problems;

/// The environment variable holding the Redis password unless `cluster.password_env` says.
pub const DEFAULT_PASSWORD_ENV: &str = "GATEWAY_REDIS_PASSWORD";

/// What cluster-wide rate limits do while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisDown {
    /// Fail open: each node enforces the limit on its own, at the full rate.
    #[default]
    Local,
    /// Fail closed: requests under a cluster-wide limit are refused.
    Deny,
}

/// The validated `[cluster]` section.
#[derive(Clone, PartialEq)]
pub struct ClusterConfig {
    /// `redis://host:port/db` or `rediss://` (TLS), without a password.
    pub redis: String,
    /// From the environment variable `cluster.password_env` names, if it is set.
    pub password: Option<String>,
    /// This node's name in events and logs; defaults to the host name.
    pub node: String,
    pub on_redis_down: OnRedisDown,
    /// Prepended to every Redis key and channel (`{prefix}:events`, `{prefix}:bans`, ...).
    pub key_prefix: String,
    /// How often metering deltas are added to the cluster totals.
    pub metering_interval: Duration,
    /// With `rediss://`: the CA certificates (PEM) that sign the server's certificate, read at
    /// load; `None`: the Mozilla roots (webpki-roots).
    pub tls_ca: Option<Vec<u8>>,
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis", &self.redis)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("node", &self.node)
            .field("on_redis_down", &self.on_redis_down)
            .field("key_prefix", &self.key_prefix)
            .field("metering_interval", &self.metering_interval)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    redis: String,
    password_env: Option<String>,
    node: Option<String>,
    #[serde(default)]
    on_redis_down: OnRedisDown,
    key_prefix: Option<String>,
    metering_interval: Option<String>,
    tls_ca_file: Option<std::path::PathBuf>,
}

impl RawCluster {
    pub(super) fn compile(self, problems: &mut Problems) -> Option<ClusterConfig> {
        match self.redis.split_once("://") {
            Some(("redis" | "rediss", rest)) if !rest.is_empty() => {
                let authority = rest.split('/').next().unwrap_or("");
                if let Some((userinfo, _)) = authority.rsplit_once('@')
                    && userinfo.contains(':')
                {
                    problems.add(
                        "cluster.redis",
                        "must not hold a password: put it in the environment variable \
                         cluster.password_env names (default $GATEWAY_REDIS_PASSWORD)",
                    );
                }
                if let Err(error) = redis::Client::open(self.redis.as_str()) {
                    problems.add(
                        "cluster.redis",
                        format!("{:?} is not a valid Redis URL: {error}", self.redis),
                    );
                }
            }
            _ => problems.add(
                "cluster.redis",
                format!(
                    "{:?} is not a redis:// or rediss:// URL (e.g. \"redis://127.0.0.1:6379/0\")",
                    self.redis
                ),
            ),
        }
        let variable = self.password_env.as_deref().unwrap_or(DEFAULT_PASSWORD_ENV);
        if variable.is_empty() {
            problems.add("cluster.password_env", "must not be empty");
        }
        let password = std::env::var(variable).ok().filter(|p| !p.is_empty());
        if self.password_env.is_some() && password.is_none() {
            problems.add(
                "cluster.password_env",
                format!("the environment variable ${variable} is not set or empty"),
            );
        }
        let node = self.node.unwrap_or_else(hostname);
        if node.is_empty() || node.len() > 64 || node.chars().any(|c| c.is_whitespace()) {
            problems.add(
                "cluster.node",
                format!("{node:?} must be 1 to 64 characters without spaces"),
            );
        }
        let key_prefix = self.key_prefix.unwrap_or_else(|| "gateway".to_owned());
        if key_prefix.is_empty() || key_prefix.chars().any(|c| c.is_whitespace()) {
            problems.add(
                "cluster.key_prefix",
                format!("{key_prefix:?} must be non-empty without spaces"),
            );
        }
        let metering_interval = super::units::duration(
            self.metering_interval,
            "cluster.metering_interval",
            problems,
        )
        .unwrap_or(Duration::from_secs(5));
        let tls_ca = match &self.tls_ca_file {
            Some(_) if !self.redis.starts_with("rediss://") => {
                problems.add(
                    "cluster.tls_ca_file",
                    "only applies to rediss:// (TLS) URLs",
                );
                None
            }
            Some(path) => match std::fs::read(path) {
                Ok(pem) if pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => {
                    Some(pem)
                }
                Ok(_) => {
                    problems.add(
                        "cluster.tls_ca_file",
                        format!("{} holds no PEM certificate", path.display()),
                    );
                    None
                }
                Err(error) => {
                    problems.add(
                        "cluster.tls_ca_file",
                        format!("cannot read {}: {error}", path.display()),
                    );
                    None
                }
            },
            None => None,
        };
        Some(ClusterConfig {
            redis: self.redis,
            password,
            node,
            on_redis_down: self.on_redis_down,
            key_prefix,
            metering_interval,
            tls_ca,
            tls_ca_file: self.tls_ca_file,
        })
    }
}

/// The host name (the default node name), or "gateway" if it cannot be read.
fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(0);
    match std::str::from_utf8(&buffer[..end]) {
        Ok(name) if result == 0 && !name.is_empty() => name.to_owned(),
        _ => "gateway".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ParseError};

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(&format!("[xdp]\nmode = \"off\"\n{text}")) {
            Err(ParseError::Invalid(problems)) => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    #[test]
    fn cluster_defaults() {
        let config =
            Config::parse("[xdp]\nmode = \"off\"\n[cluster]\nredis = \"redis://127.0.0.1:6379/0\"")
                .unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.key_prefix, "gateway");
        assert_eq!(cluster.on_redis_down, super::OnRedisDown::Local);
        assert!(!cluster.node.is_empty());
        assert!(
            Config::parse("[xdp]\nmode = \"off\"")
                .unwrap()
                .cluster
                .is_none()
        );
    }

    #[test]
    fn cluster_errors_name_the_key() {
        assert_eq!(
            problems("[cluster]\nredis = \"http://x\"\nnode = \"a b\"\nkey_prefix = \"\""),
            [
                "cluster.redis: \"http://x\" is not a redis:// or rediss:// URL (e.g. \"redis://127.0.0.1:6379/0\")",
                "cluster.node: \"a b\" must be 1 to 64 characters without spaces",
                "cluster.key_prefix: \"\" must be non-empty without spaces",
            ]
        );
        let found = problems("[cluster]\nredis = \"redis://u:secret@127.0.0.1/0\"");
        assert!(
            found[0].starts_with("cluster.redis: must not hold a password"),
            "{found:?}"
        );
        let found = problems(
            "[cluster]\nredis = \"redis://127.0.0.1\"\npassword_env = \"GATEWAY_TEST_UNSET_VARIABLE_X\"",
        );
        assert_eq!(
            found,
            [
                "cluster.password_env: the environment variable $GATEWAY_TEST_UNSET_VARIABLE_X is not set or empty"
            ]
        );
        assert_eq!(
            problems("[cluster]\nredis = \"redis://h\"\ntls_ca_file = \"/nonexistent\""),
            ["cluster.tls_ca_file: only applies to rediss:// (TLS) URLs"]
        );
        let found =
            problems("[cluster]\nredis = \"rediss://h\"\ntls_ca_file = \"/nonexistent/ca.pem\"");
        assert!(
            found[0].starts_with("cluster.tls_ca_file: cannot read /nonexistent/ca.pem"),
            "{found:?}"
        );
        let Err(ParseError::Syntax(error)) = Config::parse(
            "[xdp]\nmode = \"off\"\n[cluster]\nredis = \"redis://h\"\non_redis_down = \"maybe\"",
        ) else {
            panic!("expected a syntax error");
        };
        assert!(
            error.to_string().contains("unknown variant `maybe`"),
            "{error}"
        );
    }
}
