//! Guard: scans every text a model will read for prompt-injection markers, sanitizes tool
//! results, resources and prompts, and pins tool definitions against rug pulls.
//!
//! Role in the request path (DESIGN.md step 8): after the upstream answers and before the
//! client sees the answer, the router calls [`Guard::sanitize_tool_result`],
//! [`Guard::sanitize_resource`] or [`Guard::sanitize_prompt`]; when the catalog is built it
//! calls [`Guard::scan_tool`] / [`Guard::scan_prompt`] and checks each tool's
//! [`definition_hash`] against the [`PinStore`].
//!
//! How a text is scanned ([`Scanner::scan`]):
//! 1. one character pass ([`normalize`]) finds invisible Unicode and terminal escapes and
//!    builds a normalized view (invisible characters and escapes removed, NFKC without
//!    combining marks, confusables folded to ASCII);
//! 2. the phrase rules ([`rules`]) run over the view as one regex set, plus one Aho-Corasick
//!    automaton for chat-template tokens;
//! 3. URLs (markdown images and links, reference definitions, `<img>`, bare URLs) are checked
//!    for data sent to hosts off the allow-list;
//! 4. decoded views (Unicode tag characters, base64 runs, strings split into quoted fragments)
//!    are scanned once more; a hit there adds an `encoded.*` finding.
//!
//! Invariants:
//! - rule ids and family names are stable: they are stored in audit rows and `_meta`;
//! - a blocked response never repeats the payload, only rule ids;
//! - the rules are compiled once per process; if that ever failed the scanner reports every
//!   phrase rule as matched (fail closed) instead of passing content unchecked.

mod config;
mod normalize;
mod pins;
mod remote;
mod rules;
mod sanitize;

#[cfg(test)]
mod corpus_tests;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, fmt, path::PathBuf};

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD_PAD_INDIFFERENT, URL_SAFE_NO_PAD_INDIFFERENT},
};
use serde::{Deserialize, Serialize};

pub use self::{
    config::{Action, DefinitionAction, FamilyActions, FamilyOverrides, GuardConfig, GuardOverride, Policy},
    pins::{PinEntry, PinState, PinStore, PinVerdict, definition_hash},
    remote::{MAX_RESOURCE_READS, ScannedItem, scan_server},
    rules::{RULES, RuleInfo},
    sanitize::{DefinitionScan, Outcome},
};

/// Key of the guard's entry in a result's `_meta`.
pub const META_KEY: &str = "io.portcullis/guard";

/// Errors of the guard: configuration and the pin store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `strip` was configured for a family whose findings are phrases.
    #[error("guard action \"strip\" does not apply to family {family}: its findings are phrases, not removable characters (use \"annotate\" or \"block\")")]
    StripNotApplicable {
        /// The offending family.
        family: Family,
    },
    /// An `allow_hosts` entry is not a bare host name.
    #[error("invalid guard allow_hosts entry {host:?}: expected a bare host name such as \"example.com\"")]
    InvalidHost {
        /// The entry, trimmed and lowercased.
        host: String,
    },
    /// The pin store file could not be read.
    #[error("cannot read the tool pin store {path}")]
    PinRead {
        /// Path of `pins.json`.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The pin store file is not valid JSON of the expected shape.
    #[error("the tool pin store {path} is corrupt (fix or remove it; every tool is then pinned anew)")]
    PinParse {
        /// Path of `pins.json`.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The pin store file could not be written.
    #[error("cannot write the tool pin store {path}")]
    PinWrite {
        /// Path of `pins.json` (or its temporary file).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `approve` named a tool the store has never seen.
    #[error("no pinned tool {key} (see `portcullis tools list`)")]
    UnknownTool {
        /// `UPSTREAM/TOOL`.
        key: String,
    },
    /// `portcullis scan`: the remote server could not be scanned.
    #[error("cannot scan MCP server {url}: {reason}")]
    Remote {
        /// The server's URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// `approve` named a tool without a pending change.
    #[error("tool {key} has no pending definition change to approve")]
    NothingPending {
        /// `UPSTREAM/TOOL`.
        key: String,
    },
}

/// Detection families. Actions are configured per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Instruction override and role/turn spoofing.
    Instruction,
    /// Hidden-instruction tags and coercion.
    HiddenInstruction,
    /// Instructions about other tools.
    ToolShadowing,
    /// Tag characters, zero-width and bidi controls, variation selectors, confusables.
    InvisibleUnicode,
    /// ANSI CSI/OSC sequences and other C0/C1 controls.
    TerminalEscape,
    /// Links and images that carry data off to foreign hosts, and instructions to build them.
    Exfiltration,
    /// Encoded payloads that decode to any of the above.
    EncodedPayload,
}

/// Where a text comes from; a few rules apply to one surface only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Surface {
    /// Tool results, resource contents, prompt messages.
    Result,
    /// Tool and prompt descriptions, schema strings, annotation titles.
    Description,
}

/// One rule that matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Finding {
    /// Stable rule id (see [`RULES`]).
    pub rule: &'static str,
    /// The rule's family.
    pub family: Family,
}

