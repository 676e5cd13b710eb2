//! Bulk import, read as it arrives: the networks are parsed line by line (never the text
//! whole), refused as soon as they outgrow the room left in the maps or the count the client
//! declared, then added all at once: one store transaction and batched map writes, or
//! nothing.

use ipnet::IpNet;

use super::{Firewall, FirewallError, FirewallResult, Inner, records::OperatorRule, store::Op};
use crate::api::{
    ImportRequest, RuleAction,
    import_lines::{ImportLines, LinesError},
    replication::Change,
    valid::{self, Invalid},
};

/// An import under way: the networks read so far.
#[derive(Debug)]
pub struct Import {
    lines: ImportLines,
    /// How many networks the client said it would send.
    declared: Option<usize>,
}

impl Import {
    /// The next bytes of the text, cut anywhere.
    pub fn push(&mut self, chunk: &[u8]) -> FirewallResult<()> {
        let declared = self.declared;
        self.lines
            .push(chunk)
            .map_err(|error| refused(declared, error))
    }
}

/// The lines' refusal in the firewall's words: past the count declared the request is wrong,
/// past the room left the maps are full.
fn refused(declared: Option<usize>, error: LinesError) -> FirewallError {
    match error {
        LinesError::Invalid(invalid) => invalid.into(),
        LinesError::TooMany { most } if declared == Some(most) => Invalid::new(
            "lines",
            format!("the body holds more than the {most} networks declared; nothing was imported"),
        )
        .into(),
        LinesError::TooMany { most } => FirewallError::Full(format!(
            "the import holds more than {most} rules, the room left in the maps; nothing was \
             imported; raise xdp.max_rules_v4/v6 and restart"
        )),
    }
}

impl Firewall {
    /// Starts an import. When the client declared how many networks it sends, an import that
    /// cannot fit is refused here, before its body is read.
    pub fn start_import(&self, declared: Option<usize>) -> FirewallResult<Import> {
        let room = {
            let inner = self.lock();
            if let Some(declared) = declared {
                inner.check_room(declared)?;
            }
            inner.room()
        };
        Ok(Import {
            lines: ImportLines::new(declared.unwrap_or(room)),
            declared,
        })
    }

    /// Adds every network read as a rule, or none of them: the rules go into the store in one
    /// transaction and into the maps in batches. Call it off the async workers (it syncs to
    /// disk).
    pub fn finish_import(
        &self,
        import: Import,
        action: RuleAction,
        comment: Option<&str>,
    ) -> FirewallResult<usize> {
        let comment = valid::comment("comment", comment)?;
        let Import { lines, declared } = import;
        let nets = lines.finish().map_err(|error| refused(declared, error))?;
        self.import_nets(nets, action, comment)
    }

    /// The JSON form ([`ImportRequest`]): its lines are counted before any is parsed.
    pub fn import(&self, request: &ImportRequest) -> FirewallResult<usize> {
        valid::comment("comment", request.comment.as_deref())?;
        let mut import = self.start_import(Some(candidate_lines(&request.text)))?;
        import.push(request.text.as_bytes())?;
        self.finish_import(import, request.action, request.comment.as_deref())
    }

    fn import_nets(
        &self,
        nets: Vec<IpNet>,
        action: RuleAction,
        comment: Option<String>,
    ) -> FirewallResult<usize> {
        let v4 = nets.iter().filter(|net| net.addr().is_ipv4()).count();
        let count = nets.len();
        {
            let mut inner = self.lock();
            inner.check_capacity(v4, count - v4)?;
            inner.check_new_rules(&nets)?;
            let first = inner.operator.next_seq;
            let rules: Vec<OperatorRule> = nets
                .iter()
                .enumerate()
                .map(|(index, &cidr)| OperatorRule {
                    cidr,
                    action,
                    comment: comment.clone(),
                    expires_at: None,
                    shadow: false,
                    seq: first + index as u64,
                })
                .collect();
            let ops = rules.iter().cloned().map(Op::PutRule).collect();
            let undo = nets.iter().copied().map(Op::DeleteRule).collect();
            inner.change_rules(
                (ops, undo),
                |operator| {
                    operator.next_seq += count as u64;
                    for rule in rules {
                        operator.rules.insert(rule);
                    }
                },
                |operator| {
                    operator.next_seq = first;
                    for net in &nets {
                        operator.rules.remove(net);
                    }
                },
                Some(&nets),
            )?;
        }
        // Made only for a cluster: a million changes nobody reads are not free.
        for net in nets.into_iter().filter(|_| self.publishes()) {
            self.publish(Change::AddRule {
                cidr: net.to_string(),
                action,
                comment: comment.clone(),
                expires_at: None,
                shadow: false,
            });
        }
        tracing::info!(count, "operator rules imported");
        Ok(count)
    }
}

impl Inner {
    /// Rules that can still be added, both families together.
    fn room(&self) -> usize {
        let used = self.firewall.rules.len() + self.operator.rules.len();
        (self.capacity.0 + self.capacity.1).saturating_sub(used)
    }

    /// Refuses an import of up to `most` rules when even that many cannot fit: the cheap
    /// check, before anything is parsed.
    fn check_room(&self, most: usize) -> FirewallResult<()> {
        if most > self.room() {
            return Err(FirewallError::Full(format!(
                "{most} rules do not fit: the maps hold {} IPv4 and {} IPv6 rules and {} are \
                 in use; raise xdp.max_rules_v4/v6 and restart",
                self.capacity.0,
                self.capacity.1,
                self.firewall.rules.len() + self.operator.rules.len()
            )));
        }
        Ok(())
    }
}

/// Lines of an import that hold a network: an upper bound on the rules it adds, counted
/// before anything is parsed.
fn candidate_lines(text: &str) -> usize {
    text.lines()
        .filter(|line| !line.split('#').next().unwrap_or("").trim().is_empty())
        .count()
}
