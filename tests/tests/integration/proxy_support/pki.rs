//! Certificates made by the real `openssl` CLI in a temporary directory, shared by the TLS
//! tests (`proxy_tls`, `proxy_mtls`, `upstream_tls`): self-signed CAs, keys with CSRs, and
//! leaves a CA signs with `openssl x509 -req`. Each test module wraps [`CertDir`] in its own
//! `Pki` for what only it needs (key forms, an `openssl ca` database and CRLs, ...).

use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// `openssl req` arguments for a new RSA 2048 key.
pub const RSA_2048: &[&str] = &["-newkey", "rsa:2048"];
/// `openssl req` arguments for a new EC P-256 key.
pub const EC_P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

/// A temporary directory under `/tmp` where `openssl` runs.
pub struct CertDir {
    dir: TempDir,
}

impl CertDir {
    /// An empty directory whose name starts with `prefix`.
    pub fn new(prefix: &str) -> CertDir {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .unwrap();
        CertDir { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn path_str(&self, file: &str) -> String {
        self.path(file).to_string_lossy().into_owned()
    }

    /// Runs `openssl args` in the directory; panics with its stderr if it fails.
    pub fn openssl(&self, args: &[&str]) {
        gateway_tests::openssl_in(self.dir.path(), args);
    }

    /// `<stem>.key` (a new key, `newkey` as [`RSA_2048`] or [`EC_P256`]) and `<stem>.pem`, a
    /// CA certificate for `subject` signed by itself, valid for 30 days.
    pub fn self_signed_ca(&self, stem: &str, newkey: &[&str], subject: &str) {
        let (key, pem) = (format!("{stem}.key"), format!("{stem}.pem"));
        let mut args = vec!["req", "-x509"];
        args.extend(newkey);
        args.extend([
            "-nodes", "-keyout", &key, "-out", &pem, "-days", "30", "-subj", subject,
        ]);
        self.openssl(&args);
    }

    /// `file`: a new EC P-256 private key (PKCS#8) from `openssl genpkey`.
    pub fn ec_p256_key(&self, file: &str) {
        self.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            file,
        ]);
    }

    /// `<stem>.key` (a new key, as in [`Self::self_signed_ca`]) and `<stem>.csr` for `subject`.
    pub fn key_and_csr(&self, stem: &str, newkey: &[&str], subject: &str) {
        let (key, csr) = (format!("{stem}.key"), format!("{stem}.csr"));
        let mut args = vec!["req", "-new"];
        args.extend(newkey);
        args.extend(["-nodes", "-keyout", &key, "-subj", subject, "-out", &csr]);
        self.openssl(&args);
    }

    /// Writes `<stem>.ext`: `sans` (openssl's syntax, e.g. `DNS:a.test,IP:127.0.0.1`) and,
    /// when given, the extended key usage. Returns the file's name.
    pub fn extensions(&self, stem: &str, sans: &str, usage: Option<&str>) -> String {
        let ext = format!("{stem}.ext");
        let mut text = format!("subjectAltName={sans}\n");
        if let Some(usage) = usage {
            text += &format!("extendedKeyUsage={usage}\n");
        }
        std::fs::write(self.path(&ext), text).unwrap();
        ext
    }

    /// Signs `csr` with `<ca>.pem`/`<ca>.key` into `out`, with the extensions in `ext`, valid
    /// for `days` from now (0: expires at once; negative: expired already).
    pub fn sign(&self, csr: &str, ca: &str, ext: &str, days: i32, out: &str) {
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            &days.to_string(),
            "-extfile",
            ext,
            "-out",
            out,
        ]);
    }
}

/// Declares `struct $name(CertDir)` that reads through to its [`CertDir`] (`pki.path(..)`,
/// `pki.openssl(..)`), for a test module's own `Pki` with what only that module needs.
macro_rules! cert_dir_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        struct $name($crate::proxy_support::pki::CertDir);

        impl std::ops::Deref for $name {
            type Target = $crate::proxy_support::pki::CertDir;

            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }
    };
}
pub(crate) use cert_dir_newtype;
