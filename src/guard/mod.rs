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
//! 1. one character pass (`normalize.rs`) finds invisible Unicode and terminal escapes and
//!    builds a normalized view (invisible characters and escapes removed, NFKC without
//!    combining marks, confusables folded to ASCII);
//! 2. the phrase rules (`rules.rs`) run on windows of the view around their anchor words (one
//!    automaton pass finds those, and the chat-template tokens);
//! 3. URLs (markdown images and links, reference definitions, `<img>`, bare URLs) are checked
//!    for data sent to hosts off the allow-list;
//! 4. decoded views (Unicode tag characters, base64 runs, strings split into quoted fragments)
//!    are scanned once more; a hit there adds an `encoded.*` finding.
//!
//! Cost: printable ASCII is its own view (no copy); then one anchor-automaton pass, memchr
//! searches for URLs (`://`, `](`), base64 runs and split strings, and regexes only on windows
//! around anchor hits and on the candidates those searches found. Each hand-written search is
//! tested against the regex it replaces.
//!
//! Invariants:
//! - rule ids and family names are stable: they are stored in audit rows and `_meta`;
//! - a blocked response never repeats the payload, only rule ids;
//! - the rules are compiled once per process; if that ever failed the scanner reports every
//!   phrase rule as matched (fail closed) instead of passing content unchecked.

mod anchors;
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

