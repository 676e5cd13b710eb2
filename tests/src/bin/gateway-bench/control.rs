//! `bench control`: what the control plane costs at 10k, 100k and 1M operator rules, in one
//! table beside the targets of issue 14.
//!
//! The real release daemon runs in a namespace made here, XDP (native) on a veth end, the
//! proxy on the namespace's loopback in front of a small real upstream. Every change goes
//! through the real CLI (`gateway firewall deny`, `gateway ban`, ...). Whether an entry is in
//! the kernel is read from the daemon's own maps (found by program and map id, looked up
//! with the bpf syscall from here): a change counts as done when the map says so.

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use aya::maps::{LpmTrie, Map, MapData, MapInfo, lpm_trie::Key};
use gateway::firewall::{
    records::OperatorBan,
    store::{Op, Store},
};
use gateway_tests::{Gateway, NetNs, VethLink, netns::Side, upstream::Upstream};

use crate::proxy::{self, LoadResult};

const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];
/// Trie capacity: the largest row plus the 1M-line import made under proxy load.
const CAPACITY_V4: u32 = 2_100_000;
const MAX_BANS: u32 = 262_144;
/// Bans in the store when the daemon is restarted with the largest row's rules.
const START_BANS: u32 = 100_000;
const PROXY_PORT: u16 = 18_080;
const PROXY_CONNECTIONS: usize = 64;
/// How long a change may take to show in the map after the CLI returned before the bench
/// gives up (it is expected there already: the API answers after the map write).
const MAP_WAIT: Duration = Duration::from_secs(2);
/// How long the proxy is loaded while a 1M-line import runs (only the import's span counts).
const IMPORT_LOAD_WINDOW: Duration = Duration::from_secs(45);
/// Auto-bans asked for, per second, and for how long.
const AUTO_BAN_RATE: u64 = 10_000;
const AUTO_BAN_SECONDS: u64 = 10;
/// Connections the auto-ban driver keeps in flight at most.
const AUTO_BAN_IN_FLIGHT: usize = 256;

struct Options {
    ops: usize,
    sizes: Vec<usize>,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench control needs root (BPF, namespaces)");
    }
    let mut options = Options {
        ops: 50,
        sizes: SIZES.to_vec(),
    };
    for (arg, value) in crate::options::pairs(args)? {
        match arg {
            "--ops" => options.ops = value.parse()?,
            // A quicker run: `--sizes 10000,100000` (the 1M-only rows need 1000000).
            "--sizes" => options.sizes = crate::options::sizes(value)?,
            _ => bail!("unknown option {arg}"),
        }
    }
    let lab = Lab::new()?;
    let mut table = Table::new(&options.sizes);
    // What was measured is printed even when a later step fails (a daemon that does not
    // start within the helper's 20 s panics there).
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        measure(&lab, &mut table, &options)
    }));
    table.print();
    match outcome {
        Ok(result) => result,
        Err(_) => bail!("a step panicked (above); the table holds what was measured before it"),
    }
}

fn measure(lab: &Lab, table: &mut Table, options: &Options) -> anyhow::Result<()> {
    let mut last = None;
    for (column, &size) in options.sizes.iter().enumerate() {
        eprintln!("bench control: {size} rules");
        // One daemon at a time: the last one holds the interface.
        drop(last.take());
        last = Some(sized_row(lab, table, column, size, options.ops)?);
    }
    if let Some(gateway) = last.filter(|_| options.sizes.contains(&1_000_000)) {
        let column = options.sizes.len() - 1;
        eprintln!("bench control: restart with 1M rules and 100k bans");
        restart_with_bans(lab, table, column, gateway)?;
        // The proxy rows on a daemon of their own (empty store, maps of their own).
        let _ = std::fs::remove_file(lab.store());
        let gateway = lab.start(column + 1)?;
        eprintln!("bench control: the proxy during a 1M-line import");
        proxy_during_import(lab, table, column, &gateway)?;
        eprintln!("bench control: sustained auto-bans");
        sustained_auto_bans(lab, table, column)?;
        drop(gateway);
    }
    // The cluster catch-up row (a node joining a cluster that holds 1M rules) is pushed
    // onto `table` here by cluster.rs.
    Ok(())
}

