//! `gateway top`: a live view of what the kernel drops, refreshed every second: packets per
//! second per reason, and the sources dropped most since the last refresh. On a terminal it
//! redraws in place; in a pipe it prints one frame after another, without escape codes.

use std::{collections::HashMap, io::IsTerminal as _, time::Duration};

use crate::control::{
    Client,
    api::{STATS_PATH, Stats},
};

/// Clear the screen and go home: the only escape code used, and only on a terminal.
const REDRAW: &str = "\x1b[2J\x1b[H";
const INTERVAL: Duration = Duration::from_secs(1);

/// Runs until interrupted, or for `iterations` refreshes.
pub async fn run(client: &Client, iterations: Option<u64>) -> anyhow::Result<()> {
    let terminal = std::io::stdout().is_terminal();
    let mut previous: Stats = client.get(STATS_PATH).await?;
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.tick().await;
    let mut shown = 0;
    while iterations.is_none_or(|limit| shown < limit) {
        ticker.tick().await;
        let current: Stats = client.get(STATS_PATH).await?;
        let text = frame(&previous, &current, INTERVAL.as_secs_f64());
        if terminal {
            print!("{REDRAW}{text}");
        } else {
            println!("{text}");
        }
        previous = current;
        shown += 1;
    }
    Ok(())
}

/// One screen: rates between two samples taken `seconds` apart.
fn frame(previous: &Stats, current: &Stats, seconds: f64) -> String {
    if !current.xdp.enabled {
        return "XDP is off (xdp.mode = \"off\"): no kernel counters\n".to_owned();
    }
    let before: HashMap<&str, (u64, u64)> = previous
        .xdp
        .reasons
        .iter()
        .map(|reason| (reason.reason.as_str(), (reason.packets, reason.bytes)))
        .collect();
    let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / seconds;
    let mut out = format!(
        "{:<26} {:<7} {:>14} {:>14}\n",
        "REASON", "VERDICT", "PACKETS/S", "BYTES/S"
    );
    for reason in &current.xdp.reasons {
        let (packets, bytes) = before
            .get(reason.reason.as_str())
            .copied()
            .unwrap_or_default();
        out += &format!(
            "{:<26} {:<7} {:>14.0} {:>14.0}\n",
            reason.reason,
            reason.verdict,
            rate(reason.packets, packets),
            rate(reason.bytes, bytes)
        );
    }
    let dropped_before: HashMap<&str, u64> = previous
        .xdp
        .top_sources
        .iter()
        .map(|source| (source.address.as_str(), source.packets))
        .collect();
    let mut sources: Vec<(&str, f64, u64)> = current
        .xdp
        .top_sources
        .iter()
        .map(|source| {
            let then = dropped_before
                .get(source.address.as_str())
                .copied()
                .unwrap_or(0);
            (
                source.address.as_str(),
                rate(source.packets, then),
                source.packets,
            )
        })
        .collect();
    sources.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.cmp(&a.2)));
    out += &format!(
        "\n{:<44} {:>14} {:>14}\n",
        "TOP DROPPED SOURCES", "DROPS/S", "TOTAL"
    );
    for (address, per_second, total) in sources {
        out += &format!("{address:<44} {per_second:>14.0} {total:>14}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::api::{ReasonStats, SourceDrops, XdpStats};

    fn stats(deny: u64, source: u64) -> Stats {
        Stats {
            xdp: XdpStats {
                enabled: true,
                interfaces: Vec::new(),
                reasons: vec![ReasonStats {
                    reason: "dropped-deny".into(),
                    verdict: "drop".into(),
                    packets: deny,
                    bytes: deny * 60,
                }],
                top_sources: vec![SourceDrops {
                    address: "203.0.113.7".into(),
                    packets: source,
                }],
            },
        }
    }

    #[test]
    fn rates_are_deltas_over_the_interval() {
        let text = frame(&stats(100, 40), &stats(300, 140), 2.0);
        assert!(
            text.contains("dropped-deny               drop               100           6000"),
            "{text}"
        );
        assert!(
            text.contains(
                "203.0.113.7                                              50            140"
            ),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "frames carry no escape codes");
    }
}
