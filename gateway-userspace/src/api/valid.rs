//! The ranges of what the admin API accepts, one `validate` per request type. Every request
//! is checked here before anything is stored, persisted or sent to other nodes, whether it
//! came from the admin socket, the TCP listener, the CLI or another node of the cluster; a
//! value out of range is a 400 that names the field and the range. The state file is held to
//! the same ranges when it is loaded, so nothing the daemon writes fails to load again.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;

use super::{
    BanRequest, ImportRequest, KnownGoodRequest, MAX_PAGE, PageQuery, RemoveRuleRequest,
    RuleAction, RuleRequest, UnbanRequest,
    import_lines::{ImportLines, LinesError},
};

/// Longest ban, rule TTL or known-good TTL: 10 years.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Shortest: anything below a millisecond has expired before it is written.
pub const MIN_DURATION: Duration = Duration::from_millis(1);
/// How far a saved or remote expiry may lie beyond [`MAX_DURATION`] from now: the clocks of
/// two nodes, or of one host across a restart, differ a little.
pub const CLOCK_SLACK: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest comment on a rule or ban, in bytes.
pub const MAX_COMMENT: usize = 1024;

/// A request field out of range: the field and what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: &str, reason: impl Into<String>) -> Invalid {
        Invalid {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A number of seconds from [`MIN_DURATION`] to [`MAX_DURATION`]; fractions allowed.
pub fn duration(field: &str, secs: f64) -> Result<Duration, Invalid> {
    if secs.is_finite() && secs >= MIN_DURATION.as_secs_f64() && secs <= MAX_DURATION.as_secs_f64()
    {
        return Ok(Duration::from_secs_f64(secs));
    }
    Err(Invalid::new(
        field,
        format!(
            "must be a number of seconds from {} to {} (10 years), not {secs}",
            MIN_DURATION.as_secs_f64(),
            MAX_DURATION.as_secs()
        ),
    ))
}

/// An optional duration: absent (or `null`) is "until removed".
pub fn optional_duration(field: &str, secs: Option<f64>) -> Result<Option<Duration>, Invalid> {
    secs.map(|secs| duration(field, secs)).transpose()
}

/// A wall-clock expiry (Unix seconds) saved in the state file or sent by another node:
/// the seconds left, at most [`MAX_DURATION`]. One further ahead than the API can set
/// (beyond [`CLOCK_SLACK`]) was not written by a daemon in its right mind: refused.
pub fn expiry(field: &str, expires_at: f64, now: f64) -> Result<f64, Invalid> {
    let left = expires_at - now;
    if left.is_finite() && left <= (MAX_DURATION + CLOCK_SLACK).as_secs_f64() {
        return Ok(left.min(MAX_DURATION.as_secs_f64()));
    }
    Err(Invalid::new(
        field,
        format!(
            "{expires_at} (Unix seconds) is more than 10 years ({} s) from now ({now:.0})",
            MAX_DURATION.as_secs()
        ),
    ))
}

/// An address or CIDR as the API accepts it (`192.0.2.7`, `2001:db8::/64`), host bits clear.
pub fn cidr(field: &str, text: &str) -> Result<IpNet, Invalid> {
    let net = text
        .parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            Invalid::new(
                field,
                format!("{text:?} is not an IP address or CIDR (e.g. 192.0.2.7, 2001:db8::/64)"),
            )
        })?;
    if net.trunc() != net {
        return Err(Invalid::new(
            field,
            format!("{text:?} has host bits set: did you mean {}?", net.trunc()),
        ));
    }
    Ok(net)
}

/// A single address (`192.0.2.7`, `2001:db8::7`).
pub fn address(field: &str, text: &str) -> Result<IpAddr, Invalid> {
    text.parse().map_err(|_| {
        Invalid::new(
            field,
            format!("{text:?} is not an IP address (e.g. 192.0.2.7, 2001:db8::7)"),
        )
    })
}

/// A comment of at most [`MAX_COMMENT`] bytes; an empty one is none.
pub fn comment(field: &str, text: Option<&str>) -> Result<Option<String>, Invalid> {
    match text {
        Some(text) if text.len() > MAX_COMMENT => Err(Invalid::new(
            field,
            format!("is {} bytes long; at most {MAX_COMMENT}", text.len()),
        )),
        Some("") | None => Ok(None),
        Some(text) => Ok(Some(text.to_owned())),
    }
}

/// A checked [`BanRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidBan {
    pub net: IpNet,
    /// `None`: until unbanned.
    pub duration: Option<Duration>,
    pub comment: Option<String>,
}

impl BanRequest {
    pub fn validate(&self) -> Result<ValidBan, Invalid> {
        Ok(ValidBan {
            net: cidr("cidr", &self.cidr)?,
            duration: optional_duration("duration_secs", self.duration_secs)?,
            comment: comment("comment", self.comment.as_deref())?,
        })
    }
}