// ---- The rows ----

/// A fresh daemon: `size` rules imported, then single changes, then memory.
fn sized_row(
    lab: &Lab,
    table: &mut Table,
    column: usize,
    size: usize,
    ops: usize,
) -> anyhow::Result<Gateway> {
    let _ = std::fs::remove_file(lab.store());
    let gateway = lab.start(column)?;
    let maps = KernelMaps::find()?;
    let file = lab.dir.path().join(format!("rules-{size}.txt"));
    write_addresses(&file, Ipv4Addr::new(10, 0, 0, 0), size)?;
    let took = import(&gateway, &file)?;
    let last = nth_address(Ipv4Addr::new(10, 0, 0, 0), size - 1);
    ensure!(
        maps.has_rule(last),
        "the last imported rule is not in the kernel"
    );
    let target = match size {
        100_000 => Some(1.0),
        1_000_000 => Some(5.0),
        _ => None,
    };
    table.set(
        "import N rules (`gateway firewall import`), s",
        column,
        format!("{:.2}", took.as_secs_f64()),
        target.map(|limit| {
            (
                format!("< {limit} s at that size"),
                took.as_secs_f64() < limit,
            )
        }),
    );

    // Single changes, in addresses no imported rule covers.
    let rule = |n: usize| nth_address(Ipv4Addr::new(198, 18, 0, 0), n);
    let ban = |n: usize| nth_address(Ipv4Addr::new(198, 19, 0, 0), n);
    let mut times: [Vec<Duration>; 4] = Default::default();
    for n in 0..ops {
        let (r, b) = (rule(n).to_string(), ban(n).to_string());
        times[0].push(change(&gateway, &["firewall", "deny", &r], || {
            maps.has_rule(rule(n))
        })?);
        times[1].push(change(&gateway, &["firewall", "remove", &r], || {
            !maps.has_rule(rule(n))
        })?);
        times[2].push(change(&gateway, &["ban", &b], || maps.has_ban(ban(n)))?);
        times[3].push(change(&gateway, &["unban", &b], || !maps.has_ban(ban(n)))?);
    }
    let names = [
        "`gateway firewall deny CIDR` to in the map",
        "`gateway firewall remove CIDR` to out of the map",
        "`gateway ban ADDR` to in the map",
        "`gateway unban ADDR` to out of the map",
    ];
    for (name, mut samples) in names.into_iter().zip(times) {
        samples.sort();
        let (p50, p99) = (percentile(&samples, 0.50), percentile(&samples, 0.99));
        let target = (size == 1_000_000).then(|| ("p99 < 10 ms at 1M".to_owned(), p99 < 10.0));
        table.set(
            &format!("{name}, p50 / p99 ms ({ops} ops)"),
            column,
            format!("{p50:.1} / {p99:.1}"),
            target,
        );
    }
    let rss = crate::peers::tree_rss_kib(gateway.pid()) as f64 / 1024.0;
    table.set(
        "daemon RSS holding N rules, MiB",
        column,
        format!("{rss:.0}"),
        None,
    );
    Ok(gateway)
}

