//! Listings read a page at a time: at most `--limit` entries, or all of them in pages, so
//! listing a million rules holds one page in memory, never the whole list.

use serde::de::DeserializeOwned;

use crate::{
    api::{BanList, MAX_PAGE, RuleList},
    control::Client,
};

/// Entries asked for per request.
const PAGE: usize = 1000;
const _: () = assert!(PAGE <= MAX_PAGE);

#[derive(clap::Args, Debug, Clone, Default)]
pub struct PageArgs {
    /// Print at most N entries; the cursor for the rest goes to stderr.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Start after this entry (the cursor an earlier --limit printed).
    #[arg(long, value_name = "CIDR")]
    pub after: Option<String>,
}

/// One page of a listing.
pub trait Listing: DeserializeOwned {
    fn len(&self) -> usize;
    /// Where the next page starts, if one follows.
    fn next(&self) -> Option<&str>;
}

impl Listing for RuleList {
    fn len(&self) -> usize {
        self.rules.len()
    }
    fn next(&self) -> Option<&str> {
        self.next.as_deref()
    }
}

impl Listing for BanList {
    fn len(&self) -> usize {
        self.bans.len()
    }
    fn next(&self) -> Option<&str> {
        self.next.as_deref()
    }
}

/// Walks a listing page by page.
pub struct Pager<'a> {
    client: &'a Client,
    path: &'static str,
    /// Entries still to print (`None`: all).
    left: Option<usize>,
    after: Option<String>,
    done: bool,
}

impl<'a> Pager<'a> {
    pub fn new(client: &'a Client, path: &'static str, args: &PageArgs) -> anyhow::Result<Self> {
        if args.limit == Some(0) {
            anyhow::bail!("--limit: give 1 or more entries");
        }
        Ok(Pager {
            client,
            path,
            left: args.limit,
            after: args.after.clone(),
            done: false,
        })
    }

    /// The next page; `None` at the end of the listing or once `--limit` entries came.
    pub async fn next<P: Listing>(&mut self) -> anyhow::Result<Option<P>> {
        if self.done {
            return Ok(None);
        }
        let size = self.left.map_or(PAGE, |left| left.min(PAGE));
        let mut path = format!("{}?limit={size}", self.path);
        if let Some(after) = &self.after {
            path.push_str("&after=");
            path.push_str(&encode(after));
        }
        let page: P = self.client.get(&path).await?;
        if let Some(left) = &mut self.left {
            *left = left.saturating_sub(page.len());
        }
        self.after = page.next().map(str::to_owned);
        self.done = self.after.is_none() || self.left == Some(0);
        Ok(Some(page))
    }

    /// Where to continue when `--limit` stopped the listing before its end.
    pub fn more(&self) -> Option<&str> {
        self.after.as_deref().filter(|_| self.done)
    }
}

/// Percent-encodes all but the characters of an address or CIDR, so any `--after` reaches
/// the daemon as typed (and a bad one is refused there, by name).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'.' | b':' | b'/' | b'-' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Tells the operator how to go on after a `--limit` page.
pub fn print_more(pager: &Pager<'_>, command: &str) {
    if let Some(cursor) = pager.more() {
        eprintln!("more follow: {command} --after {cursor}");
    }
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn cursors_reach_the_daemon_as_typed() {
        assert_eq!(encode("10.0.0.0/24"), "10.0.0.0/24");
        assert_eq!(encode("fd00::1/128"), "fd00::1/128");
        assert_eq!(encode("a b&c=d%"), "a%20b%26c%3Dd%25");
    }
}
