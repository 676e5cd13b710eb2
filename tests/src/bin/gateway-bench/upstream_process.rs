//! The bench's upstream (the tests' hyper server, `gateway_tests::upstream`) in a process of
//! its own, so its CPU time (the "upstream directly" rows) and its memory with idle
//! connections (the bare hyper row) are its alone, apart from the load generator's.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Child, ChildStdin, Command, Stdio},
};

use anyhow::{Context as _, bail};

/// `gateway-bench upstream`: serves until its standard input closes; prints its address first.
pub fn serve() -> anyhow::Result<()> {
    let upstream = gateway_tests::upstream::Upstream::start("bench");
    println!("{}", upstream.address());
    // Blocks until the parent drops its end of the pipe (or dies).
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    Ok(())
}

pub struct UpstreamProcess {
    address: SocketAddr,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl UpstreamProcess {
    pub fn start() -> anyhow::Result<UpstreamProcess> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("upstream")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the upstream process")?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("the upstream's stdout")?)
            .read_line(&mut line)?;
        let address = match line.trim().parse() {
            Ok(address) => address,
            Err(_) => bail!("the upstream process printed {line:?}, not its address"),
        };
        Ok(UpstreamProcess {
            address,
            child,
            stdin,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for UpstreamProcess {
    fn drop(&mut self) {
        // Its stdin closing is its signal to stop.
        drop(self.stdin.take());
        crate::peers::reap(&mut self.child);
    }
}
