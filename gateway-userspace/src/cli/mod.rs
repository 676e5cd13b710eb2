//! The `gateway` command line: one binary for the daemon and the operator's tools.

mod bans;
mod check_config;
mod defend;
mod demo;
mod firewall;
mod logging;
mod paging;
mod stats;
mod top;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_ADMIN_SOCKET};

const EXAMPLES: &str = "\
Examples:
  gateway check-config config/gateway.toml    validate a config file
  gateway run --config config/gateway.toml    start the daemon (root, or CAP_BPF + CAP_NET_ADMIN)
  gateway stats                               XDP counters per verdict reason
  gateway stats --json | jq .xdp.reasons      the same, for scripts
  gateway top                                 live drop rates and top dropped sources
  gateway ban 203.0.113.7 --for 10m           drop a source in the kernel for ten minutes
  gateway ban 2001:db8:bad::/64               ... or a prefix, until unbanned
  gateway bans                                list bans and their time left
  gateway firewall deny 198.51.100.0/24 --ttl 1h --comment scanner
  gateway firewall list                       config and operator rules, with hits
  gateway cache purge --prefix /v1/users      drop cached responses under a path (any host)
  gateway cache purge --key 'GET api.example.com/v1/users/7'
  gateway firewall explain 203.0.113.7        what happens to that source's packets, and why
  gateway firewall deny 198.51.100.0/24 --shadow   count what it would drop, then `promote` it
  gateway firewall import blocklist.txt --action deny   one CIDR per line, all or nothing
  gateway completions bash > /etc/bash_completion.d/gateway";

