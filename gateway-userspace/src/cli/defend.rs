//! `gateway defend under-attack on|off|status` and `gateway defend known-good add`.

use std::time::Duration;

use crate::{
    api::{
        KNOWN_GOOD_PATH, KnownGood, KnownGoodRequest, UNDER_ATTACK_PATH, UnderAttackRequest,
        UnderAttackStatus,
    },
    control::Client,
};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
    Status,
}

pub async fn under_attack(client: &Client, switch: Switch) -> anyhow::Result<()> {
    let status: UnderAttackStatus = match switch {
        Switch::Status => client.get(UNDER_ATTACK_PATH).await?,
        Switch::On | Switch::Off => {
            let request = UnderAttackRequest {
                on: matches!(switch, Switch::On),
            };
            client.post(UNDER_ATTACK_PATH, &request).await?
        }
    };
    println!(
        "under-attack mode: {} (switched by {}, {} ago)",
        if status.on { "ON" } else { "off" },
        status.switched_by,
        humantime::format_duration(Duration::from_secs(status.since_secs as u64))
    );
    println!(
        "  new sources admitted: {}/s, burst {}",
        status.new_sources_per_second, status.new_source_burst
    );
    let sample = status
        .last_sample
        .map(|sample| format!(" (last sample: {sample}/s)"))
        .unwrap_or_default();
    println!("  automatic: {}{sample}", status.auto);
    Ok(())
}

pub async fn known_good(
    client: &Client,
    address: &str,
    ttl: Option<Duration>,
) -> anyhow::Result<()> {
    let request = KnownGoodRequest {
        address: address.to_owned(),
        ttl_secs: ttl.map(|ttl| ttl.as_secs_f64()),
    };
    request
        .validate()
        .map_err(|invalid| super::refused(invalid, &[("ttl_secs", "--ttl")]))?;
    let known: KnownGood = client.post(KNOWN_GOOD_PATH, &request).await?;
    println!(
        "{} is known-good for {}",
        known.address,
        humantime::format_duration(Duration::from_secs(known.expires_in_secs.ceil() as u64))
    );
    Ok(())
}
