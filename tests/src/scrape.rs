//! Reading a Prometheus scrape the way a monitoring system would: with a parser.

use std::collections::HashMap;

/// `name{label="value",...}` (labels sorted) -> value, for every sample in `text`. A
/// histogram's value is its observation count.
pub fn samples(text: &str) -> HashMap<String, f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
        .expect("a valid Prometheus text exposition");
    scrape
        .samples
        .into_iter()
        .map(|sample| {
            let mut labels: Vec<String> = sample
                .labels
                .iter()
                .map(|(key, value)| format!("{key}=\"{value}\""))
                .collect();
            labels.sort();
            let value = match sample.value {
                prometheus_parse::Value::Counter(value)
                | prometheus_parse::Value::Gauge(value)
                | prometheus_parse::Value::Untyped(value) => value,
                prometheus_parse::Value::Histogram(buckets) => buckets
                    .iter()
                    .map(|bucket| bucket.count)
                    .fold(0.0, f64::max),
                other => panic!("unexpected sample {other:?}"),
            };
            (format!("{}{{{}}}", sample.metric, labels.join(",")), value)
        })
        .collect()
}
