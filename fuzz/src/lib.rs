//! Shared parts of the fuzz targets in `src/bin/` (one file per target; `cargo xtask fuzz`
//! finds them there and seeds each from `corpus/<target>/`).

use std::sync::Mutex;

use gateway::{config::Config, xdp::XdpFirewall};
use gateway_tests::{xdp_model::Model, xdp_run};

/// Ends the process with a clear message when a target cannot run here (not root, outside
/// CI); in CI that is an error instead, as for the kernel tests.
pub fn require_root(target: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        eprintln!("fuzz target {target} needs root (BPF_PROG_TEST_RUN), and CI=true");
        std::process::exit(1);
    }
    eprintln!("skipping fuzz target {target}: it needs root (BPF_PROG_TEST_RUN)");
    std::process::exit(0);
}

/// The real XDP program, once per example policy of the model, loaded with its rules.
pub struct XdpPrograms {
    programs: Mutex<Vec<(Model, XdpFirewall)>>,
}

impl XdpPrograms {
    pub fn load() -> XdpPrograms {
        let programs = Model::examples()
            .into_iter()
            .map(|model| {
                let text = format!(
                    "[xdp]\nmode = \"off\"\nmax_rules_v4 = 64\nmax_rules_v6 = 64\n[firewall]\n{}",
                    model.firewall_toml()
                );
                let config = Config::parse(&text).expect("the harness config is valid");
                let mut xdp = XdpFirewall::load(&config.xdp).expect("the XDP program loads");
                xdp.apply(&config.firewall).expect("rules are written");
                for net in &model.bans {
                    xdp.ban(*net, None).expect("ban");
                }
                (model, xdp)
            })
            .collect();
        XdpPrograms {
            programs: Mutex::new(programs),
        }
    }

    /// Runs `frame` through program `choice` (modulo their number) and panics unless the
    /// model counts it under the same reason.
    pub fn check(&self, choice: u8, frame: &[u8]) {
        let mut programs = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        let count = programs.len();
        let (model, xdp) = &mut programs[usize::from(choice) % count];
        let actual = xdp_run::verdict(xdp, frame);
        let expected = model.verdict(frame);
        assert_eq!(
            actual, expected,
            "the program and the model disagree\n{model:?}\nframe {frame:02x?}"
        );
    }
}