impl UnbanRequest {
    pub fn validate(&self) -> Result<IpNet, Invalid> {
        cidr("cidr", &self.cidr)
    }
}

/// A checked [`RuleRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRule {
    pub net: IpNet,
    pub action: RuleAction,
    pub comment: Option<String>,
    /// `None`: until removed.
    pub ttl: Option<Duration>,
    pub shadow: bool,
}

impl RuleRequest {
    pub fn validate(&self) -> Result<ValidRule, Invalid> {
        if self.shadow && self.action != RuleAction::Deny {
            return Err(Invalid::new(
                "shadow",
                "only deny rules can be shadow (dry-run) rules",
            ));
        }
        Ok(ValidRule {
            net: cidr("cidr", &self.cidr)?,
            action: self.action,
            comment: comment("comment", self.comment.as_deref())?,
            ttl: optional_duration("ttl_secs", self.ttl_secs)?,
            shadow: self.shadow,
        })
    }
}

impl RemoveRuleRequest {
    pub fn validate(&self) -> Result<IpNet, Invalid> {
        cidr("cidr", &self.cidr)
    }
}

impl ImportRequest {
    /// Every network of `text`, one per line (`#` starts a comment), and the comment.
    pub fn validate(&self) -> Result<(Vec<IpNet>, Option<String>), Invalid> {
        let comment = comment("comment", self.comment.as_deref())?;
        let mut lines = ImportLines::new(usize::MAX);
        let nets = lines
            .push(self.text.as_bytes())
            .and_then(|()| lines.finish());
        match nets {
            Ok(nets) => Ok((nets, comment)),
            Err(LinesError::Invalid(invalid)) => Err(invalid),
            Err(LinesError::TooMany { most }) => Err(Invalid::new(
                "text",
                format!("holds more than {most} networks"),
            )),
        }
    }
}

/// A page of a listing: at most `limit` entries (all if `None`), those after `after`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValidPage {
    pub limit: Option<usize>,
    pub after: Option<IpNet>,
}

impl PageQuery {
    pub fn validate(&self) -> Result<ValidPage, Invalid> {
        let limit = match self.limit {
            Some(limit) if (1..=MAX_PAGE).contains(&limit) => Some(limit),
            Some(limit) => {
                return Err(Invalid::new(
                    "limit",
                    format!("must be from 1 to {MAX_PAGE}, not {limit}"),
                ));
            }
            None => None,
        };
        let after = self
            .after
            .as_deref()
            .map(|after| cidr("after", after))
            .transpose()?;
        Ok(ValidPage { limit, after })
    }
}