use std::{
    collections::HashMap,
    fmt,
    path::PathBuf,
    sync::LazyLock,
};

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
        for run in (Base64Runs { hay: analysis.view.as_bytes(), at: 0 }).take(MAX_BASE64_RUNS) {
            if let Some(decoded) = decode_base64(run) {
                found.decoded("encoded.base64", scan_decoded(&decoded, surface, allowed));
            }
        }
        if has_split_fragments(analysis.view.as_bytes()) {
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
    let bytes = view.as_bytes();
    let comments = (memchr::memchr(b'<', bytes).is_some() && memchr::memmem::find(bytes, b"<!--").is_some()).then_some(&rules.html_comment);
    for comment in comments.into_iter().flat_map(|re| re.captures_iter(bytes)) {
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

/// Checks every URL of the view: markdown links and images, reference definitions, `<img>`
/// and bare `http(s)` URLs.
fn scan_urls(rules: &rules::Compiled, view: &str, allowed: &dyn Fn(&str) -> bool, found: &mut Findings) {
    let bytes = view.as_bytes();
    // `url`: a byte range of the view (`None` unless on character boundaries).
    let mut check = |url: Option<&str>, kind: UrlKind| {
        let Some(url) = url else { return };
        let url = url.trim_end_matches(['.', ',', ';', ')', '"', '\'']);
        let slot = || memchr::memchr3(b'[', b'{', b'<', url.as_bytes()).is_some() || memchr::memchr(b'$', url.as_bytes()).is_some();
        let data_bytes = || memchr::memchr2(b'%', b'+', url.as_bytes()).is_some();
        // Most URLs can match nothing below: no placeholder slot, no open parameter and (links)
        // no data, which needs `%`, `+` or a 40-character segment; a bare URL can only be a
        // placeholder or an open parameter. Skip parsing those.
        let candidate = match kind {
            UrlKind::Image => true,
            UrlKind::Link => url.len() >= 40 || data_bytes(),
            UrlKind::Bare => false,
        };
        if !candidate && !url.ends_with('=') && !slot() {
            return;
        }
        let Some(host) = url_host(url) else { return };
        if allowed(host) {
            return;
        }
        // Every placeholder pattern starts with one of these; URL data needs `%` or `+`.
        if slot() && rules.url_placeholder.is_match(url.as_bytes()) {
            found.add("exfil.url_placeholder", Family::Exfiltration);
        }
        if url.ends_with('=') && url.contains(['?', '&']) {
            found.add("exfil.url_open_param", Family::Exfiltration);
        }
        let data = || (data_bytes() && rules.url_data.is_match(url.as_bytes())) || has_encoded_segment(url);
        match kind {
            UrlKind::Image => {
                let long_value = url
                    .split_once('?')
                    .is_some_and(|(_, query)| query.split('&').any(|pair| pair.split_once('=').is_some_and(|(_, v)| v.len() >= 16)));
                if long_value || data() {
                    found.add("exfil.markdown_image", Family::Exfiltration);
                }
            }
            UrlKind::Link if data() => found.add("exfil.markdown_link", Family::Exfiltration),
            UrlKind::Link | UrlKind::Bare => {}
        }
    };
    for link in markdown_links(bytes) {
        check(view.get(link.url.clone()), if link.image { UrlKind::Image } else { UrlKind::Link });
    }
    // Each regex runs only when the view has a literal every match contains (`]:`, `<`).
    let reference = memchr::memchr(b']', bytes).is_some() && memchr::memmem::find(bytes, b"]:").is_some();
    let tag = memchr::memchr(b'<', bytes).is_some();
    for re in [reference.then_some(&rules.md_reference), tag.then_some(&rules.html_img)].into_iter().flatten() {
        for cap in re.captures_iter(bytes) {
            if let Some(url) = cap.get(1) {
                check(view.get(url.range()), UrlKind::Image);
            }
        }
    }
    for (start, end) in bare_urls(bytes) {
        check(view.get(start..end), UrlKind::Bare);
    }
}

/// A markdown link or image `[text](url` (byte offsets into the view).
#[derive(Debug, Clone, PartialEq, Eq)]
struct MarkdownLink {
    /// `![…](…)` rather than `[…](…)`.
    image: bool,
    /// The URL (the match ends with it).
    url: std::ops::Range<usize>,
}

/// Markdown links, left to right without overlap, exactly as the regex
/// `(!?)\[[^\]\n]*\]\([ \t]*<?([^)\s>]+)` finds them (group 1: image, group 2: URL), from
/// the `](` between text and URL: the text holds no `]` or line feed, so a match ending there
/// starts at the first `[` after the last `]` or line feed before it (with a `!` just before,
/// an image); a `<` opens the URL unless the URL would be empty without it. Each `](` yields at
/// most one match, and they come in order (no regex pass with a reverse search per link).
fn markdown_links(hay: &[u8]) -> impl Iterator<Item = MarkdownLink> + '_ {
    let url_byte = |b: &u8| !(b.is_ascii_whitespace() || matches!(b, b')' | b'>' | 0x0B));
    let mut resume = 0;
    TEXT_URL_SEPARATOR.find_iter(hay).filter_map(move |close| {
        if close < resume {
            return None;
        }
        let mut at = close + 2;
        while matches!(hay.get(at), Some(b' ' | b'\t')) {
            at += 1;
        }
        if hay.get(at) == Some(&b'<') && hay.get(at + 1).is_some_and(url_byte) {
            at += 1;
        }
        let end = at + hay.get(at..)?.iter().position(|b| !url_byte(b)).unwrap_or(hay.len() - at);
        if end == at {
            return None;
        }
        let text = hay.get(resume..close)?;
        let from = resume + memchr::memrchr2(b']', b'\n', text).map_or(0, |at| at + 1);
        let open = from + memchr::memchr(b'[', hay.get(from..close)?)?;
        let image = open > resume && hay.get(open - 1) == Some(&b'!');
        resume = end;
        Some(MarkdownLink { image, url: at..end })
    })
}

/// Searchers for `://` (bare URLs) and `](` (markdown links), built once.
static SCHEME_SEPARATOR: LazyLock<memchr::memmem::Finder<'static>> = LazyLock::new(|| memchr::memmem::Finder::new(b"://"));
static TEXT_URL_SEPARATOR: LazyLock<memchr::memmem::Finder<'static>> = LazyLock::new(|| memchr::memmem::Finder::new(b"]("));

/// Bytes that end a bare URL: ASCII whitespace (vertical tab included) and `<>"'` and backtick.
static URL_STOP: [bool; 256] = {
    let mut stop = [false; 256];
    let bytes = *b"\t\n\x0B\x0C\r <>\"'`";
    let mut i = 0;
    while i < bytes.len() {
        stop[bytes[i] as usize] = true;
        i += 1;
    }
    stop
};

/// Bare URLs `(start, end)`, left to right without overlap, exactly as the regex
/// `(?i-u)\bhttps?://[^\s<>"'`]+` finds them; a byte search for `://` instead of a regex pass.
fn bare_urls(hay: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut resume = 0;
    SCHEME_SEPARATOR.find_iter(hay).filter_map(move |colon| {
        let scheme = |len: usize, name: &[u8]| colon.checked_sub(len).filter(|&at| hay.get(at..colon).is_some_and(|s| s.eq_ignore_ascii_case(name)));
        let start = scheme(5, b"https").or_else(|| scheme(4, b"http"))?;
        let boundary = start == 0 || hay.get(start - 1).is_some_and(|&b| !(b.is_ascii_alphanumeric() || b == b'_'));
        if start < resume || !boundary {
            return None;
        }
        let body = colon + 3;
        // Sixteen bytes at a time (no early exit inside a block), then byte by byte.
        let mut block = body;
        while hay.get(block..block + 16).is_some_and(|bytes| !bytes.iter().fold(false, |stop, &b| stop | URL_STOP[usize::from(b)])) {
            block += 16;
        }
        let rest = hay.get(block..)?;
        let end = block + rest.iter().position(|&b| URL_STOP[usize::from(b)]).unwrap_or(rest.len());
        if end == body {
            return None;
        }
        resume = end;
        Some((start, end))
    })
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

/// Byte class bits of [`Base64Runs`]: the standard alphabet (`A-Za-z0-9+/`) and the URL-safe
/// one (`A-Za-z0-9_-`).
const B64_STANDARD: u8 = 1;
const B64_URL_SAFE: u8 = 2;
/// Minimum run lengths (characters) of the two alphabets.
const B64_STANDARD_MIN: usize = 24;
const B64_URL_SAFE_MIN: usize = 32;

/// Alphabet bits per byte.
static B64_CLASS: [u8; 256] = {
    let mut class = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() {
            class[b] = B64_STANDARD | B64_URL_SAFE;
        } else if c == b'+' || c == b'/' {
            class[b] = B64_STANDARD;
        } else if c == b'_' || c == b'-' {
            class[b] = B64_URL_SAFE;
        }
        b += 1;
    }
    class
};

/// Base64 runs worth decoding, left to right without overlap, exactly as the regex
/// `[A-Za-z0-9+/]{24,}={0,2}|[A-Za-z0-9_-]{32,}` finds them (leftmost start; there the
/// standard alphabet first, greedily): one pass over the bytes, no regex.
struct Base64Runs<'a> {
    hay: &'a [u8],
    /// Where the next search starts (bytes).
    at: usize,
}