/// The scanner: stateless apart from the process-wide compiled rules; cheap to copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scanner;

/// The guard for a gateway: the scanner plus the effective policy of each upstream.
/// `Guard::default()` applies the default policy everywhere.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    global: Policy,
    upstreams: HashMap<String, Policy>,
}

/// Decoded texts longer than this are not scanned again (bytes).
const MAX_DECODED: usize = 64 * 1024;
/// At most this many base64 runs are decoded per text.
const MAX_BASE64_RUNS: usize = 32;

// === impl Family ===

impl Family {
    /// Every family, in a stable order.
    pub const ALL: [Family; 7] = [
        Self::Instruction,
        Self::HiddenInstruction,
        Self::ToolShadowing,
        Self::InvisibleUnicode,
        Self::TerminalEscape,
        Self::Exfiltration,
        Self::EncodedPayload,
    ];

    /// The family's name in configuration, `_meta` and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Instruction => "instruction",
            Self::HiddenInstruction => "hidden_instruction",
            Self::ToolShadowing => "tool_shadowing",
            Self::InvisibleUnicode => "invisible_unicode",
            Self::TerminalEscape => "terminal_escape",
            Self::Exfiltration => "exfiltration",
            Self::EncodedPayload => "encoded_payload",
        }
    }

    /// Whether findings of this family are characters that `strip` can remove.
    pub fn strippable(self) -> bool {
        matches!(self, Self::InvisibleUnicode | Self::TerminalEscape)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Scanner ===

impl Scanner {
    /// Scans one text. `allowed` says whether a URL host is on the allow-list.
    ///
    /// Findings are deduplicated by rule, in the order first found.
    pub fn scan(&self, text: &str, surface: Surface, allowed: &dyn Fn(&str) -> bool) -> Vec<Finding> {
        let mut found = Findings::default();
        let analysis = normalize::analyze(text);
        for rule in &analysis.rules {
            found.add(rule.id(), rule.family());
        }
        scan_view(&analysis.view, surface, allowed, &mut found);

        if !analysis.tag_payload.is_empty() {
            found.decoded("encoded.tag_chars", scan_decoded(&analysis.tag_payload, surface, allowed));
        }
        if let Some(rules) = rules::COMPILED.as_ref() {
            for run in rules.base64_run.find_iter(analysis.view.as_bytes()).take(MAX_BASE64_RUNS) {
                if let Some(decoded) = decode_base64(run.as_bytes()) {
                    found.decoded("encoded.base64", scan_decoded(&decoded, surface, allowed));
                }
            }
        }
        let split = analysis.view.contains("\",")
            && rules::COMPILED.as_ref().is_none_or(|rules| rules.split_fragments.is_match(analysis.view.as_bytes()));
        if split {
            let joined = analysis.view.replace("\", \"", "").replace("\",\"", "").replace("\",", "");
            let inner = scan_decoded(&joined, surface, allowed);
            let new: Vec<Finding> = inner.into_iter().filter(|f| !found.contains(f.rule)).collect();
            found.decoded("encoded.split_string", new);
        }
        found.0
    }
}

/// Phrase, URL and comment rules over a normalized view.
fn scan_view(view: &str, surface: Surface, allowed: &dyn Fn(&str) -> bool, found: &mut Findings) {
    let Some(rules) = rules::COMPILED.as_ref() else {
        for (id, family) in rules::all_phrases() {
            found.add(id, family);
        }
        return;
    };
    for (id, family) in rules.phrases(view, surface) {
        found.add(id, family);
    }
    scan_urls(rules, view, allowed, found);
    for comment in rules.html_comment.captures_iter(view.as_bytes()) {
        let body = comment.get(1).map_or(&b""[..], |m| m.as_bytes());
        if body.len() >= 40 && rules.comment_instruction.is_match(body) {
            found.add("hidden.html_comment", Family::HiddenInstruction);
        }
    }
}

/// Scans a decoded payload: character and phrase rules, no further decoding.
fn scan_decoded(text: &str, surface: Surface, allowed: &dyn Fn(&str) -> bool) -> Vec<Finding> {
    let mut found = Findings::default();
    let analysis = normalize::analyze(text);
    for rule in &analysis.rules {
        found.add(rule.id(), rule.family());
    }
    scan_view(&analysis.view, surface, allowed, &mut found);
    found.0
}

/// What a URL is embedded in, which decides how much data it may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UrlKind {
    /// Loaded without a click: markdown or HTML images, reference definitions.
    Image,
    /// A markdown link: needs a click.
    Link,
    /// A bare URL in text.
    Bare,
}

