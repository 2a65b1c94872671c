//! Recall and false-positive rates on the development half of the shared security corpora
//! (`tests/data/corpora/`, see its README for sources and licences). Run with
//! `cargo test --lib guard::corpus -- --nocapture` to see the table (set `GUARD_CORPUS_VERBOSE=1`
//! to print the rules each injection row matched).
//!
//! Thresholds (issue 5): on the tool-result families of `injection_payloads.jsonl`, recall
//! ≥ 90% overall and ≥ 80% per family; on `tool_descriptions.jsonl`, recall ≥ 90% on
//! injections that carry a marker (every family but the `declared_*` ones, which state
//! malicious behaviour in plain words); false positives ≤ 1% on benign tool outputs and
//! benign text, ≤ 3% on benign descriptions.

use std::{collections::BTreeMap, path::PathBuf};

use serde_json::Value;

use super::{Finding, Guard, Surface};

/// The `injection_payloads.jsonl` families that put markers in tool results.
const RESULT_FAMILIES: [&str; 8] = [
    "instruction_override",
    "indirect_injection_in_document",
    "unicode_tag_smuggling",
    "unicode_variant_selector_smuggling",
    "invisible_binary_smuggling",
    "invisible_or_confusable_chars",
    "ansi_escape_raw",
    "markdown_exfiltration",
];

fn load(name: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpora").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("corpus line is JSON")).collect()
}

fn field<'a>(row: &'a Value, name: &str) -> &'a str {
    row.get(name).and_then(Value::as_str).unwrap_or("")
}

fn scan(guard: &Guard, row: &Value, surface: Surface) -> Vec<Finding> {
    guard.scan(field(row, "text"), surface, None)
}

/// Hit count and total for one row of the table.
#[derive(Default)]
struct Tally {
    hits: usize,
    total: usize,
}

impl Tally {
    fn rate(&self) -> f64 {
        if self.total == 0 { 0.0 } else { self.hits as f64 / self.total as f64 }
    }
}

fn show(text: &str) -> String {
    let mut shown: String = text.chars().take(160).collect::<String>();
    shown = format!("{shown:?}");
    shown
}

#[test]
fn corpus_recall_and_false_positives() {
    let guard = Guard::default();
    let mut failures = Vec::new();
    let mut table = String::from("\nguard corpus (development half)\n");

    // Recall on tool-result injection families.
    let mut per_family: BTreeMap<&str, Tally> = BTreeMap::new();
    let payloads = load("injection_payloads.jsonl");
    for row in &payloads {
        let family = field(row, "family");
        let Some(&family) = RESULT_FAMILIES.iter().find(|f| **f == family) else { continue };
        let tally = per_family.entry(family).or_default();
        tally.total += 1;
        let findings = scan(&guard, row, Surface::Result);
        if std::env::var_os("GUARD_CORPUS_VERBOSE").is_some() {
            println!("ROW {family} {:?}", findings.iter().map(|f| f.rule).collect::<Vec<_>>());
        }
        if findings.is_empty() {
            println!("MISS {family}: {}", show(field(row, "text")));
        } else {
            tally.hits += 1;
        }
    }
    let overall = Tally { hits: per_family.values().map(|t| t.hits).sum(), total: per_family.values().map(|t| t.total).sum() };
    table.push_str("| set | flagged | total | rate | threshold |\n|---|---|---|---|---|\n");
    for (family, tally) in &per_family {
        table.push_str(&format!("| recall `{family}` | {} | {} | {:.1}% | ≥ 80% |\n", tally.hits, tally.total, tally.rate() * 100.0));
        if tally.rate() < 0.80 {
            failures.push(format!("recall on {family} is {:.1}%", tally.rate() * 100.0));
        }
    }
    table.push_str(&format!("| **recall, result families** | {} | {} | {:.1}% | ≥ 90% |\n", overall.hits, overall.total, overall.rate() * 100.0));
    if overall.rate() < 0.90 {
        failures.push(format!("overall result recall is {:.1}%", overall.rate() * 100.0));
    }

    // Tool descriptions: recall on marked injections, false positives on benign ones.
    let descriptions = load("tool_descriptions.jsonl");
    let (mut marked, mut declared, mut benign_desc) = (Tally::default(), Tally::default(), Tally::default());
    for row in &descriptions {
        let findings = scan(&guard, row, Surface::Description);
        let family = field(row, "family");
        match field(row, "label") {
            "injection" if family.starts_with("declared_") => {
                declared.total += 1;
                declared.hits += usize::from(!findings.is_empty());
            }
            "injection" => {
                marked.total += 1;
                if findings.is_empty() {
                    println!("MISS description {family}: {}", show(field(row, "text")));
                } else {
                    marked.hits += 1;
                }
            }
            _ => {
                benign_desc.total += 1;
                if !findings.is_empty() {
                    benign_desc.hits += 1;
                    println!("FP description {:?}: {}", findings.iter().map(|f| f.rule).collect::<Vec<_>>(), show(field(row, "text")));
                }
            }
        }
    }
    table.push_str(&format!("| recall, descriptions with a marker | {} | {} | {:.1}% | ≥ 90% |\n", marked.hits, marked.total, marked.rate() * 100.0));
    table.push_str(&format!("| (info) recall, `declared_*` descriptions without a marker | {} | {} | {:.1}% | none |\n", declared.hits, declared.total, declared.rate() * 100.0));
    if marked.rate() < 0.90 {
        failures.push(format!("description recall is {:.1}%", marked.rate() * 100.0));
    }

    // False positives on benign results and text.
    for (name, limit) in [("benign_tool_outputs.jsonl", 0.01), ("benign_text.jsonl", 0.01)] {
        let mut tally = Tally::default();
        for row in load(name) {
            tally.total += 1;
            let findings = scan(&guard, &row, Surface::Result);
            if !findings.is_empty() {
                tally.hits += 1;
                println!("FP {name} {:?}: {}", findings.iter().map(|f| f.rule).collect::<Vec<_>>(), show(field(&row, "text")));
            }
        }
        table.push_str(&format!("| false positives `{name}` | {} | {} | {:.2}% | ≤ {:.0}% |\n", tally.hits, tally.total, tally.rate() * 100.0, limit * 100.0));
        if tally.rate() > limit {
            failures.push(format!("false positives on {name} are {:.2}%", tally.rate() * 100.0));
        }
    }
    table.push_str(&format!("| false positives, benign descriptions | {} | {} | {:.2}% | ≤ 3% |\n", benign_desc.hits, benign_desc.total, benign_desc.rate() * 100.0));
    if benign_desc.rate() > 0.03 {
        failures.push(format!("false positives on benign descriptions are {:.2}%", benign_desc.rate() * 100.0));
    }

    println!("{table}");
    assert!(failures.is_empty(), "corpus thresholds missed: {failures:#?}");
}
