//! The one scrubber for secrets and personal data, applied before anything is stored or sent:
//! audit arguments ([`scrub_json`]), log lines ([`ScrubbingMakeWriter`]), span attributes and
//! error messages ([`scrub`]).
//!
//! What it finds, in three rule sets compiled once per process ([`Scrubber::global`]):
//! - the gitleaks v8.30.1 default rules (provider keys: AWS, GitHub, GitLab, Slack, Stripe,
//!   OpenAI, Anthropic, Google, private key blocks, JWTs, generic API keys, …), vendored as
//!   `rules/gitleaks.toml` (MIT) and run with gitleaks' keyword, entropy and allowlist semantics;
//! - provider rules ported from Yelp detect-secrets 1.5.0 (`rules/detect_secrets.toml`,
//!   Apache-2.0);
//! - the scrubber's own rules ([`builtin`](self)): `Authorization`/`Proxy-Authorization`/
//!   `Cookie` values, bearer and basic credentials, JWTs, secret-looking URL and form parameters,
//!   passwords in URLs, keyword assignments; and personal data: e-mail addresses, phone
//!   numbers, Luhn-valid payment card numbers, mod-97-valid IBANs.
//!
//! A value found only by the name it is assigned to (keyword assignments, secret-named URL
//! parameters, gitleaks' `generic-api-key`) is dropped when its form says it is no secret: a
//! template, a variable, a call, a run of the alphabet, a UUID built from a clock or a name
//! (detect-secrets' heuristic filters, `heuristic.rs`). Provider tokens with a fixed format are
//! never second-guessed.
//!
//! Invariants:
//! - a replacement keeps the kind: `[REDACTED:aws_access_token]`; kinds are rule ids with `-`
//!   written `_`;
//! - findings are byte offsets into the input, sorted and non-overlapping (overlapping matches
//!   are merged, the earliest-starting rule naming the kind);
//! - a card-shaped number that fails the Luhn check is never redacted, by any rule;
//! - if the rules could not be compiled (a build defect the tests catch), the scrubber fails
//!   closed: every non-empty input becomes `[REDACTED:scrubber_unavailable]`.

mod builtin;
mod gitleaks;
mod heuristic;
mod json;
mod pii;
mod writer;

use std::sync::{Arc, LazyLock};

use serde::{Serialize, Serializer};

pub use json::{scrub_json, scrub_json_in_place};
pub use writer::{ScrubbingMakeWriter, ScrubbingWriter};

/// Errors building the scrubber.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A vendored rule file did not parse or one of its patterns did not compile.
    #[error("redaction rules: {0}")]
    Rules(String),
}

/// One redacted span of the input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was found: a rule id such as `aws_access_token`, `jwt`, `email`, `payment_card`.
    #[serde(serialize_with = "serialize_kind")]
    pub kind: Arc<str>,
    /// Byte offset of the first redacted byte in the input.
    pub start: usize,
    /// Byte offset one past the last redacted byte in the input.
    pub end: usize,
}

/// The scrubbed text and what was redacted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scrubbed {
    /// The input with every finding replaced by `[REDACTED:<kind>]`.
    pub text: String,
    /// The findings, sorted by `start`, non-overlapping, as byte offsets into the input.
    pub findings: Vec<Finding>,
}

/// The compiled rule sets.
pub struct Scrubber {
    rules: Option<Rules>,
}

struct Rules {
    gitleaks: gitleaks::Rules,
    detect_secrets: gitleaks::Rules,
    builtin: builtin::Builtin,
    pii: pii::Pii,
}

static GLOBAL: LazyLock<Scrubber> = LazyLock::new(|| match Scrubber::new() {
    Ok(scrubber) => scrubber,
    Err(error) => {
        tracing::error!(%error, "redaction rules failed to load: every scrubbed value is replaced whole");
        Scrubber { rules: None }
    }
});

/// Scrubs `text` with the process-wide [`Scrubber`].
pub fn scrub(text: &str) -> Scrubbed {
    Scrubber::global().scrub(text)
}

/// Scrubs `text` and returns only the scrubbed text (for error messages and span attributes).
pub fn scrub_str(text: &str) -> String {
    Scrubber::global().scrub(text).text
}

// === impl Scrubber ===

impl Scrubber {
    /// Loads the vendored and built-in rule sets. The built-in rules compile now; each
    /// vendored (gitleaks, detect-secrets) rule's regex is syntax-checked now and compiled the
    /// first time its keyword occurs in scanned text.
    ///
    /// # Errors
    /// [`Error::Rules`] when a rule file does not parse or a pattern is not valid syntax.
    pub fn new() -> Result<Self, Error> {
        Ok(Self {
            rules: Some(Rules {
                gitleaks: gitleaks::Rules::load(gitleaks::GITLEAKS_TOML)?,
                detect_secrets: gitleaks::Rules::load(DETECT_SECRETS_TOML)?,
                builtin: builtin::Builtin::load()?,
                pii: pii::Pii::load()?,
            }),
        })
    }

    /// The process-wide scrubber, compiled on first use.
    pub fn global() -> &'static Scrubber {
        &GLOBAL
    }

    /// Number of text rules loaded from the vendored gitleaks file.
    pub fn gitleaks_rule_count(&self) -> usize {
        self.rules.as_ref().map_or(0, |r| r.gitleaks.len())
    }

    /// Finds every secret and piece of personal data in `text` and replaces each with
    /// `[REDACTED:<kind>]`.
    pub fn scrub(&self, text: &str) -> Scrubbed {
        let findings = self.find(text);
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for finding in &findings {
            out.push_str(&text[at..finding.start]);
            out.push_str("[REDACTED:");
            out.push_str(&finding.kind);
            out.push(']');
            at = finding.end;
        }
        out.push_str(&text[at..]);
        Scrubbed { text: out, findings }
    }

    /// The findings in `text`: sorted by `start`, non-overlapping.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        if text.is_empty() {
            return Vec::new();
        }
        merge(self.find_unmerged(text))
    }

    /// Every rule's findings in `text`, unsorted and possibly overlapping (for evaluating rules;
    /// [`Scrubber::find`] is what redaction uses).
    pub fn find_unmerged(&self, text: &str) -> Vec<Finding> {
        let Some(rules) = &self.rules else {
            return vec![Finding { kind: Arc::from("scrubber_unavailable"), start: 0, end: text.len() }];
        };
        let mut findings = Vec::new();
        let mut protected = Vec::new();
        rules.pii.scan(text, &mut findings, &mut protected);
        // A Luhn-invalid card number is never redacted as a phone number. (Card-shaped digit
        // groups inside an IBAN are part of the IBAN.)
        findings.retain(|f| &*f.kind != "phone" || !protected.iter().any(|p| f.start < p.end && p.start < f.end));
        rules.builtin.scan(text, &mut findings);
        rules.gitleaks.scan(text, &mut findings);
        rules.detect_secrets.scan(text, &mut findings);
        findings
    }
}

/// Sorts findings and merges overlapping ones; the earliest-starting (then longest) names the kind.
fn merge(mut findings: Vec<Finding>) -> Vec<Finding> {
    findings.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut merged: Vec<Finding> = Vec::with_capacity(findings.len());
    for finding in findings {
        match merged.last_mut() {
            Some(last) if finding.start < last.end => last.end = last.end.max(finding.end),
            _ => merged.push(finding),
        }
    }
    merged
}

fn serialize_kind<S: Serializer>(kind: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(kind)
}

/// The vendored detect-secrets port, compiled into the binary.
const DETECT_SECRETS_TOML: &str = include_str!("rules/detect_secrets.toml");

#[cfg(test)]
mod tests;