/// Stops the daemon holding 1M rules, adds 100k bans to its store, and starts it again:
/// how long until it filters.
fn restart_with_bans(
    lab: &Lab,
    table: &mut Table,
    column: usize,
    gateway: Gateway,
) -> anyhow::Result<()> {
    let (status, log) = gateway.stop();
    ensure!(status.success(), "the daemon did not stop cleanly:\n{log}");
    {
        let store = Store::open(&lab.store())?;
        let bans = (0..START_BANS as usize)
            .map(|n| {
                Op::PutBan(OperatorBan {
                    cidr: ipnet::Ipv4Net::from(nth_address(Ipv4Addr::new(100, 64, 0, 0), n)).into(),
                    expires_at: None,
                    comment: Some("bench".to_owned()),
                })
            })
            .collect();
        store.commit(bans)?;
    }
    let measure = "start with 1M rules + 100k bans, to filtering, s (1)";
    let started = Instant::now();
    let started_up = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lab.start(column)));
    let took = started.elapsed();
    let Ok(gateway) = started_up else {
        table.set(
            measure,
            column,
            format!(
                "> {:.0} (not ready: the helper gave up)",
                took.as_secs_f64()
            ),
            Some(("< 5 s".to_owned(), false)),
        );
        return Ok(());
    };
    let gateway = gateway?;
    let maps = KernelMaps::find()?;
    ensure!(
        maps.has_ban(nth_address(
            Ipv4Addr::new(100, 64, 0, 0),
            START_BANS as usize - 1
        )) && maps.has_rule(nth_address(Ipv4Addr::new(10, 0, 0, 0), 999_999)),
        "after the restart, the stored bans and rules are not all in the kernel"
    );
    table.set(
        measure,
        column,
        format!("{:.2}", took.as_secs_f64()),
        Some(("< 5 s".to_owned(), took.as_secs_f64() < 5.0)),
    );
    drop(gateway);
    Ok(())
}

/// The proxy's p99 idle, then while a 1M-line file is imported.
fn proxy_during_import(
    lab: &Lab,
    table: &mut Table,
    column: usize,
    gateway: &Gateway,
) -> anyhow::Result<()> {
    let file = lab.dir.path().join("rules-under-load.txt");
    write_addresses(&file, Ipv4Addr::new(11, 0, 0, 0), 1_000_000)?;
    let idle = lab.load(Duration::from_secs(5))?;
    let lead = Duration::from_secs(1);
    let load = lab.runtime.spawn(proxy::load(
        lab.proxy,
        "/bench",
        None,
        PROXY_CONNECTIONS,
        IMPORT_LOAD_WINDOW,
    ));
    std::thread::sleep(lead);
    let from = Instant::now();
    let took = import(gateway, &file)?;
    let to = Instant::now();
    let during = lab.runtime.block_on(load)??.within(from, to);
    ensure!(
        to.duration_since(from) + lead < IMPORT_LOAD_WINDOW,
        "the import outlasted the load window"
    );
    let ratio = during.percentile(0.99) / idle.percentile(0.99);
    table.set(
        &format!(
            "proxy p99 ms, idle / during a 1M-line import ({PROXY_CONNECTIONS} keep-alive \
             connections; import took {:.1} s)",
            took.as_secs_f64()
        ),
        column,
        format!(
            "{:.2} / {:.2} (**{ratio:.2}x**)",
            idle.percentile(0.99),
            during.percentile(0.99)
        ),
        None,
    );
    Ok(())
}

/// 10k auto-bans a second for 10 s from distinct loopback sources asking for a trap path,
/// while the proxy serves: its p99 with and without.
fn sustained_auto_bans(lab: &Lab, table: &mut Table, column: usize) -> anyhow::Result<()> {
    let maps = KernelMaps::find()?;
    let window = Duration::from_secs(AUTO_BAN_SECONDS);
    let quiet = lab.load(window)?;
    let bans_before = maps.ban_count()?;
    let stop = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicU64::new(0));
    let driver = lab
        .runtime
        .spawn(drive_traps(lab.proxy, stop.clone(), asked.clone()));
    let busy = lab.load(window)?;
    stop.store(true, Ordering::Relaxed);
    lab.runtime.block_on(driver)?;
    // The defender coalesces bans into batches: give the last one a moment to land.
    std::thread::sleep(Duration::from_secs(2));
    let placed = maps.ban_count()?.saturating_sub(bans_before);
    let rate = placed as f64 / window.as_secs_f64();
    let ratio = busy.percentile(0.99) / quiet.percentile(0.99);
    table.set(
        &format!(
            "auto-bans: trap requests from distinct sources (asked {}/s for {AUTO_BAN_SECONDS} s; \
             {} sent), bans in the map /s",
            AUTO_BAN_RATE,
            asked.load(Ordering::Relaxed)
        ),
        column,
        format!("{rate:.0}"),
        Some(("10k/s".to_owned(), rate >= AUTO_BAN_RATE as f64 * 0.95)),
    );
    table.set(
        "proxy p99 ms without / with the auto-bans above (2)",
        column,
        format!(
            "{:.2} / {:.2} (**{ratio:.2}x**)",
            quiet.percentile(0.99),
            busy.percentile(0.99)
        ),
        Some(("within ±10%".to_owned(), (0.9..=1.1).contains(&ratio))),
    );
    Ok(())
}

