//! Guard scan cost: `cargo bench --bench guard`.
//!
//! - First a report: the latency the guard adds to one `tools/call` result (p50/p99 of
//!   `Guard::sanitize_tool_result`, timed one call at a time), for the corpus's tool outputs and
//!   for 64 KiB results.
//! - Then criterion's `guard_scan/benign` and `guard_scan/hostile`: `Guard::scan` over every
//!   text of the set per iteration, with the set's size as the throughput, so criterion prints
//!   MiB/s (µs per KiB = 976.6 / MiB/s).
//!
//! Inputs are the development corpora in `tests/data/corpora/`: benign = `benign_text.jsonl` +
//! `benign_tool_outputs.jsonl`; hostile = the tool-result families of
//! `injection_payloads.jsonl`. Criterion's arguments work after `--`, e.g.
//! `cargo bench --bench guard -- guard_scan/benign`.

use std::{hint::black_box, path::PathBuf, time::Instant};

use criterion::{Criterion, Throughput};

use portcullis::guard::{Guard, Surface};
use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::Value;

const HOSTILE_FAMILIES: [&str; 8] = [
    "instruction_override",
    "indirect_injection_in_document",
    "unicode_tag_smuggling",
    "unicode_variant_selector_smuggling",
    "invisible_binary_smuggling",
    "invisible_or_confusable_chars",
    "ansi_escape_raw",
    "markdown_exfiltration",
];

fn texts(file: &str, keep: impl Fn(&Value) -> bool) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpora").join(file);
    let mut out = Vec::new();
    for line in std::fs::read_to_string(path)?.lines().filter(|l| !l.trim().is_empty()) {
        let row: Value = serde_json::from_str(line)?;
        if keep(&row) {
            out.push(row.get("text").and_then(Value::as_str).unwrap_or_default().to_owned());
        }
    }
    Ok(out)
}

/// Criterion's `guard_scan` group: one iteration scans every text of a set once.
fn scan_group(criterion: &mut Criterion, guard: &Guard, sets: [(&str, &[String]); 2]) {
    let mut group = criterion.benchmark_group("guard_scan");
    for (name, texts) in sets {
        group.throughput(Throughput::Bytes(texts.iter().map(|t| t.len() as u64).sum()));
        group.bench_function(name, |b| {
            b.iter(|| {
                for text in texts {
                    black_box(guard.scan(black_box(text), Surface::Result, None));
                }
            });
        });
    }
    group.finish();
}

/// Time of one `sanitize_tool_result` on a result holding `text`, in µs.
fn sanitize_us(guard: &Guard, text: &str) -> f64 {
    let mut result = CallToolResult::success(vec![ContentBlock::text(text.to_owned())]);
    let start = Instant::now();
    let outcome = guard.sanitize_tool_result("bench", &mut result);
    let elapsed = start.elapsed().as_secs_f64() * 1e6;
    black_box(outcome);
    elapsed
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or(0.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Without `--bench` (`cargo test --benches`, an unoptimized build): a short smoke pass.
    let rounds = if std::env::args().any(|a| a == "--bench") { (20, 200) } else { (1, 2) };
    let guard = Guard::default();
    let mut benign = texts("benign_text.jsonl", |_| true)?;
    let outputs = texts("benign_tool_outputs.jsonl", |_| true)?;
    benign.extend(outputs.iter().cloned());
    let hostile = texts("injection_payloads.jsonl", |row| {
        row.get("family").and_then(Value::as_str).is_some_and(|f| HOSTILE_FAMILIES.contains(&f))
    })?;

    if std::env::var_os("GUARD_BENCH_SLOWEST").is_some() {
        let mut timed: Vec<(f64, usize, String)> = benign
            .iter()
            .chain(&hostile)
            .map(|t| {
                let start = Instant::now();
                for _ in 0..20 {
                    black_box(guard.scan(t, Surface::Result, None));
                }
                (start.elapsed().as_secs_f64() * 1e6 / 20.0, t.len(), t.chars().take(100).collect::<String>())
            })
            .collect();
        timed.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (us, len, head) in timed.iter().take(12) {
            println!("{us:8.0} µs {len:7} B {:.1} µs/KiB {head:?}", us / (*len as f64 / 1024.0));
        }
    }
    // Warm up: compiles the rules and the lazy DFAs.
    for text in benign.iter().chain(&hostile) {
        black_box(guard.scan(text, Surface::Result, None));
    }
    let kib = |texts: &[String]| texts.iter().map(String::len).sum::<usize>() as f64 / 1024.0;
    println!("scan sets: benign {} texts, {:.0} KiB; hostile {} texts, {:.0} KiB", benign.len(), kib(&benign), hostile.len(), kib(&hostile));

    // Added latency on a tools/call result: sanitize each benign tool output as a text block.
    let mut samples = Vec::new();
    for _ in 0..rounds.0 {
        for text in &outputs {
            samples.push(sanitize_us(&guard, text));
        }
    }
    samples.sort_by(f64::total_cmp);
    let mean_kib = outputs.iter().map(String::len).sum::<usize>() as f64 / outputs.len().max(1) as f64 / 1024.0;
    println!(
        "\nguard on a tools/call result ({} benign tool outputs, mean {mean_kib:.1} KiB): p50 {:.0} µs, p99 {:.0} µs",
        outputs.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99)
    );

    // 64 KiB results, as in the load harness: its `large_result` (one character repeated) and
    // benign tool outputs joined up to 64 KiB (real JSON and text).
    let mut joined = String::new();
    for text in outputs.iter().cycle().take(outputs.len() * 16) {
        if joined.len() + text.len() > 64 * 1024 {
            break;
        }
        joined.push_str(text);
        joined.push('\n');
    }
    for (name, text) in [("64 KiB of 'x' (the load harness's large_result)", "x".repeat(64 * 1024)), ("benign tool outputs joined", joined)] {
        let mut samples = Vec::new();
        for _ in 0..rounds.1 {
            samples.push(sanitize_us(&guard, &text));
        }
        samples.sort_by(f64::total_cmp);
        println!(
            "guard on a {:.0} KiB tools/call result, {name}: p50 {:.0} µs, p99 {:.0} µs",
            text.len() as f64 / 1024.0,
            percentile(&samples, 0.50),
            percentile(&samples, 0.99)
        );
    }

    let mut criterion = Criterion::default().sample_size(20).configure_from_args();
    scan_group(&mut criterion, &guard, [("benign", &benign), ("hostile", &hostile)]);
    criterion.final_summary();
    Ok(())
}