impl<'a> Base64Runs<'a> {
    /// End of the run of `class` bytes from `at`: sixteen bytes at a time (no early exit inside
    /// a block), then byte by byte.
    fn run_end(&self, mut at: usize, class: u8) -> usize {
        while self.hay.get(at..at + 16).is_some_and(|block| block.iter().fold(true, |all, &b| all & (B64_CLASS[usize::from(b)] & class != 0))) {
            at += 16;
        }
        while self.hay.get(at).is_some_and(|&b| B64_CLASS[usize::from(b)] & class != 0) {
            at += 1;
        }
        at
    }

    fn emit(&mut self, start: usize, end: usize) -> Option<&'a [u8]> {
        self.at = end;
        self.hay.get(start..end)
    }
}

impl<'a> Iterator for Base64Runs<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let hay = self.hay;
        let mut i = self.at;
        'skip: loop {
            // Every match starts with `B64_STANDARD_MIN` bytes of one alphabet (the URL-safe
            // minimum is longer), so a byte of neither alphabet among the next ones rules out
            // every start up to it: skip past the last such byte.
            loop {
                let probe = i + B64_STANDARD_MIN - 1;
                let Some(window) = hay.get(i..=probe) else {
                    self.at = hay.len();
                    return None;
                };
                match window.iter().rposition(|&b| B64_CLASS[usize::from(b)] == 0) {
                    Some(last) => i += last + 1,
                    None => break,
                }
            }
            // Starts of the current runs of each alphabet: the byte before `i` (if the search
            // did not start there) is in neither alphabet.
            let (mut standard, mut url_safe) = (i, i);
            while let Some(&b) = hay.get(i) {
                let class = B64_CLASS[usize::from(b)];
                i += 1;
                if class == 0 {
                    continue 'skip;
                }
                if class & B64_STANDARD == 0 {
                    standard = i;
                }
                if class & B64_URL_SAFE == 0 {
                    url_safe = i;
                }
                // A URL-safe run reaching its minimum first starts before any standard run
                // that qualifies (that one would have reached its shorter minimum earlier).
                if i - url_safe >= B64_URL_SAFE_MIN {
                    let end = self.run_end(i, B64_URL_SAFE);
                    return self.emit(url_safe, end);
                }
                if i - standard >= B64_STANDARD_MIN {
                    // A URL-safe run that started earlier wins if it still reaches its minimum.
                    if url_safe < standard {
                        let end = self.run_end(i, B64_URL_SAFE);
                        if end - url_safe >= B64_URL_SAFE_MIN {
                            return self.emit(url_safe, end);
                        }
                    }
                    let mut end = self.run_end(i, B64_STANDARD);
                    for _ in 0..2 {
                        if hay.get(end) == Some(&b'=') {
                            end += 1;
                        }
                    }
                    return self.emit(standard, end);
                }
            }
            self.at = hay.len();
            return None;
        }
    }
}

