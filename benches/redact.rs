//! Redaction throughput: `cargo bench --bench redact` prints MB/s of `redact::scrub` over the
//! labelled corpora (secrets, personal data, benign prose and code), over log-like lines and
//! over short argument values, with the time per text.
//! Under `cargo test` (no `--bench` argument) it runs one short pass as a smoke test.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{path::Path, time::Instant};

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

fn measure(name: &str, scrubber: &Scrubber, texts: &[String], rounds: usize) {
    let bytes: usize = texts.iter().map(String::len).sum::<usize>() * rounds;
    let start = Instant::now();
    let mut findings = 0usize;
    for _ in 0..rounds {
        for text in texts {
            findings += scrubber.scrub(text).findings.len();
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{name:<28} {:>8.2} MB/s  {:>7.2} µs/text  ({:.1} MB in {:.2} s, {} lines/round, {findings} findings)",
        bytes as f64 / 1e6 / elapsed,
        elapsed * 1e6 / (texts.len() * rounds) as f64,
        bytes as f64 / 1e6,
        elapsed,
        texts.len()
    );
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let start = Instant::now();
    let scrubber = Scrubber::new().unwrap();
    println!("rules compiled in {:.0} ms", start.elapsed().as_secs_f64() * 1e3);
    let rounds = if bench { 5 } else { 1 };
    let corpus = corpus();
    let logs = log_lines();
    let shorts = short_values();
    let (corpus, logs, shorts) =
        if bench { (&corpus[..], &logs[..], &shorts[..]) } else { (&corpus[..200], &logs[..200], &shorts[..200]) };
    measure("labelled corpora (mixed)", &scrubber, corpus, rounds);
    measure("JSON log lines (clean)", &scrubber, logs, rounds);
    measure("short argument values", &scrubber, shorts, rounds);
}