/// Sends `GET /.env` (a trap) from a new loopback source per request, paced at
/// [`AUTO_BAN_RATE`], until `stop`.
async fn drive_traps(proxy: SocketAddr, stop: Arc<AtomicBool>, asked: Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let permits = Arc::new(tokio::sync::Semaphore::new(AUTO_BAN_IN_FLIGHT));
    let started = Instant::now();
    let mut sent: u64 = 0;
    // Sources 127.1.0.0 onward: 127.0.0.1 (the load) is never banned.
    let source = |n: u64| nth_address(Ipv4Addr::new(127, 1, 0, 0), n as usize);
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * AUTO_BAN_RATE as f64) as u64;
        if sent >= due {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let from = source(sent);
        sent += 1;
        asked.store(sent, Ordering::Relaxed);
        tokio::spawn(async move {
            let _permit = permit;
            let exchange = async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(from.into(), 0))?;
                let mut stream = socket.connect(proxy).await?;
                stream
                    .write_all(b"GET /.env HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    .await?;
                let mut sink = Vec::new();
                stream.read_to_end(&mut sink).await?;
                anyhow::Ok(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), exchange).await;
        });
    }
}

// ---- The lab ----

/// The daemon's namespace with a veth to a peer namespace (XDP on its end), a real
/// upstream on the namespace's loopback, and a runtime whose workers live there (the load).
struct Lab {
    dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    proxy: SocketAddr,
    upstream: Upstream,
    link: VethLink,
    ns: NetNs,
    _peer: NetNs,
}

impl Lab {
    fn new() -> anyhow::Result<Lab> {
        let ns = NetNs::new("bctl");
        let peer = NetNs::new("bctlpeer");
        let link = VethLink::new(&ns, &peer, "bctl");
        link.add_addr(Side::A, "10.96.0.1/24");
        link.add_addr(Side::B, "10.96.0.2/24");
        let upstream = ns.enter(|| Upstream::start("bench"));
        // Threads inherit the namespace of the thread that makes them.
        let runtime = ns.enter(|| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
        })?;
        Ok(Lab {
            dir: tempfile::Builder::new()
                .prefix("bctl-")
                .tempdir_in("/tmp")?,
            runtime,
            proxy: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), PROXY_PORT),
            upstream,
            link,
            ns,
            _peer: peer,
        })
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("firewall.redb")
    }

    /// A daemon for the row in `column`. Each row's maps are sized a little differently, so
    /// a row never adopts the maps the last row's daemon pinned: it starts as a fresh daemon
    /// does (a restart of the same row adopts them, as a real restart would).
    fn start(&self, column: usize) -> anyhow::Result<Gateway> {
        let v6_capacity = 1024 + column;
        let config = format!(
            "[admin]\nsocket = \"{{admin_socket}}\"\nstate_file = \"{dir}/state.json\"\n\
             store = \"{store}\"\n\
             [xdp]\nmode = \"native\"\ninterfaces = [\"{interface}\"]\n\
             max_rules_v4 = {CAPACITY_V4}\nmax_rules_v6 = {v6_capacity}\nmax_bans = {MAX_BANS}\n\
             [access_log]\nenabled = false\n\
             [[listeners]]\nname = \"bench\"\naddress = \"127.0.0.1:{PROXY_PORT}\"\nprotocol = \"http\"\n\
             [[upstreams]]\nname = \"bench\"\ntargets = [{{ address = \"{upstream}\" }}]\n\
             [[routes]]\nname = \"bench\"\nupstream = \"bench\"\nmatch = {{ path_prefix = \"/\" }}\n\
             [firewall]\nprotected_ports = [9]\n\
             [defend]\nnever_ban = [\"127.0.0.1/32\"]\nmax_tracked_sources = 200000\n\
             [[defend.triggers]]\nsignal = \"trap\"\npaths = [\"/.env\"]\ncount = 1\nban = \"1h\"\n",
            dir = self.dir.path().display(),
            store = self.store().display(),
            interface = self.link.a.name,
            upstream = self.upstream.address(),
        );
        Ok(Gateway::start(Some(&self.ns), &config))
    }

    fn load(&self, duration: Duration) -> anyhow::Result<LoadResult> {
        self.runtime.block_on(proxy::load(
            self.proxy,
            "/bench",
            None,
            PROXY_CONNECTIONS,
            duration,
        ))
    }
}

