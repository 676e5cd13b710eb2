//! `gateway-bench`: benchmarks that compare side by side in one run and report ratios.
//! Run through `cargo xtask bench <which>` (release build, root).

mod callgrind;
mod catch_up;
mod cluster;
mod configs;
mod control;
mod cpu;
mod defend;
mod features;
mod handshakes;
mod idle;
mod measure;
mod options;
mod peers;
mod proxy;
mod upstream_process;
mod versus;
mod wrk;
mod xdp;
mod xdp_reference;

fn main() -> anyhow::Result<()> {
    raise_file_limit();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("xdp") => xdp::run(&args[1..]),
        Some("proxy") => proxy::run(&args[1..]),
        Some("defend") => defend::run(&args[1..]),
        Some("cluster") => cluster::run(&args[1..]),
        Some("control") => control::run(&args[1..]),
        // The bench's own upstream process (upstream_process.rs), not a bench.
        Some("upstream") => upstream_process::serve(&args[1..]),
        _ => {
            eprintln!(
                "usage: gateway-bench xdp [--seconds N] [--repeat N] | proxy [--seconds N] [--rounds N] [--wrk] [--only plain-64,...] [--idle N] [--callgrind [--requests N] [--config NAME] [--keep FILE]] | defend [--seconds N] | cluster [--seconds N] | cluster --catch-up [--sizes 10000,100000,1000000] | control [--ops N] [--sizes 10000,100000,1000000]"
            );
            std::process::exit(2);
        }
    }
}

/// Open files for 10,000 idle connections and more, here and in the proxies started from here
/// (they inherit it). Root may raise the hard limit; otherwise the soft one goes up to it.
fn raise_file_limit() {
    const WANTED: libc::rlim_t = 65_536;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: WANTED.max(limit.rlim_cur),
            rlim_max: WANTED.max(limit.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
