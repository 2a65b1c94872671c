//! Redaction throughput: `cargo bench --bench redact`.
//!
//! Criterion's `redact/*` run [`Scrubber::scrub`] over every text of a set per iteration, with
//! the set's size as the throughput, so criterion prints MiB/s (µs per KiB = 976.6 / MiB/s);
//! the report before them gives the sets' sizes, the time per text and the findings (which
//! must not change when the scrubber is made faster). The sets: the labelled corpora
//! (secrets, personal data, benign prose and code), JSON log lines, and short argument values.
//! Without `--bench` (`cargo test --benches`) it runs one short pass of each as a smoke test.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{hint::black_box, path::Path, time::Instant};

use criterion::{Criterion, Throughput};

use portcullis::redact::Scrubber;

fn corpus() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpora");
    let mut texts = Vec::new();
    for file in ["secrets_gitleaks.jsonl", "secrets_detect_secrets.jsonl", "pii_presidio.jsonl", "pii_generated_faker.jsonl", "benign_text.jsonl"] {
        for line in std::fs::read_to_string(dir.join(file)).unwrap().lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            texts.push(value["text"].as_str().unwrap().to_owned());
        }
    }
    texts
}

fn log_lines() -> Vec<String> {
    (0..20_000)
        .map(|i| {
            format!(
                r#"{{"timestamp":"2026-01-31T10:00:{:02}.123456Z","level":"INFO","fields":{{"message":"request handled","request_id":"{i:08x}-4b1d-4e5f-9a0b-1c2d3e4f5a6b","mcp.method":"tools/call","tool":"demo__get_forecast","latency_ms":{},"status":200}},"target":"portcullis::router"}}"#,
                i % 60,
                i % 900
            )
        })
        .collect()
}

/// Short argument values as tools get them (a city, a query, a path, a flag), with and without
/// digits: the per-string cost matters more than MB/s for these.
fn short_values() -> Vec<String> {
    const VALUES: &[&str] = &["Paris", "weather in Paris tomorrow", "hello from the bench", "src/main.rs", "true", "deploy api-gateway to staging", "SELECT name FROM users", "issue 42", "2026-11-21", "v1.4.2"];
    (0..20_000).map(|i| VALUES[i % VALUES.len()].to_owned()).collect()
}

/// One pass over `texts`: prints the set's size, the time per text and the findings.
fn report(name: &str, scrubber: &Scrubber, texts: &[String]) {
    let bytes: usize = texts.iter().map(String::len).sum();
    let start = Instant::now();
    let findings: usize = texts.iter().map(|text| scrubber.scrub(text).findings.len()).sum();
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{name:<28} {:>6} texts  {:>8.1} KiB  {:>7.2} µs/text (one pass)  {findings} findings",
        texts.len(),
        bytes as f64 / 1024.0,
        elapsed * 1e6 / texts.len().max(1) as f64
    );
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let start = Instant::now();
    let scrubber = Scrubber::new().unwrap();
    println!("rules compiled in {:.0} ms", start.elapsed().as_secs_f64() * 1e3);
    let corpus = corpus();
    let logs = log_lines();
    let shorts = short_values();
    let (corpus, logs, shorts) =
        if bench { (&corpus[..], &logs[..], &shorts[..]) } else { (&corpus[..200], &logs[..200], &shorts[..200]) };
    let sets = [("labelled_corpora", corpus), ("json_log_lines", logs), ("short_values", shorts)];
    for (name, texts) in sets {
        report(name, &scrubber, texts);
    }
    let mut criterion = Criterion::default().sample_size(20).configure_from_args();
    let mut group = criterion.benchmark_group("redact");
    for (name, texts) in sets {
        group.throughput(Throughput::Bytes(texts.iter().map(|t| t.len() as u64).sum()));
        group.bench_function(name, |b| {
            b.iter(|| {
                for text in texts {
                    black_box(scrubber.scrub(black_box(text)));
                }
            });
        });
    }
    group.finish();
    criterion.final_summary();
}
