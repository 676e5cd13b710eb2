//! `gateway stats`: the XDP counters per verdict reason.

use std::io::IsTerminal as _;

use crate::{
    api::{STATS_PATH, Stats},
    control::Client,
};

pub async fn run(client: &Client, json: bool, watch: bool) -> anyhow::Result<()> {
    let terminal = std::io::stdout().is_terminal();
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let stats: Stats = client.get(STATS_PATH).await?;
        match (json, watch) {
            (true, false) => println!("{}", serde_json::to_string_pretty(&stats)?),
            (true, true) => println!("{}", serde_json::to_string(&stats)?),
            // Redraw in place on a terminal; in a pipe, one table after another.
            (false, true) if terminal => print!("\x1b[2J\x1b[H{}", table(&stats)),
            (false, true) => println!("{}", table(&stats)),
            (false, false) => print!("{}", table(&stats)),
        }
        if !watch {
            return Ok(());
        }
    }
}

/// `gateway stats --consumers`: metering per consumer and route.
/// With `cluster`: the totals of every node, from Redis.
pub async fn consumers(client: &Client, json: bool, cluster: bool) -> anyhow::Result<()> {
    let path = if cluster {
        format!("{}?cluster=1", crate::api::METERING_PATH)
    } else {
        crate::api::METERING_PATH.to_owned()
    };
    let metering: crate::api::Metering = client.get(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&metering)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<24} {:>12} {:>16} {:>16}",
        "CONSUMER", "ROUTE", "REQUESTS", "BYTES IN", "BYTES OUT"
    );
    for row in &metering.rows {
        println!(
            "{:<24} {:<24} {:>12} {:>16} {:>16}",
            row.consumer, row.route, row.requests, row.bytes_in, row.bytes_out
        );
    }
    Ok(())
}

fn table(stats: &Stats) -> String {
    let xdp = &stats.xdp;
    if !xdp.enabled {
        return "XDP is off (xdp.mode = \"off\"): no kernel counters\n".to_owned();
    }
    let interfaces: Vec<String> = xdp
        .interfaces
        .iter()
        .map(|interface| format!("{} ({:?})", interface.name, interface.mode).to_lowercase())
        .collect();
    let mut out = format!("XDP on {}\n", interfaces.join(", "));
    out += &format!(
        "{:<26} {:<7} {:>14} {:>16}\n",
        "REASON", "VERDICT", "PACKETS", "BYTES"
    );
    for reason in &xdp.reasons {
        out += &format!(
            "{:<26} {:<7} {:>14} {:>16}\n",
            reason.reason, reason.verdict, reason.packets, reason.bytes
        );
    }
    if !xdp.top_sources.is_empty() {
        out += &format!("\n{:<44} {:>14}\n", "TOP DROPPED SOURCES", "PACKETS");
        for source in &xdp.top_sources {
            out += &format!("{:<44} {:>14}\n", source.address, source.packets);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{InterfaceStats, ReasonStats, XdpStats},
        xdp::AttachMode,
    };

    #[test]
    fn table_lists_every_reason() {
        let stats = Stats {
            xdp: XdpStats {
                enabled: true,
                interfaces: vec![InterfaceStats {
                    name: "eth0".into(),
                    mode: AttachMode::Native,
                    reasons: Vec::new(),
                }],
                reasons: vec![ReasonStats {
                    reason: "dropped-deny".into(),
                    verdict: "drop".into(),
                    packets: 3,
                    bytes: 180,
                }],
                top_sources: vec![crate::api::SourceDrops {
                    address: "203.0.113.7".into(),
                    packets: 3,
                }],
            },
        };
        assert_eq!(
            table(&stats),
            "XDP on eth0 (native)\n\
             REASON                     VERDICT        PACKETS            BYTES\n\
             dropped-deny               drop                 3              180\n\
             \n\
             TOP DROPPED SOURCES                                 PACKETS\n\
             203.0.113.7                                               3\n"
        );
    }
}
