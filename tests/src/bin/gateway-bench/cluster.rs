//! `bench cluster`: rate-limit decisions per second, in one run, of a locally limited key
//! (this node's GCRA, no Redis), a cluster-limited one with the local fast path (tokens leased
//! from Redis in batches), and a cluster-limited one asking Redis for every request (exact),
//! against a redis-server on loopback started here. Each with 64 concurrent callers over 100
//! keys, a quota high enough that nearly everything is admitted (the cost measured is the
//! decision, not the refusal). Reports each rate and its ratio to the local one.
//!
//! With `--catch-up`: how long a joining node takes to catch up with 10k, 100k and 1M rules
//! (see `catch_up.rs`).
//!
//! Then the same through the proxy: requests/s of a route with a cluster-wide limit
//! (`cluster = true`) against the same route with a node-local limit, on one gateway.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gateway::{
    cluster::{ClusterLimiter, LimiterOptions, LocalLimiter, Rate, RedisLink},
    config::OnRedisDown,
};
use gateway_tests::{Gateway, redis::RedisServer, upstream::Upstream};

use crate::proxy::{compare, free_port};

const CALLERS: usize = 64;
const KEYS: usize = 100;

enum Limiter {
    Local(LocalLimiter),
    Cluster(ClusterLimiter),
}

impl Limiter {
    async fn check(&self, key: &str) -> bool {
        let (rate, burst) = (Rate::per_second(10_000_000), 10_000);
        match self {
            Limiter::Local(local) => local.check(key, rate, burst).allowed,
            Limiter::Cluster(cluster) => cluster.check(key, rate, burst).await.allowed,
        }
    }
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut seconds = 5u64;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().context("--seconds needs a value")?.parse()?,
            // The joining node's catch-up instead (its own options follow).
            "--catch-up" => return crate::catch_up::run(args.as_slice()),
            _ => bail!("unknown option {arg}"),
        }
    }
    let redis = RedisServer::on_loopback();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let link = RedisLink::open(&redis.url(), None, None)?;
        if !link.wait_up(Duration::from_secs(10)).await {
            bail!("redis-server at {} did not answer", redis.url());
        }
        let cluster = |max_batch| {
            Limiter::Cluster(ClusterLimiter::new(
                link.clone(),
                &format!("bench{}", std::process::id()),
                OnRedisDown::Deny,
                LimiterOptions { max_batch },
            ))
        };
        let cases = [
            (
                "locally limited (this node's GCRA)",
                Limiter::Local(LocalLimiter::default()),
            ),
            ("cluster-limited, leased batches of 16", cluster(16)),
            ("cluster-limited, exact (Redis per request)", cluster(1)),
        ];
        println!(
            "rate-limit decisions, {CALLERS} concurrent callers over {KEYS} keys, {seconds} s each"
        );
        println!(
            "{:<46} {:>14} {:>10} {:>10}",
            "limiter", "decisions/s", "admitted", "vs local"
        );
        let mut local_rate = None;
        for (name, limiter) in cases {
            let (rate, admitted) = measure(Arc::new(limiter), Duration::from_secs(seconds)).await;
            let base = *local_rate.get_or_insert(rate);
            println!(
                "{name:<46} {rate:>14.0} {:>9.1}% {:>9.3}x",
                admitted * 100.0,
                rate / base
            );
        }
        anyhow::Ok(())
    })?;
    routes(&runtime, &redis, seconds)
}

/// Requests/s through one gateway: a locally limited route and a cluster-limited one, both
/// with a quota far above the load (every request is admitted: the cost measured is the check).
fn routes(
    runtime: &tokio::runtime::Runtime,
    redis: &RedisServer,
    seconds: u64,
) -> anyhow::Result<()> {
    let upstream = Upstream::start("bench");
    let port = free_port()?;
    let limit = |cluster: bool| {
        format!(
            "rate_limits = [{{ key = \"ip\", rate = \"10000000/s\", burst = 100000, cluster = {cluster} }}]"
        )
    };
    let _gateway = Gateway::start(
        None,
        &format!(
            "[admin]\nsocket = \"{{admin_socket}}\"\nstate_file = \"{{dir}}/state.json\"\n\
             [xdp]\nmode = \"off\"\n[access_log]\nenabled = false\n\
             [cluster]\nredis = \"{}\"\nnode = \"bench\"\nkey_prefix = \"benchroute{}\"\n\
             [[listeners]]\nname = \"bench\"\naddress = \"127.0.0.1:{port}\"\n\
             [[upstreams]]\nname = \"bench\"\ntargets = [{{ address = \"{}\" }}]\n\
             [[routes]]\nname = \"local\"\nupstream = \"bench\"\nmatch = {{ path_prefix = \"/local\" }}\n{}\n\
             [[routes]]\nname = \"cluster\"\nupstream = \"bench\"\nmatch = {{ path_prefix = \"/cluster\" }}\n{}\n",
            redis.url(),
            std::process::id(),
            upstream.address(),
            limit(false),
            limit(true),
        ),
    );
    let address = format!("127.0.0.1:{port}").parse()?;
    compare(
        runtime,
        "\n## Through the proxy",
        "locally limited",
        &[
            ("locally limited", address, "/local"),
            ("cluster-limited", address, "/cluster"),
        ],
        seconds,
    )
}

/// Decisions per second over `duration`, and the fraction admitted.
async fn measure(limiter: Arc<Limiter>, duration: Duration) -> (f64, f64) {
    let (done, allowed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (limiter, done, allowed) = (limiter.clone(), done.clone(), allowed.clone());
            tokio::spawn(async move {
                let mut n = caller;
                while start.elapsed() < duration {
                    let key = format!("consumer-{}", n % KEYS);
                    n += CALLERS;
                    if limiter.check(&key).await {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    // Let the other callers run (the local limiter never awaits).
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let (done, allowed) = (
        done.load(Ordering::Relaxed),
        allowed.load(Ordering::Relaxed),
    );
    (
        done as f64 / start.elapsed().as_secs_f64(),
        allowed as f64 / done.max(1) as f64,
    )
}
