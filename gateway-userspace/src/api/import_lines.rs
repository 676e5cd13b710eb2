//! An import's text parsed a chunk at a time, as it arrives: one address or CIDR per line,
//! `#` starts a comment. Only the line being read is buffered, so a blocklist costs the
//! networks it holds, never its text.

use ipnet::IpNet;

use super::{
    RuleAction,
    valid::{Invalid, cidr},
};

/// What a streamed import says besides its lines, in the query:
/// `?action=deny&comment=TEXT&lines=N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportQuery {
    pub action: RuleAction,
    pub comment: Option<String>,
    /// Networks the body will hold, when the client counted them: an import that cannot fit
    /// is refused before its body is read.
    pub lines: Option<usize>,
}

impl ImportQuery {
    /// The query string, without the `?`.
    pub fn encode(&self) -> String {
        let action = match self.action {
            RuleAction::Allow => "allow",
            RuleAction::Deny => "deny",
        };
        let mut query = format!("action={action}");
        if let Some(comment) = &self.comment {
            query.push_str("&comment=");
            for byte in comment.bytes() {
                match byte {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        query.push(byte as char)
                    }
                    _ => query.push_str(&format!("%{byte:02X}")),
                }
            }
        }
        if let Some(lines) = self.lines {
            query.push_str(&format!("&lines={lines}"));
        }
        query
    }
}

/// Longest line accepted (a network and its comment): a body without newlines is refused
/// here instead of being buffered whole.
pub const MAX_LINE: usize = 64 << 10;
/// Longer than any network's text (`ffff:...:ffff/128` is 43 bytes).
const LONGEST_NETWORK: usize = 64;

/// Why the lines were refused.
#[derive(Debug, Clone, PartialEq)]
pub enum LinesError {
    /// A line that is not a network (names the line, field `text`).
    Invalid(Invalid),
    /// More networks than the `most` given to [`ImportLines::new`].
    TooMany { most: usize },
}

/// The networks read so far, and the unfinished line.
#[derive(Debug)]
pub struct ImportLines {
    nets: Vec<IpNet>,
    partial: Vec<u8>,
    /// Lines completed, for the error messages (1-based once one is read).
    line: usize,
    most: usize,
}

impl ImportLines {
    /// Refuses past `most` networks, before reading further.
    pub fn new(most: usize) -> ImportLines {
        ImportLines {
            nets: Vec::new(),
            partial: Vec::new(),
            line: 0,
            most,
        }
    }

    /// Networks read so far.
    pub fn count(&self) -> usize {
        self.nets.len()
    }