// ---- The CLI and the kernel ----

/// Runs the CLI change, then waits for `done` (the map) to hold: the time from the call to
/// the kernel holding the change.
fn change(gateway: &Gateway, args: &[&str], done: impl Fn() -> bool) -> anyhow::Result<Duration> {
    let started = Instant::now();
    cli(gateway, args)?;
    while !done() {
        ensure!(
            started.elapsed() < MAP_WAIT,
            "gateway {}: not in the kernel map {MAP_WAIT:?} after the call",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(started.elapsed())
}

fn import(gateway: &Gateway, file: &Path) -> anyhow::Result<Duration> {
    let file = file.to_string_lossy();
    let started = Instant::now();
    cli(gateway, &["firewall", "import", &file, "--action", "deny"])?;
    Ok(started.elapsed())
}

/// Runs `gateway args...` against the daemon, bounded to a minute. Its exit is polled every
/// 100 µs (the tests' helper sleeps 10 ms between polls, which would be the measurement).
fn cli(gateway: &Gateway, args: &[&str]) -> anyhow::Result<()> {
    let mut child = std::process::Command::new(gateway_tests::gateway_bin())
        .args(args)
        .env("GATEWAY_SOCKET", gateway.socket())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("gateway {}: no answer within a minute", args.join(" "));
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
        }
        bail!("gateway {}: {status}: {stderr}", args.join(" "));
    }
    Ok(())
}

/// The running daemon's IPv4 rule and ban tries, read from here.
struct KernelMaps {
    rules: LpmTrie<MapData, [u8; 4], [u8; 8]>,
    bans: LpmTrie<MapData, [u8; 4], u64>,
}

impl KernelMaps {
    /// The newest loaded XDP program whose rule trie has this bench's capacity (no other
    /// program on the machine asks for it): the daemon started last.
    fn find() -> anyhow::Result<KernelMaps> {
        let mut newest: Option<(u32, u32, u32)> = None;
        for program in aya::programs::loaded_programs().flatten() {
            if program.name_as_str() != Some("gateway_xdp") {
                continue;
            }
            let Ok(Some(ids)) = program.map_ids() else {
                continue;
            };
            let named = |wanted: &str| {
                ids.iter().copied().find(|&id| {
                    MapInfo::from_id(id).is_ok_and(|info| {
                        info.name_as_str() == Some(wanted)
                            && (wanted != "RULES_V4" || info.max_entries() == CAPACITY_V4)
                    })
                })
            };
            if let (Some(rules), Some(bans)) = (named("RULES_V4"), named("BANS_V4"))
                && newest.is_none_or(|(id, ..)| program.id() > id)
            {
                newest = Some((program.id(), rules, bans));
            }
        }
        let (_, rules, bans) = newest.context("the daemon's XDP program is not loaded")?;
        Ok(KernelMaps {
            rules: LpmTrie::try_from(Map::LpmTrie(MapData::from_id(rules)?))?,
            bans: LpmTrie::try_from(Map::LpmTrie(MapData::from_id(bans)?))?,
        })
    }

