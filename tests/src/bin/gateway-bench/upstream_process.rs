//! The bench's upstream (the tests' hyper server, `gateway_tests::upstream`) in a process of
//! its own, so its CPU time (the "upstream directly" rows) and its memory with idle
//! connections (the bare hyper row) are its alone, apart from the load generator's.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
};

use anyhow::{Context as _, bail};

/// `gateway-bench upstream [CERT KEY]`: serves (over TLS with CERT and KEY when given) until
/// its standard input closes; prints its address first.
pub fn serve(args: &[String]) -> anyhow::Result<()> {
    let upstream = match args {
        [] => gateway_tests::upstream::Upstream::start("bench"),
        [cert, key] => {
            gateway_tests::upstream::Upstream::start_tls("bench", server_tls(cert, key)?)
        }
        _ => bail!("usage: gateway-bench upstream [CERT KEY]"),
    };
    println!("{}", upstream.address());
    // Blocks until the parent drops its end of the pipe (or dies).
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    Ok(())
}

/// A rustls server config for `cert` and `key` (PEM), offering HTTP/1.1.
fn server_tls(cert: &str, key: &str) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}

pub struct UpstreamProcess {
    address: SocketAddr,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl UpstreamProcess {
    pub fn start() -> anyhow::Result<UpstreamProcess> {
        Self::spawn(&[])
    }

    /// The upstream over TLS with `cert` and `key`.
    pub fn start_tls(cert: &Path, key: &Path) -> anyhow::Result<UpstreamProcess> {
        Self::spawn(&[cert, key])
    }

    fn spawn(tls: &[&Path]) -> anyhow::Result<UpstreamProcess> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("upstream")
            .args(tls)
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