fn scan_urls(rules: &rules::Compiled, view: &str, allowed: &dyn Fn(&str) -> bool, found: &mut Findings) {
    let bytes = view.as_bytes();
    let mut check = |url: &[u8], kind: UrlKind| {
        let Ok(url) = std::str::from_utf8(url) else { return };
        let url = url.trim_end_matches(['.', ',', ';', ')', '"', '\'']);
        let Some(host) = url_host(url) else { return };
        if allowed(host) {
            return;
        }
        if rules.url_placeholder.is_match(url.as_bytes()) {
            found.add("exfil.url_placeholder", Family::Exfiltration);
        }
        if url.ends_with('=') && url.contains(['?', '&']) {
            found.add("exfil.url_open_param", Family::Exfiltration);
        }
        let data = rules.url_data.is_match(url.as_bytes()) || has_encoded_segment(url);
        match kind {
            UrlKind::Image => {
                let long_value = url
                    .split_once('?')
                    .is_some_and(|(_, query)| query.split('&').any(|pair| pair.split_once('=').is_some_and(|(_, v)| v.len() >= 16)));
                if data || long_value {
                    found.add("exfil.markdown_image", Family::Exfiltration);
                }
            }
            UrlKind::Link if data => found.add("exfil.markdown_link", Family::Exfiltration),
            UrlKind::Link | UrlKind::Bare => {}
        }
    };
    for cap in rules.md_link.captures_iter(bytes) {
        let image = cap.get(1).is_some_and(|m| !m.is_empty());
        if let Some(url) = cap.get(2) {
            check(url.as_bytes(), if image { UrlKind::Image } else { UrlKind::Link });
        }
    }
    for re in [&rules.md_reference, &rules.html_img] {
        for cap in re.captures_iter(bytes) {
            if let Some(url) = cap.get(1) {
                check(url.as_bytes(), UrlKind::Image);
            }
        }
    }
    for url in rules.bare_url.find_iter(bytes) {
        check(url.as_bytes(), UrlKind::Bare);
    }
}

/// Whether a URL segment looks like encoded data: 40+ characters of the base64 alphabet
/// with both upper- and lower-case letters. Hex digests (commit SHAs) and UUIDs are one case
/// only, so a link to a commit is not data.
fn has_encoded_segment(url: &str) -> bool {
    url.split(['/', '?', '&', '=', '#', ';', ',']).any(|segment| {
        segment.len() >= 40
            && segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'_'))
            && segment.bytes().any(|b| b.is_ascii_uppercase())
            && segment.bytes().any(|b| b.is_ascii_lowercase())
    })
}

/// The host of an absolute `http(s)` (or scheme-relative) URL, without user info and port.
fn url_host(url: &str) -> Option<&str> {
    let rest = if let Some((scheme, rest)) = url.split_once("://") {
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return None;
        }
        rest
    } else {
        url.strip_prefix("//")?
    };
    let authority = rest.split(['/', '?', '#', '\\']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = if host.starts_with('[') { host.split_inclusive(']').next()? } else { host.split(':').next()? };
    (!host.is_empty()).then_some(host)
}

/// Decodes a base64 run to text when it is mostly printable (otherwise it is a hash, an id or
/// binary data, and not worth scanning).
fn decode_base64(run: &[u8]) -> Option<String> {
    if run.len() > MAX_DECODED * 4 / 3 {
        return None;
    }
    let bytes = STANDARD_PAD_INDIFFERENT.decode(run).or_else(|_| URL_SAFE_NO_PAD_INDIFFERENT.decode(run)).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let printable = text.chars().filter(|c| !c.is_control() || c.is_whitespace()).count();
    (text.len() >= 12 && printable * 10 >= text.chars().count() * 9).then_some(text)
}

/// Findings deduplicated by rule id, in the order first found.
#[derive(Debug, Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn add(&mut self, rule: &'static str, family: Family) {
        if !self.contains(rule) {
            self.0.push(Finding { rule, family });
        }
    }

    fn contains(&self, rule: &str) -> bool {
        self.0.iter().any(|f| f.rule == rule)
    }

    /// Adds the findings of a decoded view, preceded by the `encoded.*` marker, if any.
    fn decoded(&mut self, marker: &'static str, inner: Vec<Finding>) {
        if inner.is_empty() {
            return;
        }
        self.add(marker, Family::EncodedPayload);
        for finding in inner {
            self.add(finding.rule, finding.family);
        }
    }
}

// === impl Guard ===

impl Guard {
    /// A guard with the global policy of `config` and the overrides of each upstream
    /// (`[upstream.guard]`, by upstream name).
    ///
    /// # Errors
    /// An invalid global or per-upstream policy (see [`GuardConfig::policy`]).
    pub fn new<'a>(config: &GuardConfig, upstreams: impl IntoIterator<Item = (&'a str, &'a GuardOverride)>) -> Result<Self, Error> {
        let global = config.policy(None)?;
        let upstreams = upstreams
            .into_iter()
            .map(|(name, over)| Ok((name.to_owned(), config.policy(Some(over))?)))
            .collect::<Result<_, Error>>()?;
        Ok(Self { global, upstreams })
    }

    /// The effective policy for `upstream` (the global one when it has no overrides).
    pub fn policy(&self, upstream: &str) -> &Policy {
        self.upstreams.get(upstream).unwrap_or(&self.global)
    }

    /// Scans one text with `upstream`'s allow-list (`None`: the global one).
    pub fn scan(&self, text: &str, surface: Surface, upstream: Option<&str>) -> Vec<Finding> {
        let policy = upstream.map_or(&self.global, |u| self.policy(u));
        Scanner.scan(text, surface, &|host| policy.host_allowed(host))
    }
}
