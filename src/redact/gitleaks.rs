//! The vendored gitleaks rule set (`rules/gitleaks.toml`, gitleaks v8.30.1, MIT; see
//! `rules/README.md`) and the part of gitleaks' detection semantics the scrubber reproduces.
//!
//! Per rule, as gitleaks' `detect` does: a rule runs only when one of its keywords occurs in the
//! lower-cased text (one Aho-Corasick pass finds every keyword at once); the secret is the rule's
//! `secretGroup`, else the first non-empty capture group, else the whole match; a rule with an
//! `entropy` threshold drops secrets whose Shannon entropy is not above it; `generic-*` rules drop
//! secrets without a digit; global and per-rule allowlists (`regexes` against the secret, the
//! match or the line per `regexTarget`, and `stopwords`) drop what they allow. Path and commit
//! allowlists never apply: the scrubber sees text, not files.
//!
//! Beyond gitleaks: the rules that find a free-form value by the name it is assigned to
//! ([`KEYWORD_RULES`]) drop values that are not secrets by form (templates, variables,
//! sequences, derived UUIDs; see [`heuristic`]), as the scrubber's own keyword
//! rules do. Provider rules with a fixed token format are left as gitleaks has them.
//!
//! Go's RE2 classes `\w`, `\d` and `\s` are ASCII-only; they are rewritten to explicit ASCII
//! classes before compiling, which is both faithful to gitleaks and much smaller than Rust's
//! Unicode classes.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::{Regex, RegexBuilder};
use serde::Deserialize;

use super::{Error, Finding, heuristic};

/// The rule file, compiled into the binary.
pub(super) const GITLEAKS_TOML: &str = include_str!("rules/gitleaks.toml");

/// Compiled-size cap per rule regex (bytes); the largest gitleaks rule needs well under this.
const REGEX_SIZE_LIMIT: usize = 32 * 1024 * 1024;

/// Rules whose secret is a free-form value recognised only by the name it is assigned to (no
/// provider prefix, no fixed format), and the check their secrets must pass.
pub(super) const KEYWORD_RULES: &[(&str, Check)] = &[
    ("generic-api-key", Check::Form),
    ("nuget-config-password", Check::Form),
    // gitleaks runs this `password = "…"` rule on `.tf` and `.hcl` files only; on text of
    // unknown type it is a keyword assignment like the built-in `secret_assignment` rule and is
    // held to the same test (it would otherwise re-flag the placeholders that rule drops).
    ("hashicorp-tf-password", Check::Assignment),
];

