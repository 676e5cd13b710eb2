//! Rows measured one way everywhere: each target under the same keep-alive GET load, in
//! interleaved rounds (each round runs every target once, starting one further along, so a
//! burst of other work on this shared machine hits each alike), and the medians reported:
//! requests/s, p50, p99 and CPU time per request of the target's processes, from the bench's
//! own load generator and, with `--wrk`, from wrk too.

use std::time::Duration;

use anyhow::Context as _;
use tokio::runtime::Runtime;

use crate::{
    cpu,
    proxy::{Dial, load_dial},
    wrk,
};

/// Load on each target before the rounds.
const WARM_UP: Duration = Duration::from_millis(500);

/// How every row is run (`--seconds`, `--rounds`, `--wrk`).
pub struct Settings {
    pub seconds: u64,
    pub rounds: usize,
    pub wrk: bool,
}

/// One row: where the load goes, and whose CPU time it costs.
pub struct Target {
    pub name: String,
    pub dial: Dial,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The process (with its children) that serves the row: its CPU time is the cost.
    pub pid: u32,
}

impl Target {
    fn url(&self) -> String {
        match &self.dial {
            Dial::Plain(address) => format!("http://{address}{}", self.path),
            // The name the bench's certificate carries.
            Dial::Tls(address, _) => format!("https://localhost:{}{}", address.port(), self.path),
        }
    }
}

/// Medians of one target's rounds, from one load generator.
#[derive(Clone, Copy, Default)]
pub struct Figures {
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// User + system CPU µs of the target's processes per request served.
    pub cpu_us: f64,
}

pub struct Row {
    pub own: Figures,
    pub wrk: Option<Figures>,
}

/// Every target at `connections`, `settings.rounds` interleaved rounds; one row each, in order.
pub fn measure(
    runtime: &Runtime,
    settings: &Settings,
    targets: &[Target],
    connections: usize,
) -> anyhow::Result<Vec<Row>> {
    let duration = Duration::from_secs(settings.seconds);
    let mut own = vec![Vec::new(); targets.len()];
    let mut wrk = vec![Vec::new(); targets.len()];
    // Connections, pools and caches warm in every target before any round counts.
    for target in targets {
        runtime
            .block_on(load_dial(
                target.dial.clone(),
                &target.path,
                target.headers.clone(),
                connections,
                WARM_UP,
            ))
            .with_context(|| format!("{} (warm-up)", target.name))?;
    }
    for round in 0..settings.rounds {
        for offset in 0..targets.len() {
            let index = (round + offset) % targets.len();
            let target = &targets[index];
            let (result, cpu) = cpu::while_running(target.pid, || {
                runtime.block_on(load_dial(
                    target.dial.clone(),
                    &target.path,
                    target.headers.clone(),
                    connections,
                    duration,
                ))
            });
            let result = result.with_context(|| target.name.clone())?;
            own[index].push(Figures {
                rate: result.rate(),
                p50_ms: result.percentile(0.50),
                p99_ms: result.percentile(0.99),
                cpu_us: per_request(cpu, result.requests),
            });
            if settings.wrk {
                let (result, cpu) = cpu::while_running(target.pid, || {
                    wrk::run(&target.url(), &target.headers, connections, duration)
                });
                let result = result.with_context(|| format!("{} (wrk)", target.name))?;
                wrk[index].push(Figures {
                    rate: result.rate,
                    p50_ms: result.p50_ms,
                    p99_ms: result.p99_ms,
                    cpu_us: per_request(cpu, result.requests),
                });
            }
        }
    }
    Ok(own
        .iter()
        .zip(&wrk)
        .map(|(own, wrk)| Row {
            own: median(own),
            wrk: settings.wrk.then(|| median(wrk)),
        })
        .collect())
}

fn per_request(cpu_seconds: f64, requests: u64) -> f64 {
    cpu_seconds * 1e6 / requests.max(1) as f64
}

/// The median of each figure on its own.
fn median(rounds: &[Figures]) -> Figures {
    let of = |figure: fn(&Figures) -> f64| {
        let mut values: Vec<f64> = rounds.iter().map(figure).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    Figures {
        rate: of(|f| f.rate),
        p50_ms: of(|f| f.p50_ms),
        p99_ms: of(|f| f.p99_ms),
        cpu_us: of(|f| f.cpu_us),
    }
}

/// A table's header: `references` name the rows the ratio columns divide by.
pub fn print_header(settings: &Settings, title: &str, references: &[&str]) {
    println!(
        "\n## {title} (HTTP/1.1 keep-alive GET, {} s per row, medians of {} interleaved rounds)",
        settings.seconds, settings.rounds
    );
    let mut columns = vec![
        "connections".to_owned(),
        "target".into(),
        "req/s".into(),
        "p50 ms".into(),
        "p99 ms".into(),
        "CPU µs/req".into(),
    ];
    for reference in references {
        columns.push(format!("req/s ÷ {reference}"));
        columns.push(format!("p99 ÷ {reference}"));
        columns.push(format!("CPU ÷ {reference}"));
    }
    if settings.wrk {
        columns.extend(["wrk req/s", "wrk p99 ms", "wrk CPU µs/req"].map(String::from));
        if let Some(first) = references.first() {
            columns.push(format!("wrk CPU ÷ {first}"));
        }
    }
    println!("| {} |", columns.join(" | "));
    let aligns: Vec<&str> = (0..columns.len())
        .map(|index| if index == 1 { "---" } else { "---:" })
        .collect();
    println!("|{}|", aligns.join("|"));
}

/// One row with its ratios to the `references` rows (the columns of [`print_header`]).
pub fn print_row(connections: usize, name: &str, row: &Row, references: &[&Row]) {
    let own = &row.own;
    let mut cells = vec![
        connections.to_string(),
        name.to_owned(),
        format!("{:.0}", own.rate),
        format!("{:.2}", own.p50_ms),
        format!("{:.2}", own.p99_ms),
        format!("{:.1}", own.cpu_us),
    ];
    for reference in references {
        cells.push(format!("{:.2}", own.rate / reference.own.rate));
        cells.push(format!("{:.2}", own.p99_ms / reference.own.p99_ms));
        cells.push(format!("{:.2}", own.cpu_us / reference.own.cpu_us));
    }
    if let Some(wrk) = &row.wrk {
        cells.push(format!("{:.0}", wrk.rate));
        cells.push(format!("{:.2}", wrk.p99_ms));
        cells.push(format!("{:.1}", wrk.cpu_us));
        if let Some(first) = references.first().and_then(|row| row.wrk.as_ref()) {
            cells.push(format!("{:.2}", wrk.cpu_us / first.cpu_us));
        }
    }
    println!("| {} |", cells.join(" | "));
}
