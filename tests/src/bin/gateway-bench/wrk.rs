//! wrk (the Debian package) as a second load generator, independent of the bench's own: the
//! same keep-alive GETs, `wrk -t2 -cN -dS --latency`, its requests/s and p50/p99 read from its
//! report.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, bail};

/// What one wrk run reports.
pub struct WrkResult {
    pub requests: u64,
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// `url` under `connections` keep-alive connections for `duration`, with `headers` on every
/// request. A non-2xx answer or a socket error fails the run: it would not be the same load.
pub fn run(
    url: &str,
    headers: &[(String, String)],
    connections: usize,
    duration: Duration,
) -> anyhow::Result<WrkResult> {
    let mut command = Command::new("wrk");
    command
        .arg("-t2")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--latency");
    for (name, value) in headers {
        command.arg("-H").arg(format!("{name}: {value}"));
    }
    let output = command
        .arg(url)
        .output()
        .context("running wrk (`cargo xtask setup` installs it)")?;
    let report = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk {url} failed: {}{report}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse(&report).with_context(|| format!("wrk's report for {url}:\n{report}"))
}

fn parse(report: &str) -> anyhow::Result<WrkResult> {
    if let Some(line) = report
        .lines()
        .find(|line| line.contains("Non-2xx") || line.contains("Socket errors"))
    {
        bail!("not every request succeeded: {}", line.trim());
    }
    let value_after = |label: &str| {
        report
            .lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .map(str::trim)
            .with_context(|| format!("no {label:?} line"))
    };
    let requests = report
        .lines()
        .find_map(|line| line.trim().split_once(" requests in "))
        .and_then(|(count, _)| count.trim().parse().ok())
        .context("no \"N requests in\" line")?;
    Ok(WrkResult {
        requests,
        rate: value_after("Requests/sec:")?.parse()?,
        p50_ms: milliseconds(value_after("50%")?)?,
        p99_ms: milliseconds(value_after("99%")?)?,
    })
}

/// wrk's latencies: "812.00us", "1.23ms", "1.02s", "1.10m".
fn milliseconds(text: &str) -> anyhow::Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("{text:?} has no unit"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse()?;
    Ok(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => bail!("{text:?}: unknown unit {unit:?}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_wrk_report() {
        let report = "Running 3s test @ http://127.0.0.1:1/bench\n  2 threads and 64 connections\n\
            \x20 Latency Distribution\n     50%  812.00us\n     75%    1.10ms\n     90%    2.00ms\n\
            \x20    99%    4.56ms\n  123456 requests in 3.00s, 12.34MB read\n\
            Requests/sec:  41152.00\nTransfer/sec:      4.11MB\n";
        let result = parse(report).unwrap();
        assert_eq!(result.requests, 123_456);
        assert_eq!(result.rate, 41_152.0);
        assert_eq!(result.p50_ms, 0.812);
        assert_eq!(result.p99_ms, 4.56);
        assert!(parse(&format!("{report}  Non-2xx or 3xx responses: 5\n")).is_err());
        assert_eq!(milliseconds("1.02s").unwrap(), 1020.0);
        assert!(milliseconds("3.0h").is_err());
    }
}