impl KnownGoodRequest {
    /// The address, and how long (`None`: `defend.under_attack.known_good_ttl`).
    pub fn validate(&self) -> Result<(IpAddr, Option<Duration>), Invalid> {
        Ok((
            address("address", &self.address)?,
            optional_duration("ttl_secs", self.ttl_secs)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: f64 = MAX_DURATION.as_secs_f64();

    /// Every duration field of every request, through JSON as the API receives it.
    fn ban(duration: serde_json::Value) -> Result<Option<Duration>, String> {
        let body = serde_json::json!({"cidr": "192.0.2.7", "duration_secs": duration});
        let request: BanRequest = serde_json::from_value(body).map_err(|e| e.to_string())?;
        request
            .validate()
            .map(|ban| ban.duration)
            .map_err(|e| e.to_string())
    }

    fn rule(ttl: serde_json::Value) -> Result<Option<Duration>, String> {
        let body = serde_json::json!({"cidr": "192.0.2.0/24", "action": "deny", "ttl_secs": ttl});
        let request: RuleRequest = serde_json::from_value(body).map_err(|e| e.to_string())?;
        request
            .validate()
            .map(|rule| rule.ttl)
            .map_err(|e| e.to_string())
    }

    fn known_good(ttl: serde_json::Value) -> Result<Option<Duration>, String> {
        let body = serde_json::json!({"address": "192.0.2.7", "ttl_secs": ttl});
        let request: KnownGoodRequest = serde_json::from_value(body).map_err(|e| e.to_string())?;
        request
            .validate()
            .map(|(_, ttl)| ttl)
            .map_err(|e| e.to_string())
    }

    /// One request's duration field, sent as JSON and validated.
    type Check = fn(serde_json::Value) -> Result<Option<Duration>, String>;

    /// What a duration value must come to.
    #[derive(Debug, Clone, Copy)]
    enum Want {
        Secs(Option<f64>),
        /// 400 naming the field and the range.
        OutOfRange,
        /// Refused when the body is read: not a number.
        NotANumber,
    }

    #[test]
    fn durations_are_checked_at_their_boundaries_in_every_request() {
        use Want::*;
        use serde_json::json;
        let table = [
            (json!(null), Secs(None)),
            (json!(0.001), Secs(Some(0.001))),
            (json!(1), Secs(Some(1.0))),
            (json!(1.5), Secs(Some(1.5))),
            (json!(3600), Secs(Some(3600.0))),
            (json!(MAX), Secs(Some(MAX))),
            (json!(MAX_DURATION.as_secs()), Secs(Some(MAX))),
            (json!(0), OutOfRange),
            (json!(0.0), OutOfRange),
            (json!(-0.0), OutOfRange),
            (json!(0.0009), OutOfRange),
            (json!(-1), OutOfRange),
            (json!(-1.5), OutOfRange),
            (json!(-1e20), OutOfRange),
            (json!(MAX + 0.5), OutOfRange),
            (json!(MAX_DURATION.as_secs() + 1), OutOfRange),
            (json!(1e20), OutOfRange),
            (json!(u64::MAX), OutOfRange),
            (json!(i64::MIN), OutOfRange),
            (json!(f64::MAX), OutOfRange),
            (json!("10"), NotANumber),
            (json!("1h"), NotANumber),
            (json!(true), NotANumber),
            (json!([1]), NotANumber),
            (json!({"secs": 1}), NotANumber),
        ];
        let checks: [(&str, Check); 3] = [
            ("duration_secs", ban),
            ("ttl_secs", rule),
            ("ttl_secs", known_good),
        ];
        for (field, check) in checks {
            for (value, want) in &table {
                let got = check(value.clone());
                match (want, &got) {
                    (Secs(secs), Ok(got)) => {
                        assert_eq!(*got, secs.map(Duration::from_secs_f64), "{field} = {value}")
                    }
                    (OutOfRange, Err(message)) => assert!(
                        message.starts_with(&format!("{field}: must be a number of seconds"))
                            && message.contains("from 0.001 to 315360000 (10 years)"),
                        "{field} = {value}: {message}"
                    ),
                    (NotANumber, Err(message)) => {
                        assert!(
                            message.starts_with("invalid type"),
                            "{field} = {value}: {message}"
                        )
                    }
                    _ => panic!("{field} = {value}: expected {want:?}, got {got:?}"),
                }
            }
        }
    }

    #[test]
    fn non_finite_durations_are_refused() {
        for secs in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -f64::MIN_POSITIVE,
        ] {
            let error = duration("duration_secs", secs).unwrap_err();
            assert_eq!(error.field, "duration_secs");
        }
    }

    #[test]
    fn saved_and_remote_expiries_are_checked_against_now() {
        let now = 1.7e9;
        let table = [
            (now + 60.0, Some(60.0)),
            (now - 5.0, Some(-5.0)),
            (now + MAX, Some(MAX)),
            // A little past the maximum (another node's clock is ahead): capped.
            (now + MAX + 3600.0, Some(MAX)),
            (now + MAX + CLOCK_SLACK.as_secs_f64() + 1.0, None),
            (1e20, None),
            (f64::MAX, None),
            (f64::INFINITY, None),
            (f64::NAN, None),
        ];
        for (expires_at, expected) in table {
            let got = expiry("expires_at", expires_at, now).ok();
            assert_eq!(got, expected, "{expires_at}");
        }
    }

    #[test]
    fn cidrs_comments_and_addresses() {
        assert_eq!(
            cidr("cidr", "192.0.2.7").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(cidr("cidr", "2001:db8::/64").unwrap().prefix_len(), 64);
        for bad in [
            "",
            " ",
            "192.0.2.7/33",
            "10.0.0.1/8",
            "1e20",
            "-1",
            "::/129",
            "a.b.c.d",
        ] {
            let error = cidr("cidr", bad).unwrap_err();
            assert_eq!(error.field, "cidr", "{bad:?}");
        }
        assert!(address("address", "10.0.0.0/8").is_err());
        assert_eq!(comment("comment", Some("")).unwrap(), None);
        let longest = "x".repeat(MAX_COMMENT);
        assert_eq!(
            comment("comment", Some(&longest)).unwrap().unwrap().len(),
            MAX_COMMENT
        );
        let error = comment("comment", Some(&format!("{longest}x"))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "comment: is 1025 bytes long; at most 1024"
        );
    }

    #[test]
    fn a_shadow_rule_must_deny_and_an_import_names_its_bad_line() {
        let shadow_allow = RuleRequest {
            cidr: "192.0.2.0/24".into(),
            action: RuleAction::Allow,
            comment: None,
            ttl_secs: None,
            shadow: true,
        };
        assert_eq!(shadow_allow.validate().unwrap_err().field, "shadow");
        let import = ImportRequest {
            action: RuleAction::Deny,
            text: "# scanners\n192.0.2.0/24\n\n198.51.100.7 # one\n1e20\n".into(),
            comment: None,
        };
        let error = import.validate().unwrap_err();
        assert_eq!(error.field, "text");
        assert!(error.reason.starts_with("line 5: \"1e20\""), "{error}");
        let (nets, _) = ImportRequest {
            text: "192.0.2.0/24\n198.51.100.7 # one".into(),
            ..import
        }
        .validate()
        .unwrap();
        assert_eq!(nets.len(), 2);
    }
}