/// Whether the view has three or more short quoted fragments in a row (`"ht","tps:","//"`),
/// exactly as the regex `"[^"\n]{1,12}",[ \t]?"[^"\n]{1,12}",[ \t]?"[^"\n]{1,12}",[ \t]?"`
/// would: each `",` is tried as the end of the first fragment. JSON has a `",` every few
/// bytes, so they are found 32 bytes at a time ([`BytePairs`]), and only those followed 4–16
/// bytes later by another `",` (the second fragment's end, which a match has) are checked.
fn has_split_fragments(hay: &[u8]) -> bool {
    // `",` seen less than 4 bytes ago, still waiting for a second one (at most two: they are
    // at least 2 bytes apart).
    let mut waiting = [0usize; 4];
    let mut count = 0;
    for quote in BytePairs::new(hay, b'"', b',') {
        let mut kept = 0;
        for i in 0..count {
            let first = waiting[i];
            match quote - first {
                0..4 => {
                    waiting[kept] = first;
                    kept += 1;
                }
                4..=16 if split_fragments_at(hay, first) => return true,
                _ => {}
            }
        }
        count = kept;
        match waiting.get_mut(count) {
            Some(slot) => {
                *slot = quote;
                count += 1;
            }
            None if split_fragments_at(hay, quote) => return true,
            None => {}
        }
    }
    false
}

/// Whether a split-fragment match has its first `",` at `quote`.
fn split_fragments_at(hay: &[u8], quote: usize) -> bool {
    // A fragment is 1–12 bytes, neither `"` nor a line feed: it ends at the next quote.
    let fragment_end = |from: usize| -> Option<usize> {
        let window = hay.get(from..hay.len().min(from + 13))?;
        let len = window.iter().position(|&b| b == b'"' || b == b'\n')?;
        (len >= 1 && window.get(len) == Some(&b'"')).then_some(from + len)
    };
    // The next two fragments first: in JSON a `",` is mostly followed by a key and `":`.
    let mut at = quote + 2;
    for _ in 0..2 {
        if matches!(hay.get(at), Some(b' ' | b'\t')) {
            at += 1;
        }
        if hay.get(at) != Some(&b'"') {
            return false;
        }
        let Some(close) = fragment_end(at + 1) else { return false };
        if hay.get(close + 1) != Some(&b',') {
            return false;
        }
        at = close + 2;
    }
    if matches!(hay.get(at), Some(b' ' | b'\t')) {
        at += 1;
    }
    if hay.get(at) != Some(&b'"') {
        return false;
    }
    // The first fragment runs from the quote before `quote`.
    let from = quote.saturating_sub(13);
    let before = hay.get(from..quote).unwrap_or_default();
    before.iter().rposition(|&b| b == b'"' || b == b'\n').is_some_and(|open| before.get(open) == Some(&b'"') && fragment_end(from + open + 1) == Some(quote))
}