/// A check on a keyword rule's secret (see [`KEYWORD_RULES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// Not a template, variable, sequence or derived UUID ([`heuristic::not_secret_by_form`]).
    Form,
    /// The built-in keyword-assignment test ([`heuristic::plausible_assigned_secret`]), of
    /// which [`Check::Form`] is a part, on the value inside its quotes.
    Assignment,
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    allowlist: Option<AllowlistToml>,
    #[serde(default)]
    rules: Vec<RuleToml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleToml {
    id: String,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    secret_group: Option<usize>,
    #[serde(default)]
    entropy: Option<f64>,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    allowlists: Vec<AllowlistToml>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AllowlistToml {
    #[serde(default)]
    condition: Option<String>,
    #[serde(default)]
    regex_target: Option<String>,
    #[serde(default)]
    regexes: Vec<String>,
    #[serde(default)]
    stopwords: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    commits: Vec<String>,
}

/// What an allowlist regex is matched against.
#[derive(Debug, Clone, Copy)]
enum Target {
    Secret,
    Match,
    Line,
}

struct Allowlist {
    target: Target,
    regexes: Vec<Regex>,
    /// Stopwords, matched case-insensitively anywhere in the secret.
    stopwords: Option<AhoCorasick>,
}

struct Rule {
    kind: Arc<str>,
    /// The pattern with ASCII classes ([`ascii_classes`]); its syntax is checked at load.
    pattern: String,
    /// Compiled on the rule's first run: most rules' keywords never occur in a given
    /// deployment's traffic, and the whole set compiled is ~15 MiB of automata.
    /// `None` when compiling failed (logged once; the rule then redacts the whole text).
    regex: OnceLock<Option<Regex>>,
    secret_group: Option<usize>,
    entropy: Option<f64>,
    generic: bool,
    check: Option<Check>,
    allowlists: Vec<Allowlist>,
}

/// The compiled gitleaks rules with their keyword prefilter.
pub(super) struct Rules {
    rules: Vec<Rule>,
    global: Option<Allowlist>,
    keywords: AhoCorasick,
    /// Keyword pattern index → rules that keyword enables.
    keyword_rules: Vec<Vec<usize>>,
    /// Rules without keywords: they always run.
    always: Vec<usize>,
}

// === impl Rules ===

impl Rules {
    /// Parses and compiles `source` (a gitleaks configuration file).
    ///
    /// # Errors
    /// [`Error::Rules`] when the file does not parse or a regex does not compile.
    pub(super) fn load(source: &str) -> Result<Self, Error> {
        let file: File = toml::from_str(source).map_err(|e| Error::Rules(format!("gitleaks.toml: {e}")))?;
        let global = file.allowlist.map(|a| compile_allowlist(&a, "global allowlist")).transpose()?.flatten();
        let mut rules = Vec::new();
        let mut keyword_index: HashMap<String, usize> = HashMap::new();
        let mut keyword_rules: Vec<Vec<usize>> = Vec::new();
        let mut always = Vec::new();
        for rule in file.rules {
            // Path-only rules (e.g. `pkcs12-file`) match file names, never text.
            let Some(pattern) = rule.regex.as_deref() else { continue };
            let pattern = ascii_classes(pattern);
            regex_syntax::Parser::new().parse(&pattern).map_err(|e| Error::Rules(format!("rule {}: {e}", rule.id)))?;
            let mut allowlists = Vec::new();
            for allowlist in &rule.allowlists {
                if let Some(compiled) = compile_allowlist(allowlist, &rule.id)? {
                    allowlists.push(compiled);
                }
            }
            let index = rules.len();
            if rule.keywords.is_empty() {
                always.push(index);
            }
            for keyword in &rule.keywords {
                let keyword = keyword.to_ascii_lowercase();
                let next = keyword_index.len();
                let slot = *keyword_index.entry(keyword).or_insert(next);
                if slot == keyword_rules.len() {
                    keyword_rules.push(Vec::new());
                }
                keyword_rules[slot].push(index);
            }
            rules.push(Rule {
                kind: Arc::from(rule.id.replace('-', "_")),
                pattern,
                regex: OnceLock::new(),
                secret_group: rule.secret_group,
                entropy: rule.entropy,
                generic: rule.id.starts_with("generic"),
                check: KEYWORD_RULES.iter().find(|(id, _)| *id == rule.id).map(|(_, check)| *check),
                allowlists,
            });
        }
        let mut patterns: Vec<(String, usize)> = keyword_index.into_iter().collect();
        patterns.sort_by_key(|(_, slot)| *slot);
        let keywords = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(patterns.iter().map(|(k, _)| k.as_str()))
            .map_err(|e| Error::Rules(format!("keyword automaton: {e}")))?;
        Ok(Self { rules, global, keywords, keyword_rules, always })
    }

    /// Number of text rules loaded.
    pub(super) fn len(&self) -> usize {
        self.rules.len()
    }

    /// Appends a finding for every secret the rules detect in `text`.
    pub(super) fn scan(&self, text: &str, findings: &mut Vec<Finding>) {
        // Overlapping search: every keyword occurrence counts, as with gitleaks' Contains.
        // Most texts hit no keyword: then only the keyword-less rules run, with no allocation.
        // Each keyword adds its rules once, however often it occurs (a large value of
        // `eyeyey…` must not grow this list with the text).
        let mut enabled: Vec<usize> = Vec::new();
        let mut seen: Vec<bool> = Vec::new();
        for hit in self.keywords.find_overlapping_iter(text) {
            if seen.is_empty() {
                seen = vec![false; self.keyword_rules.len()];
            }
            let keyword = hit.pattern().as_usize();
            let first = seen.get_mut(keyword).is_some_and(|s| !std::mem::replace(s, true));
            if first {
                enabled.extend_from_slice(&self.keyword_rules[keyword]);
            }
        }
        if !enabled.is_empty() {
            enabled.extend_from_slice(&self.always);
            // Rule order, each rule once, as the rule file lists them.
            enabled.sort_unstable();
            enabled.dedup();
        }
        let indices = if enabled.is_empty() { &self.always } else { &enabled };
        for rule in indices.iter().filter_map(|&index| self.rules.get(index)) {
            self.scan_rule(rule, text, findings);
        }
    }

    /// Compiles every rule now (tests; a deployment compiles each on its first run).
    ///
    /// # Errors
    /// [`Error::Rules`] naming the first rule that does not compile.
    #[cfg(test)]
    pub(super) fn compile_all(&self) -> Result<(), Error> {
        for rule in &self.rules {
            build(&rule.pattern).map_err(|e| Error::Rules(format!("rule {}: {e}", rule.kind)))?;
        }
        Ok(())
    }

    fn scan_rule(&self, rule: &Rule, text: &str, findings: &mut Vec<Finding>) {
        let regex = rule.regex.get_or_init(|| match build(&rule.pattern) {
            Ok(regex) => Some(regex),
            Err(error) => {
                tracing::error!(rule = %rule.kind, %error, "redaction rule failed to compile: text it would scan is redacted whole");
                None
            }
        });
        let Some(regex) = regex else {
            // Fail closed: a rule that cannot run must not let its secrets through.
            findings.push(Finding { kind: rule.kind.clone(), start: 0, end: text.len() });
            return;
        };
        // Most texts do not match: a match test allocates no capture slots.
        if !regex.is_match(text) {
            return;
        }
        for captures in regex.captures_iter(text) {
            let Some(whole) = captures.get(0) else { continue };
            let secret = match rule.secret_group {
                Some(group) => captures.get(group),
                None => captures.iter().skip(1).flatten().find(|m| !m.as_str().is_empty()),
            }
            .unwrap_or(whole);
            let value = secret.as_str();
            if value.is_empty() {
                continue;
            }
            if rule.entropy.is_some_and(|threshold| shannon_entropy(value) <= threshold) {
                continue;
            }
            if rule.generic && !value.bytes().any(|b| b.is_ascii_digit()) {
                continue;
            }
            if rule.check.is_some_and(|check| !check.passes(value)) {
                continue;
            }
            let line = line_around(text, whole.start(), whole.end());
            let allowed = |list: &Allowlist| list.allows(value, whole.as_str(), line);
            if self.global.as_ref().is_some_and(allowed) || rule.allowlists.iter().any(allowed) {
                continue;
            }
            findings.push(Finding { kind: rule.kind.clone(), start: secret.start(), end: secret.end() });
        }
    }
}

// === impl Check ===

impl Check {
    /// Whether `secret` passes the check.
    fn passes(self, secret: &str) -> bool {
        let value = unquote(secret);
        match self {
            Self::Form => !heuristic::not_secret_by_form(value),
            Self::Assignment => heuristic::plausible_assigned_secret(value),
        }
    }
}

/// `value` without one pair of surrounding quotes (`"…"`, `'…'`, `` `…` ``).
fn unquote(value: &str) -> &str {
    for quote in ['"', '\'', '`'] {
        if let Some(inner) = value.strip_prefix(quote).and_then(|v| v.strip_suffix(quote)) {
            return inner;
        }
    }
    value
}

// === impl Allowlist ===

impl Allowlist {
    fn allows(&self, secret: &str, whole: &str, line: &str) -> bool {
        let target = match self.target {
            Target::Secret => secret,
            Target::Match => whole,
            Target::Line => line,
        };
        if self.regexes.iter().any(|r| r.is_match(target)) {
            return true;
        }
        self.stopwords.as_ref().is_some_and(|words| words.is_match(secret))
    }
}

/// Compiles one allowlist; `None` when it can never apply to text (path or commit conditions,
/// which under `condition = "AND"` never hold without a path).
fn compile_allowlist(list: &AllowlistToml, owner: &str) -> Result<Option<Allowlist>, Error> {
    let and = list.condition.as_deref().is_some_and(|c| c.eq_ignore_ascii_case("and"));
    if and && (!list.paths.is_empty() || !list.commits.is_empty()) {
        return Ok(None);
    }
    if list.regexes.is_empty() && list.stopwords.is_empty() {
        return Ok(None);
    }
    let target = match list.regex_target.as_deref() {
        Some("match") => Target::Match,
        Some("line") => Target::Line,
        _ => Target::Secret,
    };
    let regexes = list
        .regexes
        .iter()
        .map(|p| compile(p).map_err(|e| Error::Rules(format!("{owner} allowlist: {e}"))))
        .collect::<Result<_, _>>()?;
    let stopwords = if list.stopwords.is_empty() {
        None
    } else {
        let words = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .build(&list.stopwords)
            .map_err(|e| Error::Rules(format!("{owner} stopwords: {e}")))?;
        Some(words)
    };
    Ok(Some(Allowlist { target, regexes, stopwords }))
}

/// Compiles a Go RE2 pattern with ASCII `\w`, `\d`, `\s` (RE2's meaning).
fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    build(&ascii_classes(pattern))
}