    /// The next bytes of the text, cut anywhere (within a line, or a UTF-8 character).
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<(), LinesError> {
        while let Some(end) = chunk.iter().position(|&byte| byte == b'\n') {
            if self.partial.is_empty() {
                self.line_done(&chunk[..end])?;
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&chunk[..end]);
                self.line_done(&line)?;
                line.clear();
                self.partial = line;
            }
            chunk = &chunk[end + 1..];
        }
        if self.partial.len() + chunk.len() > MAX_LINE {
            return Err(self.invalid(
                self.line + 1,
                format!("is longer than {} KiB", MAX_LINE >> 10),
            ));
        }
        self.partial.extend_from_slice(chunk);
        Ok(())
    }

    /// The text ended: its last line (without a newline) and every network.
    pub fn finish(mut self) -> Result<Vec<IpNet>, LinesError> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line_done(&line)?;
        }
        Ok(self.nets)
    }

    fn line_done(&mut self, line: &[u8]) -> Result<(), LinesError> {
        self.line += 1;
        if line.len() > MAX_LINE {
            return Err(self.invalid(self.line, format!("is longer than {} KiB", MAX_LINE >> 10)));
        }
        // The comment may be any bytes: only the network must be text.
        let network = line.split(|&byte| byte == b'#').next().unwrap_or(&[]);
        let network = std::str::from_utf8(network)
            .map_err(|_| self.invalid(self.line, "is not UTF-8 text".to_owned()))?
            .trim();
        if network.is_empty() {
            return Ok(());
        }
        // Not echoed whole: no network is this long.
        if network.len() > LONGEST_NETWORK {
            return Err(self.invalid(
                self.line,
                format!(
                    "{:?}... ({} bytes) is not an IP address or CIDR",
                    network.chars().take(LONGEST_NETWORK).collect::<String>(),
                    network.len()
                ),
            ));
        }
        if self.nets.len() == self.most {
            return Err(LinesError::TooMany { most: self.most });
        }
        let net =
            cidr("text", network).map_err(|invalid| self.invalid(self.line, invalid.reason))?;
        self.nets.push(net);
        Ok(())
    }

    fn invalid(&self, line: usize, reason: String) -> LinesError {
        LinesError::Invalid(Invalid::new(
            "text",
            format!("line {line}: {reason}; nothing was imported"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(text: &[u8], most: usize) -> Result<Vec<IpNet>, LinesError> {
        let mut lines = ImportLines::new(most);
        lines.push(text)?;
        lines.finish()
    }

    fn reason(result: Result<Vec<IpNet>, LinesError>) -> String {
        match result {
            Err(LinesError::Invalid(invalid)) => invalid.reason,
            other => panic!("expected an invalid line, got {other:?}"),
        }
    }

    #[test]
    fn lines_comments_blanks_and_line_ends() {
        let cases: &[(&[u8], &[&str])] = &[
            (b"", &[]),
            (b"\n\n\n", &[]),
            (b"# only a comment", &[]),
            (b"192.0.2.7", &["192.0.2.7/32"]),
            (b"192.0.2.0/24\n", &["192.0.2.0/24"]),
            (
                b"192.0.2.0/24\r\n2001:db8::/32\r\n",
                &["192.0.2.0/24", "2001:db8::/32"],
            ),
            (b"  198.51.100.7   # one\n\t# two\n", &["198.51.100.7/32"]),
            (b"192.0.2.1#no space\n", &["192.0.2.1/32"]),
            // A comment in another encoding is still a comment.
            (b"192.0.2.2 # caf\xe9\n", &["192.0.2.2/32"]),
            (b"::\n::1\n", &["::/128", "::1/128"]),
        ];
        for (text, expected) in cases {
            let nets = parse(text, usize::MAX).unwrap();
            let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
            assert_eq!(&nets, expected, "{:?}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn a_bad_line_is_named_by_its_number() {
        let cases: &[(&[u8], &str)] = &[
            (b"1e20", "line 1: \"1e20\""),
            (
                b"192.0.2.0/24\n\n# c\n192.0.2.1/24\n",
                "line 4: \"192.0.2.1/24\" has host bits",
            ),
            (b"192.0.2.0/33", "line 1: \"192.0.2.0/33\""),
            (b"192.0.2.0 /24", "line 1: \"192.0.2.0 /24\""),
            (b"ok\n", "line 1: \"ok\""),
            (b"\n\xff\xfe\n", "line 2: is not UTF-8"),
            (
                b"192.0.2.1\n192.0.2.2, 192.0.2.3",
                "line 2: \"192.0.2.2, 192.0.2.3\"",
            ),
            (b"-1\n", "line 1: \"-1\""),
            (b"2001:db8:::/64\n", "line 1: \"2001:db8:::/64\""),
            (b"192.0.2.1\x00\n", "line 1: \"192.0.2.1\\0\""),
            (&[b'1'; 100], "line 1: \"1111"),
            (&[b'7'; MAX_LINE + 1], "line 1: is longer than 64 KiB"),
        ];
        for (text, start) in cases {
            let reason = reason(parse(text, usize::MAX));
            assert!(reason.starts_with(start), "{reason:?} for {text:?}");
            assert!(reason.ends_with("nothing was imported"), "{reason}");
            assert!(reason.len() < 300, "the line is not echoed whole: {reason}");
        }
    }

    #[test]
    fn a_line_without_end_is_refused_at_its_limit_not_buffered() {
        let mut lines = ImportLines::new(usize::MAX);
        lines.push(b"192.0.2.1\n").unwrap();
        let mut refused = None;
        // Bounded: the limit is crossed within MAX_LINE / 1000 + 1 chunks.
        for _ in 0..=MAX_LINE / 1000 + 1 {
            if let Err(error) = lines.push(&[b'#'; 1000]) {
                refused = Some(error);
                break;
            }
        }
        let Some(LinesError::Invalid(invalid)) = refused else {
            panic!("a line past {MAX_LINE} bytes was accepted");
        };
        assert!(
            invalid.reason.starts_with("line 2: is longer than 64 KiB"),
            "{invalid}"
        );
        assert!(lines.partial.len() <= MAX_LINE);
    }

    #[test]
    fn more_networks_than_allowed_stop_at_the_first_one_over() {
        let text = b"# header\n192.0.2.1\n192.0.2.2\n\n192.0.2.3\n";
        assert_eq!(parse(text, 3).unwrap().len(), 3);
        for most in 0..3 {
            let mut lines = ImportLines::new(most);
            assert_eq!(lines.push(text), Err(LinesError::TooMany { most }));
            assert_eq!(lines.count(), most);
        }
        // Blank lines and comments do not count.
        assert!(parse(b"\n# a\n\n# b\n", 0).unwrap().is_empty());
    }

    proptest! {
        /// However the text is cut into chunks, the networks (or the refusal) are the same.
        #[test]
        fn chunk_boundaries_do_not_matter(
            lines in prop::collection::vec(prop_oneof![
                Just("192.0.2.7".to_owned()),
                Just("2001:db8::/48 # v6".to_owned()),
                Just("".to_owned()),
                Just("   # é comment".to_owned()),
                Just("10.1.0.0/16\r".to_owned()),
                Just("bad".to_owned()),
                (0u8..=255, 0u8..=32).prop_map(|(a, p)| format!("{a}.0.0.0/{p}")),
            ], 0..40),
            cuts in prop::collection::vec(0usize..400, 0..12),
            trailing_newline: bool,
        ) {
            let mut text = lines.join("\n");
            if trailing_newline {
                text.push('\n');
            }
            let text = text.as_bytes();
            let whole = parse(text, usize::MAX);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|cut| cut % (text.len() + 1)).collect();
            cuts.sort_unstable();
            let mut lines = ImportLines::new(usize::MAX);
            let mut start = 0;
            let mut chunked = Ok(());
            for cut in cuts.into_iter().chain([text.len()]) {
                chunked = chunked.and_then(|()| lines.push(&text[start..cut]));
                start = cut;
            }
            let chunked = chunked.and_then(|()| lines.finish());
            prop_assert_eq!(whole, chunked);
        }
    }
}
