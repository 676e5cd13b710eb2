//! `gateway top`: a live view of what the kernel drops, refreshed every second: packets per
//! second per reason, and the sources dropped most since the last refresh. On a terminal it is
//! a full-screen view (ratatui; `q` quits); in a pipe it prints plain frames, one after another.

use std::{collections::HashMap, io::IsTerminal as _, time::Duration};

use ratatui::{
    crossterm::event::{self, Event, KeyCode, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Style, Stylize as _},
    widgets::{Block, Row, Table},
};

use crate::{
    api::{STATS_PATH, Stats},
    control::Client,
};

const INTERVAL: Duration = Duration::from_secs(1);

/// What one refresh shows: rates between two samples.
struct View {
    enabled: bool,
    /// (reason, verdict, packets/s, bytes/s)
    reasons: Vec<(String, String, f64, f64)>,
    /// (address, drops/s, total drops), busiest first.
    sources: Vec<(String, f64, u64)>,
}

/// Runs until `q` (or Ctrl-C), or for `iterations` refreshes.
pub async fn run(client: &Client, iterations: Option<u64>) -> anyhow::Result<()> {
    let mut previous: Stats = client.get(STATS_PATH).await?;
    if !std::io::stdout().is_terminal() {
        let mut shown = 0;
        while iterations.is_none_or(|limit| shown < limit) {
            tokio::time::sleep(INTERVAL).await;
            let current: Stats = client.get(STATS_PATH).await?;
            println!(
                "{}",
                text(&view(&previous, &current, INTERVAL.as_secs_f64()))
            );
            previous = current;
            shown += 1;
        }
        return Ok(());
    }
    let mut terminal = ratatui::init();
    let result = async {
        let mut shown = 0;
        while iterations.is_none_or(|limit| shown < limit) {
            // Waiting for a key is the refresh interval.
            if event::poll(INTERVAL)?
                && let Event::Key(key) = event::read()?
                && (matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
                    || (key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL)))
            {
                break;
            }
            let current: Stats = client.get(STATS_PATH).await?;
            let view = view(&previous, &current, INTERVAL.as_secs_f64());
            terminal.draw(|frame| draw(frame, &view))?;
            previous = current;
            shown += 1;
        }
        anyhow::Ok(())
    }
    .await;
    ratatui::restore();
    result
}

fn view(previous: &Stats, current: &Stats, seconds: f64) -> View {
    let before: HashMap<&str, (u64, u64)> = previous
        .xdp
        .reasons
        .iter()
        .map(|reason| (reason.reason.as_str(), (reason.packets, reason.bytes)))
        .collect();
    let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / seconds;
    let reasons = current
        .xdp
        .reasons
        .iter()
        .map(|reason| {
            let (packets, bytes) = before
                .get(reason.reason.as_str())
                .copied()
                .unwrap_or_default();
            (
                reason.reason.clone(),
                reason.verdict.clone(),
                rate(reason.packets, packets),
                rate(reason.bytes, bytes),
            )
        })
        .collect();
    let dropped_before: HashMap<&str, u64> = previous
        .xdp
        .top_sources
        .iter()
        .map(|source| (source.address.as_str(), source.packets))
        .collect();
    let mut sources: Vec<(String, f64, u64)> = current
        .xdp
        .top_sources
        .iter()
        .map(|source| {
            let then = dropped_before
                .get(source.address.as_str())
                .copied()
                .unwrap_or(0);
            (
                source.address.clone(),
                rate(source.packets, then),
                source.packets,
            )
        })
        .collect();
    sources.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.cmp(&a.2)));
    View {
        enabled: current.xdp.enabled,
        reasons,
        sources,
    }
}

/// The plain-text frame for pipes: no escape codes.
fn text(view: &View) -> String {
    if !view.enabled {
        return "XDP is off (xdp.mode = \"off\"): no kernel counters\n".to_owned();
    }
    let mut out = format!(
        "{:<26} {:<7} {:>14} {:>14}\n",
        "REASON", "VERDICT", "PACKETS/S", "BYTES/S"
    );
    for (reason, verdict, packets, bytes) in &view.reasons {
        out += &format!("{reason:<26} {verdict:<7} {packets:>14.0} {bytes:>14.0}\n");
    }
    out += &format!(
        "\n{:<44} {:>14} {:>14}\n",
        "TOP DROPPED SOURCES", "DROPS/S", "TOTAL"
    );
    for (address, per_second, total) in &view.sources {
        out += &format!("{address:<44} {per_second:>14.0} {total:>14}\n");
    }
    out
}

fn draw(frame: &mut ratatui::Frame, view: &View) {
    let [reasons_area, sources_area] = Layout::vertical([
        Constraint::Length(view.reasons.len() as u16 + 3),
        Constraint::Fill(1),
    ])
    .areas(frame.area());
    let header = |cells: [&'static str; 4]| Row::new(cells).style(Style::new().bold());
    let reasons = view
        .reasons
        .iter()
        .map(|(reason, verdict, packets, bytes)| {
            let row = Row::new([
                reason.clone(),
                verdict.clone(),
                format!("{packets:.0}"),
                format!("{bytes:.0}"),
            ]);
            if verdict == "drop" && *packets > 0.0 {
                row.red()
            } else {
                row
            }
        });
    let widths = [
        Constraint::Length(26),
        Constraint::Length(8),
        Constraint::Length(14),
        Constraint::Length(16),
    ];
    frame.render_widget(
        Table::new(reasons, widths)
            .header(header(["REASON", "VERDICT", "PACKETS/S", "BYTES/S"]))
            .block(Block::bordered().title(if view.enabled {
                " gateway top: XDP verdicts (q quits) "
            } else {
                " XDP is off: no kernel counters (q quits) "
            })),
        reasons_area,
    );
    let sources = view.sources.iter().map(|(address, per_second, total)| {
        Row::new([
            address.clone(),
            format!("{per_second:.0}"),
            total.to_string(),
            String::new(),
        ])
    });
    frame.render_widget(
        Table::new(
            sources,
            [
                Constraint::Length(42),
                Constraint::Length(12),
                Constraint::Length(14),
                Constraint::Length(0),
            ],
        )
        .header(header(["SOURCE", "DROPS/S", "TOTAL", ""]))
        .block(Block::bordered().title(" top dropped sources ")),
        sources_area,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ReasonStats, SourceDrops, XdpStats};

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
        let text = text(&view(&stats(100, 40), &stats(300, 140), 2.0));
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

    #[test]
    fn the_full_screen_view_draws_every_reason_and_source() {
        let view = view(&stats(100, 40), &stats(300, 140), 2.0);
        let backend = ratatui::backend::TestBackend::new(80, 12);
        let mut terminal = ratatui::Terminal::new(backend).unwrap();
        terminal.draw(|frame| draw(frame, &view)).unwrap();
        let screen: String = terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|cell| cell.symbol())
            .collect();
        for expected in [
            "gateway top",
            "dropped-deny",
            "203.0.113.7",
            "6000",
            "top dropped sources",
        ] {
            assert!(screen.contains(expected), "{expected} missing:\n{screen}");
        }
    }
}