/// Compiles a pattern already rewritten by [`ascii_classes`].
fn build(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).size_limit(REGEX_SIZE_LIMIT).build()
}

/// Rewrites the Perl classes `\w`, `\d`, `\s` (and their negations outside brackets) to ASCII
/// classes, inside and outside bracket expressions.
pub(super) fn ascii_classes(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 32);
    let mut chars = pattern.chars().peekable();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(next) = chars.next() else {
                    out.push('\\');
                    break;
                };
                let replacement = match (next, in_class) {
                    ('w', true) => Some("0-9A-Za-z_"),
                    ('d', true) => Some("0-9"),
                    ('s', true) => Some("\\t\\n\\x0C\\r "),
                    ('w', false) => Some("[0-9A-Za-z_]"),
                    ('d', false) => Some("[0-9]"),
                    ('s', false) => Some("[\\t\\n\\x0C\\r ]"),
                    ('W', false) => Some("[^0-9A-Za-z_]"),
                    ('D', false) => Some("[^0-9]"),
                    ('S', false) => Some("[^\\t\\n\\x0C\\r ]"),
                    // RE2's word boundary is ASCII too (and lets the lazy DFA run).
                    ('b', false) => Some("(?-u:\\b)"),
                    ('B', false) => Some("(?-u:\\B)"),
                    _ => None,
                };
                match replacement {
                    Some(r) => out.push_str(r),
                    None => {
                        out.push('\\');
                        out.push(next);
                    }
                }
            }
            // RE2 reads a `{` that starts no repetition as a literal; Rust rejects it.
            '{' if !in_class => {
                let rest: String = chars.clone().take_while(|c| *c != '}').collect();
                let counted = !rest.is_empty()
                    && rest.len() < 12
                    && chars.clone().nth(rest.chars().count()) == Some('}')
                    && rest.split(',').count() <= 2
                    && rest.split(',').next().is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
                    && rest.split(',').nth(1).is_none_or(|m| m.chars().all(|c| c.is_ascii_digit()));
                out.push_str(if counted { "{" } else { "\\{" });
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                // A leading `^` and a leading `]` are literal parts of the class syntax.
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
                if chars.peek() == Some(&']') {
                    out.push_str("\\]");
                    chars.next();
                }
            }
            '[' if in_class => {
                // POSIX classes such as `[:alnum:]` inside a bracket expression.
                if chars.peek() == Some(&':') {
                    out.push('[');
                    for inner in chars.by_ref() {
                        out.push(inner);
                        if inner == ']' {
                            break;
                        }
                    }
                } else {
                    out.push_str("\\[");
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            // Rust reads `--`, `&&` and `~~` in a class as set operations; RE2 as literals.
            '-' if in_class && chars.peek() == Some(&'-') => out.push_str("\\-"),
            '&' | '~' if in_class => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// Shannon entropy of `value` in bits per character (gitleaks `shannonEntropy`).
pub(super) fn shannon_entropy(value: &str) -> f64 {
    let mut counts: HashMap<char, usize> = HashMap::new();
    let mut total = 0usize;
    for c in value.chars() {
        *counts.entry(c).or_default() += 1;
        total += 1;
    }
    if total == 0 {
        return 0.0;
    }
    let total = total as f64;
    counts.values().map(|&n| n as f64 / total).map(|p| -p * p.log2()).sum()
}

/// The line of `text` holding `start..end` (the lines it spans, if several).
fn line_around(text: &str, start: usize, end: usize) -> &str {
    let from = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let to = text[end..].find('\n').map_or(text.len(), |i| end + i);
    &text[from..to]
}