/// Positions `i` with `hay[i] == first` and `hay[i + 1] == second`, in order. Each 32-byte
/// block becomes one bit mask in a fixed-length, branch-free loop (which the compiler turns
/// into vector compares), so dense pairs cost no more than sparse ones.
struct BytePairs<'a> {
    hay: &'a [u8],
    first: u8,
    second: u8,
    /// Start of the next block to load.
    next: usize,
    /// Start of the current block and its remaining matches (bit `j`: position `block + j`).
    block: usize,
    mask: u32,
}

impl<'a> BytePairs<'a> {
    fn new(hay: &'a [u8], first: u8, second: u8) -> Self {
        Self { hay, first, second, next: 0, block: 0, mask: 0 }
    }
}

impl Iterator for BytePairs<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            let start = self.next;
            if start + 1 >= self.hay.len() {
                return None;
            }
            let mut mask = 0u32;
            if let Some(block) = self.hay.get(start..start + 33).and_then(|b| <&[u8; 33]>::try_from(b).ok()) {
                for j in 0..32 {
                    mask |= u32::from((block[j] == self.first) & (block[j + 1] == self.second)) << j;
                }
                // Sparse text: skip to the next `first` byte with memchr.
                if mask == 0 && !block[..32].contains(&self.first) {
                    match self.hay.get(start + 32..).and_then(|rest| memchr::memchr(self.first, rest)) {
                        Some(at) => self.next = start + 32 + at,
                        None => self.next = self.hay.len(),
                    }
                    continue;
                }
            } else {
                let tail = self.hay.get(start..).unwrap_or_default();
                for (j, pair) in tail.windows(2).enumerate() {
                    mask |= u32::from((pair[0] == self.first) & (pair[1] == self.second)) << j;
                }
            }
            self.block = start;
            self.next = start + 32;
            self.mask = mask;
        }
        let j = self.mask.trailing_zeros() as usize;
        self.mask &= self.mask - 1;
        Some(self.block + j)
    }
}

/// Decodes a base64 run to text when it is mostly printable (otherwise it is a hash, an id or
/// binary data, and not worth scanning).
///
/// Most runs (hashes, ids, URL paths) are rejected on a short prefix, without decoding the run
/// or allocating: when the first 12 (then 192) decoded bytes are not UTF-8, the whole text is
/// not either, since every successful decode starts with them (the alphabet that can decode
/// the run is fixed by the characters in it).
fn decode_base64(run: &[u8]) -> Option<String> {
    if run.len() > MAX_DECODED * 4 / 3 {
        return None;
    }
    for prefix in [16, 256] {
        // Whole groups before the last one (which may be padded or short).
        match run.get(..prefix).filter(|_| run.len() >= prefix + 4) {
            Some(prefix) if !prefix_may_be_text(prefix) => return None,
            Some(_) => {}
            None => break,
        }
    }
    let bytes = STANDARD_PAD_INDIFFERENT.decode(run).or_else(|_| URL_SAFE_NO_PAD_INDIFFERENT.decode(run)).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let printable = text.chars().filter(|c| !c.is_control() || c.is_whitespace()).count();
    (text.len() >= 12 && printable * 10 >= text.chars().count() * 9).then_some(text)
}

/// Whether `prefix` (at most 256 base64 characters, a multiple of 4) decodes to bytes that
/// can start UTF-8 text.
fn prefix_may_be_text(prefix: &[u8]) -> bool {
    let mut decoded = [0u8; 192];
    let url_safe = prefix.iter().any(|b| matches!(b, b'-' | b'_'));
    let len = if url_safe { URL_SAFE_NO_PAD_INDIFFERENT.decode_slice(prefix, &mut decoded) } else { STANDARD_PAD_INDIFFERENT.decode_slice(prefix, &mut decoded) };
    match len {
        Ok(len) => !std::str::from_utf8(decoded.get(..len).unwrap_or_default()).is_err_and(|e| e.error_len().is_some()),
        // Both alphabets at once: neither engine can decode the run.
        Err(_) => false,
    }
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
