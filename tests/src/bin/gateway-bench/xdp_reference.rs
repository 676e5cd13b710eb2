//! The C reference for `bench xdp`: `xdp_reference.c` (parse, one LPM lookup of the source,
//! drop on deny), built here with clang and loaded with the same rules as the gateway, so both
//! are timed in the same run.

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{LpmTrie, MapData, lpm_trie::Key},
    programs::{TestRun, TestRunOptions, Xdp},
};
use gateway::config::{Action, FirewallConfig};
use ipnet::IpNet;

const SOURCE: &str = include_str!("xdp_reference.c");
const PROGRAM: &str = "xdp_reference";
const ACTION_DENY: u32 = 1;
const ACTION_ALLOW: u32 = 0;

pub struct Reference {
    ebpf: Ebpf,
}

/// Builds the reference object; `Ok(None)` (and a note on stdout) when no clang is installed.
pub fn build() -> anyhow::Result<Option<Vec<u8>>> {
    let Some(clang) = ["clang", "clang-14", "clang-15", "clang-16"]
        .into_iter()
        .find(|clang| {
            std::process::Command::new(clang)
                .arg("--version")
                .output()
                .is_ok()
        })
    else {
        println!(
            "(no clang on PATH: the C reference is skipped; `cargo xtask setup` installs it)\n"
        );
        return Ok(None);
    };
    let dir = tempfile::tempdir()?;
    let (source, object) = (dir.path().join("ref.c"), dir.path().join("ref.o"));
    std::fs::write(&source, SOURCE)?;
    let out = std::process::Command::new(clang)
        .args(["-O2", "-g", "-target", "bpf", "-c"])
        .arg(&source)
        .arg("-o")
        .arg(&object)
        .output()?;
    if !out.status.success() {
        bail!(
            "{clang} could not build the C reference: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(Some(std::fs::read(&object)?))
}

impl Reference {
    /// Loads the reference `object` with the rules of `firewall`.
    pub fn load(object: &[u8], firewall: &FirewallConfig) -> anyhow::Result<Reference> {
        let max_rules = firewall.rules.len() as u32;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("REF_RULES_V4", max_rules)
            .map_max_entries("REF_RULES_V6", max_rules)
            .load(object)
            .context("loading the C reference")?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .context("the reference program")?
            .try_into()?;
        program.load().context("verifying the C reference")?;
        let mut reference = Reference { ebpf };
        reference.add_rules(firewall)?;
        Ok(reference)
    }

    fn add_rules(&mut self, firewall: &FirewallConfig) -> anyhow::Result<()> {
        let mut v4: LpmTrie<&mut MapData, [u8; 4], u32> =
            LpmTrie::try_from(self.ebpf.map_mut("REF_RULES_V4").context("REF_RULES_V4")?)?;
        for rule in firewall.rules_v4() {
            if let IpNet::V4(net) = rule.net {
                let key = Key::new(u32::from(net.prefix_len()), net.addr().octets());
                v4.insert(&key, action(rule.action), 0)?;
            }
        }
        let mut v6: LpmTrie<&mut MapData, [u8; 16], u32> =
            LpmTrie::try_from(self.ebpf.map_mut("REF_RULES_V6").context("REF_RULES_V6")?)?;
        for rule in firewall
            .rules
            .iter()
            .filter(|rule| rule.net.addr().is_ipv6())
        {
            if let IpNet::V6(net) = rule.net {
                let key = Key::new(u32::from(net.prefix_len()), net.addr().octets());
                v6.insert(&key, action(rule.action), 0)?;
            }
        }
        Ok(())
    }

    /// One timed run of `frame`, `repeat` times: ns per run and the XDP action.
    pub fn run(&mut self, frame: &[u8], repeat: u32) -> anyhow::Result<(u128, u32)> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM)
            .context("the reference program")?
            .try_into()?;
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })?;
        Ok((result.duration.as_nanos(), result.return_value))
    }
}

fn action(action: Action) -> u32 {
    match action {
        Action::Deny => ACTION_DENY,
        Action::Allow => ACTION_ALLOW,
    }
}