#[derive(Debug, Parser)]
#[command(name = "gateway", version, about = "An XDP-accelerated L4+L7 API gateway", after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway daemon: load and attach the XDP firewall, serve the admin API.
    Run {
        /// The configuration file.
        #[arg(
            short,
            long,
            value_name = "FILE",
            default_value = "/etc/gateway/gateway.toml"
        )]
        config: PathBuf,
        /// Detach the XDP program and remove its pins when the daemon stops. Without it the
        /// pinned program keeps filtering while the daemon is down (see `gateway xdp detach`).
        #[arg(long)]
        detach_on_exit: bool,
    },
    /// The pinned XDP program, without a running daemon.
    #[command(subcommand)]
    Xdp(XdpCommand),
    /// Validate a configuration file without starting anything.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the hash of an API key (read from standard input, one line) in the form
    /// `[[consumers]] api_keys` takes: the config never holds the key itself.
    HashKey,
    /// Ban a source address or prefix: its packets are dropped in the kernel at once.
    Ban {
        /// Address or CIDR, e.g. 203.0.113.7 or 2001:db8:bad::/64.
        #[arg(value_name = "ADDRESS")]
        cidr: String,
        /// How long (e.g. 90s, 10m, 2h); without it, until `gateway unban`.
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Lift a ban.
    Unban {
        #[arg(value_name = "ADDRESS")]
        cidr: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List bans and the time each has left, a page at a time.
    Bans {
        /// Print JSON instead of a table: one ban per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        page: paging::PageArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Manage the operator's allow and deny rules (kept across restarts).
    #[command(subcommand)]
    Firewall(FirewallCommand),
    /// Under-attack mode and known-good sources (see `[defend]`).
    #[command(subcommand)]
    Defend(DefendCommand),
    /// A tiny HTTP service to try the gateway with: answers every request with JSON
    /// describing it (`cargo xtask run` starts it for the example config).
    DemoUpstream {
        /// Loopback addresses to listen on.
        #[arg(value_name = "ADDRESS", required = true)]
        addresses: Vec<std::net::SocketAddr>,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Show packets and bytes per XDP verdict reason.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Print again every second (with --json: one JSON document per line).
        #[arg(long)]
        watch: bool,
        /// Requests and bytes per consumer and route (metering) instead of XDP counters.
        #[arg(long)]
        consumers: bool,
        /// With --consumers: totals of every gateway in the cluster (needs [cluster]).
        #[arg(long, requires = "consumers")]
        cluster: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Manage the response cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Re-read the daemon's config file (as SIGHUP does); an invalid file changes nothing.
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Live view of drop rates per reason and the top dropped sources, every second.
    Top {
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long, value_name = "N")]
        iterations: Option<u64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// Remove cached responses: one key, or every key under a prefix.
    Purge {
        /// A key as the cache names it: "GET host/path?query" (host lowercase, no port).
        #[arg(
            long,
            value_name = "KEY",
            conflicts_with = "prefix",
            required_unless_present = "prefix"
        )]
        key: Option<String>,
        /// A prefix of host/path ("api.example.com/v1/users"), or of the path alone on any
        /// host ("/v1/users").
        #[arg(long, value_name = "PREFIX")]
        prefix: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
enum XdpCommand {
    /// Detach the pinned XDP program from the config's interfaces and remove its maps: the
    /// firewall is open until the next `gateway run`. Stop the daemon first.
    Detach {
        #[arg(
            short,
            long,
            value_name = "FILE",
            default_value = "/etc/gateway/gateway.toml"
        )]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum DefendCommand {
    /// Under-attack mode: XDP admits known-good sources and a small budget of new ones.
    UnderAttack {
        #[arg(value_enum)]
        action: defend::Switch,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Known-good sources (admitted under attack).
    #[command(subcommand)]
    KnownGood(KnownGoodCommand),
}

#[derive(Debug, Subcommand)]
enum KnownGoodCommand {
    /// Mark a source known-good, e.g. a partner's address, before an attack.
    Add {
        #[arg(value_name = "ADDRESS")]
        address: String,
        /// How long (default: defend.under_attack.known_good_ttl).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
enum FirewallCommand {
    /// Allow a source address or prefix (an exception inside deny ranges, or admission under
    /// an allow-list policy).
    Allow(RuleArgs),
    /// Deny a source address or prefix.
    Deny(RuleArgs),
    /// Show or change the per-source rate limits of the default class.
    #[command(subcommand)]
    RateLimit(RateLimitCommand),
    /// Make a shadow rule drop, in one atomic step.
    Promote {
        #[arg(value_name = "ADDRESS")]
        cidr: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove an operator rule.
    Remove {
        #[arg(value_name = "ADDRESS")]
        cidr: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the rules from the config and from operators, with their hit counts, a page
    /// at a time.
    List {
        /// Print JSON instead of a table: one rule per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        page: paging::PageArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// What the kernel would do with a packet from ADDRESS, and why: ban, matching rule,
    /// policy, rate-limit budget.
    Explain {
        #[arg(value_name = "ADDRESS")]
        address: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Add every address or CIDR of a file (one per line, `#` comments): all or nothing.
    Import {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[arg(long, value_enum)]
        action: ImportAction,
        /// Stored with each rule.
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
enum RateLimitCommand {
    /// The limits in force: the default class (from the config or set here) and the classes.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Replace the default class's limits (kept across restarts; limits left out are off).
    Set {
        #[arg(long, value_name = "N")]
        packets_per_second: Option<u64>,
        #[arg(long, value_name = "N")]
        burst: Option<u64>,
        #[arg(long, value_name = "N")]
        bytes_per_second: Option<u64>,
        #[arg(long, value_name = "N")]
        burst_bytes: Option<u64>,
        #[arg(long, value_name = "N")]
        syn_per_second: Option<u64>,
        #[arg(long, value_name = "N")]
        syn_burst: Option<u64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Go back to the config file's default limits.
    Reset {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ImportAction {
    Allow,
    Deny,
}

#[derive(Debug, clap::Args)]
struct RuleArgs {
    /// Address or CIDR, e.g. 198.51.100.0/24 or 2001:db8::/32.
    #[arg(value_name = "ADDRESS")]
    cidr: String,
    /// Remove the rule after this long (e.g. 30m, 12h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    ttl: Option<std::time::Duration>,
    /// Why the rule exists; shown by `firewall list`.
    #[arg(long)]
    comment: Option<String>,
    /// Dry run (deny only): count what the rule would drop without dropping; `firewall
    /// promote` makes it live.
    #[arg(long)]
    shadow: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

/// How the CLI reaches the running daemon.
#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// The daemon's admin socket (admin.socket in its config).
    #[arg(long, value_name = "PATH", env = "GATEWAY_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    socket: PathBuf,
    /// Use the daemon's loopback TCP admin listener (admin.tcp) instead of the socket.
    #[arg(long, value_name = "ADDRESS", env = "GATEWAY_ADMIN_ADDRESS")]
    url: Option<std::net::SocketAddr>,
    /// Bearer token for --url (the daemon reads it from admin.token_env).
    #[arg(
        long,
        env = "GATEWAY_ADMIN_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    token: String,
}

impl AdminArgs {
    fn client(&self) -> crate::control::Client {
        match &self.url {
            Some(address) => crate::control::Client::tcp(*address, self.token.clone()),
            None => crate::control::Client::new(&self.socket),
        }
    }
}

/// Entry point of the `gateway` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Run { .. } | Command::DemoUpstream { .. }
    ) {
        quiet_on_closed_pipe();
    }
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    if !matches!(command, Command::Run { .. }) {
        logging::init(None)?;
    }
    match command {
        Command::Xdp(XdpCommand::Detach { config }) => {
            let loaded = Config::load(&config)?;
            crate::daemon::detach_pinned(&loaded)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            config,
            detach_on_exit,
        } => {
            let loaded = Config::load(&config);
            // The access log's destination comes from the config; errors still get logged.
            let _access_log = logging::init(loaded.as_ref().ok().map(|config| &config.access_log))?;
            let loaded = loaded?;
            for warning in &loaded.warnings {
                tracing::warn!("{warning}");
            }
            for note in &loaded.notes {
                tracing::info!("{note}");
            }
            runtime()?.block_on(crate::daemon::run(config, loaded, detach_on_exit))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => Ok(check_config::run(&file)),
        Command::HashKey => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let key = line.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!key.is_empty(), "give the API key on standard input");
            println!("{}", crate::config::auth::hash_api_key(key));
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats {
            json,
            watch: _,
            consumers: true,
            cluster,
            admin,
        } => {
            runtime()?.block_on(stats::consumers(&admin.client(), json, cluster))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats {
            json,
            watch,
            consumers: false,
            cluster: _,
            admin,
        } => {
            runtime()?.block_on(stats::run(&admin.client(), json, watch))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { admin } => {
            use crate::api::{RELOAD_PATH, Reloaded};
            let client = admin.client();
            let reloaded: Reloaded = runtime()?.block_on(client.post(RELOAD_PATH, &()))?;
            println!("{}", reloaded.message);
            Ok(ExitCode::SUCCESS)
        }
        Command::Top { iterations, admin } => {
            runtime()?.block_on(top::run(&admin.client(), iterations))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ban {
            cidr,
            duration,
            admin,
        } => {
            runtime()?.block_on(bans::ban(&admin.client(), &cidr, duration))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cache(CacheCommand::Purge { key, prefix, admin }) => {
            use crate::api::{CACHE_PURGE_PATH, PurgeRequest, Purged};
            let request = PurgeRequest { key, prefix };
            let purged: Purged =
                runtime()?.block_on(admin.client().post(CACHE_PURGE_PATH, &request))?;
            println!("purged {} cached responses", purged.purged);
            Ok(ExitCode::SUCCESS)
        }
        Command::Defend(DefendCommand::UnderAttack { action, admin }) => {
            runtime()?.block_on(defend::under_attack(&admin.client(), action))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Defend(DefendCommand::KnownGood(KnownGoodCommand::Add {
            address,
            ttl,
            admin,
        })) => {
            runtime()?.block_on(defend::known_good(&admin.client(), &address, ttl))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Firewall(command) => {
            runtime()?.block_on(run_firewall(command))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::DemoUpstream { addresses } => {
            runtime()?.block_on(demo::run(&addresses))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "gateway", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Unban { cidr, admin } => {
            runtime()?.block_on(bans::unban(&admin.client(), &cidr))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bans { json, page, admin } => {
            runtime()?.block_on(bans::list(&admin.client(), json, &page))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_firewall(command: FirewallCommand) -> anyhow::Result<()> {
    use crate::api::RuleAction;
    match command {
        FirewallCommand::Allow(rule) => add_rule(RuleAction::Allow, rule).await,
        FirewallCommand::Deny(rule) => add_rule(RuleAction::Deny, rule).await,
        FirewallCommand::Explain {
            address,
            json,
            admin,
        } => firewall::explain(&admin.client(), &address, json).await,
        FirewallCommand::RateLimit(RateLimitCommand::Show { json, admin }) => {
            firewall::show_rate_limits(&admin.client(), json).await
        }
        FirewallCommand::RateLimit(RateLimitCommand::Set {
            packets_per_second,
            burst,
            bytes_per_second,
            burst_bytes,
            syn_per_second,
            syn_burst,
            admin,
        }) => {
            let limits = crate::config::RawLimits {
                packets_per_second,
                burst,
                bytes_per_second,
                burst_bytes,
                syn_per_second,
                syn_burst,
            };
            firewall::set_rate_limits(&admin.client(), Some(limits)).await
        }
        FirewallCommand::RateLimit(RateLimitCommand::Reset { admin }) => {
            firewall::set_rate_limits(&admin.client(), None).await
        }
        FirewallCommand::Promote { cidr, admin } => firewall::promote(&admin.client(), &cidr).await,
        FirewallCommand::Remove { cidr, admin } => firewall::remove(&admin.client(), &cidr).await,
        FirewallCommand::List { json, page, admin } => {
            firewall::list(&admin.client(), json, &page).await
        }
        FirewallCommand::Import {
            file,
            action,
            comment,
            admin,
        } => {
            let action = match action {
                ImportAction::Allow => RuleAction::Allow,
                ImportAction::Deny => RuleAction::Deny,
            };
            firewall::import(&admin.client(), action, &file, comment).await
        }
    }
}

async fn add_rule(action: crate::api::RuleAction, rule: RuleArgs) -> anyhow::Result<()> {
    let client = rule.admin.client();
    firewall::add(
        &client,
        action,
        &rule.cidr,
        rule.ttl,
        rule.comment,
        rule.shadow,
    )
    .await
}

/// `gateway check-config | head`: a reader that goes away ends the command quietly, as it
/// does any Unix filter, instead of a panic in `println!` (Rust ignores SIGPIPE by default).
/// Not for the servers, which must outlive every peer that hangs up.
fn quiet_on_closed_pipe() {
    // SAFETY: restoring a signal's default action, before any thread is started.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// A request the daemon would refuse, refused here in the daemon's words, with the flag that
/// set the field (`flags`: field -> flag).
fn refused(invalid: crate::api::valid::Invalid, flags: &[(&str, &str)]) -> anyhow::Error {
    match flags.iter().find(|(field, _)| *field == invalid.field) {
        Some((_, flag)) => anyhow::anyhow!("{flag}: {invalid}"),
        None => anyhow::anyhow!("{invalid}"),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
