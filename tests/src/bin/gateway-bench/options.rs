//! The benches' command-line options: `--name value` pairs, and lists of sizes.

use anyhow::{Context as _, Result};

/// `--name value` pairs, in order; an option without its value is an error naming it.
pub fn pairs(args: &[String]) -> Result<Vec<(&str, &str)>> {
    let mut args = args.iter();
    let mut pairs = Vec::new();
    while let Some(name) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{name} needs a value"))?;
        pairs.push((name.as_str(), value.as_str()));
    }
    Ok(pairs)
}

/// `10000,100000`: numbers of rules, comma-separated.
pub fn sizes(value: &str) -> Result<Vec<usize>> {
    value
        .split(',')
        .map(|size| size.trim().parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{value:?}: comma-separated numbers of rules, e.g. 10000,100000"))
}
