/// mimalloc: per-thread free lists make the proxy's many small, short-lived allocations
/// (headers, bodies, futures) cheaper than glibc's malloc (README, Benchmarks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gateway::cli::main()
}