    /// Whether a rule covers `address` (the bench's own addresses are covered by theirs only).
    fn has_rule(&self, address: Ipv4Addr) -> bool {
        self.rules.get(&Key::new(32, address.octets()), 0).is_ok()
    }

    fn has_ban(&self, address: Ipv4Addr) -> bool {
        self.bans.get(&Key::new(32, address.octets()), 0).is_ok()
    }

    fn ban_count(&self) -> anyhow::Result<usize> {
        let mut count = 0;
        for key in self.bans.keys() {
            key?;
            count += 1;
        }
        Ok(count)
    }
}

// ---- Addresses, numbers, the table ----

fn nth_address(first: Ipv4Addr, n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(first) + n as u32)
}

/// `count` addresses from `first` on, one per line.
fn write_addresses(path: &Path, first: Ipv4Addr, count: usize) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for n in 0..count {
        writeln!(out, "{}", nth_address(first, n))?;
    }
    out.flush()?;
    Ok(())
}

/// In ms, of sorted `samples`.
fn percentile(samples: &[Duration], p: f64) -> f64 {
    let index = ((samples.len() - 1) as f64 * p).round() as usize;
    samples[index].as_secs_f64() * 1000.0
}

/// One row per measure, one column per size, the target beside, and whether it was met.
struct Table {
    sizes: Vec<usize>,
    rows: Vec<TableRow>,
}

struct TableRow {
    measure: String,
    cells: Vec<String>,
    target: String,
    /// Per column that has a target: met or not.
    verdicts: Vec<bool>,
}

impl Table {
    fn new(sizes: &[usize]) -> Table {
        Table {
            sizes: sizes.to_vec(),
            rows: Vec::new(),
        }
    }

    fn set(&mut self, measure: &str, column: usize, cell: String, target: Option<(String, bool)>) {
        let columns = self.sizes.len();
        let row = match self.rows.iter().position(|row| row.measure == measure) {
            Some(index) => &mut self.rows[index],
            None => {
                self.rows.push(TableRow {
                    measure: measure.to_owned(),
                    cells: vec![String::new(); columns],
                    target: String::new(),
                    verdicts: Vec::new(),
                });
                self.rows.last_mut().expect("just pushed")
            }
        };
        row.cells[column] = cell;
        if let Some((target, met)) = target {
            row.target = target;
            row.verdicts.push(met);
        }
    }

    fn print(&self) {
        let size = |n: &usize| match n {
            n if n % 1_000_000 == 0 => format!("{}M rules", n / 1_000_000),
            n if n % 1_000 == 0 => format!("{}k rules", n / 1_000),
            n => format!("{n} rules"),
        };
        let heads: Vec<String> = self.sizes.iter().map(size).collect();
        println!("## Control plane (release build, XDP native on a veth, real CLI per change)");
        println!();
        println!("| measure | {} | target | met |", heads.join(" | "));
        println!("|---|{}---|---|", "---:|".repeat(self.sizes.len()));
        for row in &self.rows {
            let met = match row.verdicts.as_slice() {
                [] => "",
                verdicts if verdicts.iter().all(|met| *met) => "yes",
                _ => "**no**",
            };
            println!(
                "| {} | {} | {} | {met} |",
                row.measure,
                row.cells.join(" | "),
                row.target
            );
        }
        println!();
        println!(
            "(1) Spawn to the admin socket accepting: the maps are filled before the program is \
             attached and the socket is bound last, so filtering began before this."
        );
        println!(
            "(2) Load generator, daemon, upstream and the trap clients share this machine's 2 \
             cores: the auto-ban clients' own CPU is part of what the proxy loses."
        );
        println!(
            "Single changes are timed from spawning the CLI to the kernel map holding the change \
             (read from the daemon's own trie by map id); XDP per-packet cost at 10 to 1M rules: \
             `cargo xtask bench xdp`."
        );
    }
}
