//! `gateway-bench`: benchmarks that compare side by side in one run and report ratios.
//! Run through `cargo xtask bench <which>` (release build, root).

mod proxy;
mod xdp;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("xdp") => xdp::run(&args[1..]),
        Some("proxy") => proxy::run(&args[1..]),
        _ => {
            eprintln!("usage: gateway-bench xdp [--seconds N] [--repeat N] | proxy [--seconds N]");
            std::process::exit(2);
        }
    }
}
