//! The rule table: stable rule ids, their families, and the patterns, compiled once.
//!
//! Phrase patterns are byte regexes over the normalized view in ASCII mode (`(?-u)`): the view
//! has already folded compatibility forms and confusables to ASCII, and ASCII word boundaries
//! keep the matcher on the DFA engines. Literal chat-template tokens are found by the same
//! automaton pass as the anchors (below). URL rules are procedural (host allow-list, data
//! checks).
//!
//! How phrase rules run ([`Compiled::phrases`]): one pass of the anchor automaton
//! ([`super::anchors`]) finds every occurrence of every rule's *anchors*, literals of which at
//! least one lies inside every match of the rule. Each rule is split into its top-level alternatives (*branches*); a branch only runs
//! on *windows* around the rule's anchor occurrences: from an occurrence, outwards as long as
//! the bytes are ones the branch can match at all, and no further than its longest possible
//! match. A match contains an occurrence and only such bytes, so it lies inside a window:
//! the windowed search finds a match exactly when a search over the whole view would. Benign
//! text therefore costs one automaton pass plus a few short regex runs.
//!
//! Invariants:
//! - rule ids are stable API (they appear in `_meta`, audit rows and metrics); add new ids
//!   rather than renaming old ones;
//! - every match of a phrase pattern contains one of its anchors (ASCII case-insensitive);
//!   an anchor that spans a `[ \t]+` gap in the pattern would break this, so anchors stop at
//!   the first space or tab (`"user "`, `"user\t"`, not `"user message"`).

use std::sync::LazyLock;

use regex::bytes::Regex;
use regex_automata::{Anchored, Input, meta};
use regex_syntax::hir::{Class, Hir, HirKind, Look};

use super::{Family, Surface, anchors::Anchors};

/// Description of one rule, for documentation and `portcullis guard rules`-style listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleInfo {
    /// Stable rule id, e.g. `instruction.ignore_previous`.
    pub id: &'static str,
    /// The family the rule belongs to.
    pub family: Family,
    /// One line on what the rule detects.
    pub summary: &'static str,
}

/// Rules found by the character pass (see [`super::normalize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum CharRule {
    TagChars,
    ZeroWidth,
    Bidi,
    VariationSelector,
    Confusable,
    AnsiCsi,
    AnsiOsc,
    Osc8Hyperlink,
    Control,
}

/// One phrase rule: a regex over the view, limited to some surfaces.
struct PhraseRule {
    id: &'static str,
    family: Family,
    /// `None`: every surface.
    only: Option<Surface>,
    /// Literals (ASCII, case-insensitive) of which at least one occurs inside every match of
    /// the pattern; the pattern only runs on windows around their occurrences.
    anchors: &'static [&'static str],
    pattern: &'static str,
}

/// Every rule id, its family and summary.
pub const RULES: &[RuleInfo] = &[
    RuleInfo { id: "instruction.ignore_previous", family: Family::Instruction, summary: "tells the model to ignore, disregard or forget its instructions or the surrounding data" },
    RuleInfo { id: "instruction.forced_output", family: Family::Instruction, summary: "dictates the exact answer (\"just print …\", \"if asked, respond with …\")" },
    RuleInfo { id: "instruction.role_spoof", family: Family::Instruction, summary: "fake conversation turns: `System:`/`Assistant:`/`User:` lines, `[system]`, `SYSTEM:` labels" },
    RuleInfo { id: "instruction.chat_template", family: Family::Instruction, summary: "chat-template control tokens such as `<|im_start|>`, `<|endoftext|>`, `[INST]`" },
    RuleInfo { id: "instruction.address_to_ai", family: Family::Instruction, summary: "a note or instruction addressed to the AI, model or automated reader" },
    RuleInfo { id: "instruction.new_instructions", family: Family::Instruction, summary: "announces new, real or updated instructions" },
    RuleInfo { id: "hidden.tag", family: Family::HiddenInstruction, summary: "instruction tags: `<IMPORTANT>`, `<system>`, `<instruction>`, `<SYSTEM_REQUIREMENT>`" },
    RuleInfo { id: "hidden.directive", family: Family::HiddenInstruction, summary: "override markers: `[… DIRECTIVE]`, `[… INSTRUCTION]`, `|||ADMIN_OVERRIDE|||`, `SYSTEM OVERRIDE`, `ACT AS:`" },
    RuleInfo { id: "hidden.conceal", family: Family::HiddenInstruction, summary: "tells the model to keep something from the user (\"do not tell the user\")" },
    RuleInfo { id: "hidden.precondition", family: Family::HiddenInstruction, summary: "coerces a tool order (\"before using this tool, read …\", \"must be called first\")" },
    RuleInfo { id: "hidden.sensitive_file", family: Family::HiddenInstruction, summary: "descriptions only: points at credentials or agent configuration (`~/.ssh`, `mcp.json`, `/etc/passwd`)" },
    RuleInfo { id: "hidden.html_comment", family: Family::HiddenInstruction, summary: "an HTML comment that carries instructions for the model" },
    RuleInfo { id: "hidden.active_markup", family: Family::HiddenInstruction, summary: "active markup: `<script>`, `<iframe>`, `javascript:` URLs, inline event handlers" },
    RuleInfo { id: "shadowing.other_tool", family: Family::ToolShadowing, summary: "gives instructions about another tool (side effects on it, how it must behave, not to use it)" },
    RuleInfo { id: "shadowing.redirect", family: Family::ToolShadowing, summary: "redirects all emails, messages or data of a tool to a fixed recipient" },
    RuleInfo { id: "unicode.tag_chars", family: Family::InvisibleUnicode, summary: "Unicode tag characters U+E0000–U+E007F outside emoji flag sequences" },
    RuleInfo { id: "unicode.zero_width", family: Family::InvisibleUnicode, summary: "zero-width and invisible characters (ZWSP, joiners next to ASCII, invisible operators, fillers)" },
    RuleInfo { id: "unicode.bidi_control", family: Family::InvisibleUnicode, summary: "bidirectional embedding, override and isolate controls" },
    RuleInfo { id: "unicode.variation_selector", family: Family::InvisibleUnicode, summary: "variation selectors without a legitimate base (runs of them: smuggled bytes)" },
    RuleInfo { id: "unicode.confusable", family: Family::InvisibleUnicode, summary: "a word mixing scripts with confusable letters (Latin `age` with Cyrillic `е`)" },
    RuleInfo { id: "escape.ansi_csi", family: Family::TerminalEscape, summary: "ANSI CSI sequences (`ESC [` or U+009B): colours, cursor movement, screen clearing" },
    RuleInfo { id: "escape.ansi_osc", family: Family::TerminalEscape, summary: "ANSI OSC sequences (`ESC ]` or U+009D): window titles, clipboard writes" },
    RuleInfo { id: "escape.osc8_hyperlink", family: Family::TerminalEscape, summary: "OSC 8 terminal hyperlinks, whose target is invisible" },
    RuleInfo { id: "escape.control_char", family: Family::TerminalEscape, summary: "other C0/C1 control characters (backspace, bell, lone ESC, DEL)" },
    RuleInfo { id: "exfil.markdown_image", family: Family::Exfiltration, summary: "markdown or HTML image whose URL carries data to a host not on the allow-list" },
    RuleInfo { id: "exfil.markdown_link", family: Family::Exfiltration, summary: "markdown link whose URL carries data (long encoded values) to a host not on the allow-list" },
    RuleInfo { id: "exfil.url_placeholder", family: Family::Exfiltration, summary: "URL with a slot for data (`?q=[DATA]`, `{SECRET}`) to a host not on the allow-list" },
    RuleInfo { id: "exfil.url_open_param", family: Family::Exfiltration, summary: "URL ending in an empty parameter (`?q=`) for the model to append data to" },
    RuleInfo { id: "exfil.instruction", family: Family::Exfiltration, summary: "tells the model to put conversation data into a placeholder, URL or encoding" },
    RuleInfo { id: "encoded.base64", family: Family::EncodedPayload, summary: "a base64 run that decodes to text matching another rule" },
    RuleInfo { id: "encoded.tag_chars", family: Family::EncodedPayload, summary: "ASCII smuggled in Unicode tag characters that matches another rule" },
    RuleInfo { id: "encoded.split_string", family: Family::EncodedPayload, summary: "a payload split into quoted fragments (`\"ht\",\"tps\"`) that matches another rule once joined" },
];

/// Phrase rules. Patterns are ASCII-mode (`(?-u)`) byte regexes over the normalized view.
const PHRASES: &[PhraseRule] = &[
    PhraseRule {
        id: "instruction.ignore_previous",
        anchors: &["ignore", "disregard", "forget", "neglect", "overlook"],
        family: Family::Instruction,
        only: None,
        pattern: r#"(?i-u)\b(?:ignore|disregard|forget|neglect|overlook)\b[ \t,]+(?:(?:all|any|every|each|the|these|those|this|your|my|of|and|or|previous|previously|prior|preceding|above|earlier|former|following|foregoing|rest|remaining|other|original|initial|existing|system|safety|negative|current|given|provided)[ \t,]+){0,6}(?:instructions?|directions?|directives?|prompts?|rules|guidelines|guidance|guardrails|restrictions|constraints|policies|orders|programming)\b|\b(?:ignore|disregard|forget)[ \t]+(?:about[ \t]+)?(?:everything|all[ \t]+(?:that|of[ \t]+that))[ \t]+(?:you[ \t]+(?:were|have[ \t]+been|know|learned)|above|before|previously|said|else[ \t]+and)\b|\b(?:ignore|disregard|forget|neglect|overlook)\b[ \t,]+(?:(?:the|your|my|of|and|or|previous|previously|prior|preceding|above|earlier|former|following|foregoing|rest|remaining|other|original|initial|existing|system|safety|negative|current|given|provided)[ \t,]+){0,5}?(?:all|any|every|these|those|this|previous|prior|preceding|above|earlier|following|foregoing|rest|remaining|other|negative)[ \t,]+(?:(?:the|your|my|of|and|or|previous|prior|preceding|above|earlier|following|rest|remaining|other|original|system|negative|current|given|provided)[ \t,]+){0,4}(?:context|content|data|info|information|text|messages?|indicators|documents?|snippets?|conversation|commands|everything)\b|\b(?:ignore|disregard)[ \t]+(?:them|it|that|everything)[ \t]+(?:and|but)[ \t]+(?:instead|only|just)\b"#,
    },
    PhraseRule {
        id: "instruction.forced_output",
        anchors: &["just", "only", "simply", "instead", "questioned", "asked"],
        family: Family::Instruction,
        only: None,
        pattern: r#"(?i-u)\b(?:just|only|simply|instead)[ \t]+(?:print|say|output|write|respond|reply|answer|repeat|state|report)(?:[ \t]+(?:with|back))?(?:[ \t]+(?:only|exactly|verbatim))?[ \t]*(?:"|'|\xE2\x80[\x98\x9C]|the[ \t]+following\b|this[ \t]+(?:text|sentence|phrase)\b)|\bif[ \t]+(?:you[ \t]+are[ \t]+)?(?:questioned|asked)\b[^.\n]*?\b(?:report|say|respond|reply|answer|state)[ \t]+(?:that|with|only)\b"#,
    },
    PhraseRule {
        id: "instruction.role_spoof",
        anchors: &["assistant", "ai:", "ai ", "ai\t", "system", "user:", "user ", "user\t", "human", "[admin", "[developer", "[inst", "[sys"],
        family: Family::Instruction,
        only: None,
        pattern: r#"(?m-u)^[ \t>*#-]*(?i:assistant|ai)(?i:[ \t]+(?:message|response|note))?[ \t]*:|^[ \t>*#-]*(?i:system|user|human)(?i:[ \t]+(?:message|prompt|note|instructions?|update))?[ \t]*:(?:[ \t]+[^ \t\n]+){5}|\bSYSTEM(?:[ _](?:MESSAGE|PROMPT|NOTE|INSTRUCTIONS?|UPDATE))?[ \t]*:[ \t]|(?i)\[(?:system|assistant|admin|developer|inst|sys)(?:[ _](?:request|message|note|prompt))?(?:\]|::|:)"#,
    },
    PhraseRule {
        id: "instruction.chat_template",
        anchors: &["<|"],
        family: Family::Instruction,
        only: None,
        pattern: r#"(?i-u)<\|[a-z_]{2,24}\|>"#,
    },
    PhraseRule {
        id: "instruction.address_to_ai",
        anchors: &["note", "message", "instruction", "attention", "notice", "memo", "directive"],
        family: Family::Instruction,
        only: None,
        pattern: r#"(?i-u)\b(?:note|message|instructions?|attention|notice|memo|directive)[ \t]+(?:to|for)[ \t]+(?:all[ \t]+|any[ \t]+|the[ \t]+)?(?:ai|llms?|automated|language[ \t]+models?|assistants?|chatbots?|ai[ \t]+agents?|models?|agents?)\b"#,
    },
    PhraseRule {
        id: "instruction.new_instructions",
        anchors: &["instruction", "your ", "your\t", "now ", "now\t"],
        family: Family::Instruction,
        only: None,
        pattern: r#"(?i-u)\b(?:new|updated|revised|real|actual|true|secret|hidden|additional|overriding)[ \t]+(?:system[ \t]+)?instructions?[ \t]*:|\byour[ \t]+(?:new|real|actual|true)[ \t]+(?:instructions|task|goal|purpose|role)\b|\bfrom[ \t]+now[ \t]+on,?[ \t]+(?:ignore|always[ \t]+(?:respond|answer|reply)|only[ \t]+(?:respond|answer|reply)|you[ \t]+(?:are|will|must))\b"#,
    },
    PhraseRule {
        id: "hidden.tag",
        anchors: &["important", "system", "instruction", "secret", "hidden", "admin", "sys", "critical", "mandatory", "assistant", "directive", "override", "ai_", "ai-", "llm", "agent"],
        family: Family::HiddenInstruction,
        only: None,
        pattern: r#"(?i-u)<[ \t]*/?[ \t]*(?:important|system|instructions?|secret|hidden|admin|sys|critical|mandatory|assistant|directive|override|(?:system|ai|llm|agent)[_-](?:requirements?|prompt|message|instructions?|notes?|directives?))\b[^<>\n]*>"#,
    },
    PhraseRule {
        id: "hidden.directive",
        anchors: &["directive", "instruction", "override", "requirement", "||", "act as", "bypass", "developer", "god ", "god\t", "jailbreak", "unrestricted"],
        family: Family::HiddenInstruction,
        only: None,
        pattern: r#"(?-u)\[[A-Z _]{0,30}(?:DIRECTIVE|INSTRUCTIONS?|OVERRIDE|REQUIREMENT)[A-Z _]{0,20}\]|\|{2,}[ \t]*[A-Z_ ]{0,30}(?:OVERRIDE|ADMIN|SYSTEM|INSTRUCTION)[A-Z_ ]{0,30}\|{2,}|\bACT AS[ \t]*:|(?i)\b(?:system|admin|safety|security|developer|debug|god|root|emergency)[ _-]?(?:override|bypass)\b|\b(?:developer|god|jailbreak|unrestricted)[ \t]+mode\b"#,
    },
    PhraseRule {
        id: "hidden.conceal",
        anchors: &["tell", "inform", "mention", "notify", "alert", "reveal", "disclos", "secret", "hidden", "confidential", "user ", "user\t"],
        family: Family::HiddenInstruction,
        only: None,
        pattern: r#"(?i-u)\b(?:do[ \t]*not|don't|dont|never|no[ \t]+need[ \t]+to|without|must[ \t]+not|should[ \t]+not|shouldn't|mustn't)[ \t]+(?:\w+[ \t]+){0,2}?(?:tell|tells|telling|inform|informing|mention|mentioning|notify|notifying|alert|alerting|reveal|revealing|disclose|disclosing)[ \t]+(?:\w+[ \t]+){0,4}?(?:user|users|human|operator|requester)\b|\b(?:keep|hide)[ \t]+(?:this|it|these|that)[ \t]+(?:\w+[ \t]+){0,2}?(?:secret|hidden|confidential)[ \t]+from[ \t]+(?:the[ \t]+)?users?\b|\bthe[ \t]+user[ \t]+(?:must|should|will|need)[ \t]+(?:not|never)[ \t]+(?:know|see|notice|be[ \t]+(?:told|informed|aware))\b"#,
    },
    PhraseRule {
        id: "hidden.precondition",
        anchors: &["before", "prior", "first"],
        family: Family::HiddenInstruction,
        only: None,
        pattern: r#"(?i-u)\bbefore[ \t]+(?:using|calling|running|invoking|executing|processing|answering|responding[ \t]+to|doing)[ \t]+(?:\w+[ \t]+){0,3}?(?:tools?|requests?|questions?|tasks?|functions?|commands?|queries|anything)\b[ \t]*,?[ \t]*(?:you[ \t]+)?(?:must|always|first|read|call|use|run|consult|fetch|send|pass|include|make[ \t]+sure|need[ \t]+to|have[ \t]+to|should)\b|\b(?:must|always|shall)[ \t]+(?:\w+[ \t]+){0,2}?(?:be[ \t]+)?(?:called|used|run|invoked|consulted|executed|read)[ \t]+(?:\w+[ \t]+){0,2}?(?:before|prior[ \t]+to)[ \t]+(?:\w+[ \t]+){0,2}?(?:any|every|all|each)\b|\b(?:always|immediately)[ \t]+(?:\w+[ \t]+){0,2}?(?:consult|call|use|run|invoke)[ \t]+(?:this|the)[ \t]+tool\b[^.\n]{0,40}?\b(?:first|before)\b"#,
    },
    PhraseRule {
        id: "hidden.sensitive_file",
        anchors: &["/.", "\\.", "id_", "/etc/", "mcp.json"],
        family: Family::HiddenInstruction,
        only: Some(Surface::Description),
        pattern: r#"(?i-u)(?:~|\$home|%userprofile%)[/\\]\.(?:ssh|aws|cursor|gnupg|kube|docker|netrc|npmrc|env|config)\b|\bid_(?:rsa|ed25519|ecdsa)\b|/etc/(?:passwd|shadow)\b|\bmcp\.json\b"#,
    },
    PhraseRule {
        id: "hidden.active_markup",
        anchors: &["script", "iframe", "object", "embed", "javascript:", "onerror", "onload", "onclick", "onmouseover", "onfocus"],
        family: Family::HiddenInstruction,
        only: None,
        pattern: r#"(?i-u)<[ \t]*(?:script|iframe|object|embed)\b|\bjavascript:[^\s]|<[a-z][^<>\n]*[ \t/]on(?:error|load|click|mouseover|focus)[ \t]*="#,
    },
    PhraseRule {
        id: "shadowing.other_tool",
        anchors: &["tool"],
        family: Family::ToolShadowing,
        only: None,
        pattern: r#"(?i-u)\b(?:side[ \t]+effects?|effect|impact)[ \t]+on[ \t]+(?:the[ \t]+)?(?:also[ \t]+present[ \t]+|other[ \t]+)?[`'"]?[\w.-]+[`'"]?[ \t]+tools?\b|\bwhen[ \t]+this[ \t]+tool[ \t]+is[ \t]+(?:available|present|installed|loaded|enabled|connected)\b|[`'"]?\b[a-z0-9]+(?:[_.-][a-z0-9]+)+[`'"]?[ \t]+tool[ \t]+(?:must|should|shall|needs?[ \t]+to|has[ \t]+to)[ \t]+(?:always[ \t]+|now[ \t]+|also[ \t]+|only[ \t]+)?(?:send|use|include|forward|add|set|redirect|be[ \t]+(?:called|used|invoked|run))\b|\b(?:all|every|any)[ \t]+(?:other[ \t]+)?(?:tools?|tool[ \t]+calls)[ \t]+(?:must|should|shall)\b|\b(?:never|do[ \t]+not|don't)[ \t]+(?:use|call|invoke)[ \t]+(?:the[ \t]+|any[ \t]+)?(?:other[ \t]+)?[`'"]?[\w.-]+[`'"]?[ \t]+tools?\b"#,
    },
    PhraseRule {
        id: "shadowing.redirect",
        anchors: &["send", "forward", "bcc", "cc ", "cc\t", "copy", "redirect", "route"],
        family: Family::ToolShadowing,
        only: None,
        pattern: r#"(?i-u)\b(?:send|forward|bcc|cc|copy|redirect|route)[ \t]+(?:all|every|any|each)[ \t]+(?:\w+[ \t]+){0,2}?(?:emails?|messages?|requests?|files?|results?|transactions?|payments?)[ \t]+to\b"#,
    },
    PhraseRule {
        id: "exfil.instruction",
        anchors: &["replac", "substitut", "fill", "whereas", "base64", "encod", "append"],
        family: Family::Exfiltration,
        only: None,
        pattern: r#"(?i-u)\b(?:replace|replacing|substitute|substituting|fill[ \t]+in|filling[ \t]+in)[ \t]+(?:the[ \t]+)?(?-i:\[[A-Z][A-Z0-9_ ]{1,29}\]|\{[A-Z][A-Z0-9_ ]{1,29}\})[ \t]+with\b|\bwhereas[ \t]+(?:\[[^\]\n]{1,30}\]|\{[^}\n]{1,30}\})[ \t]+is\b|\b(?:base64|url[ \t-]?encod\w*|mime[ \t-]?encod\w*|hex[ \t-]?encod\w*|append\w*)\b[^\n]{0,80}?\b(?:conversation|chat[ \t]+history|previous[ \t]+messages?|passwords?|secrets|api[ \t]+keys?)\b|\b(?:conversation|chat[ \t]+history|previous[ \t]+messages?|passwords?|secrets|api[ \t]+keys?)\b[^\n]{0,80}?\b(?:base64|url[ \t-]?encoded|mime[ \t-]?encoded|hex[ \t-]?encoded)\b"#,
    },
];

/// Chat-template and session-boundary tokens not covered by the `<|…|>` pattern.
const TEMPLATE_TOKENS: &[&str] = &[
    "[INST]",
    "[/INST]",
    "<<SYS>>",
    "<</SYS>>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<end of session>",
    "### Instruction:",
    "### System:",
];

/// The compiled rule set, built once per process.
pub(super) struct Compiled {
    /// The branches of each phrase rule, in [`PHRASES`] order.
    phrases: Vec<Vec<Branch>>,
    /// Every phrase rule's anchors (unique, lowercase), then the [`TEMPLATE_TOKENS`].
    anchors: Anchors,
    /// Per anchor literal: bit `i` set when it is an anchor of phrase rule `i` (0 for tokens).
    anchor_masks: Vec<u32>,
    /// Index of the first template token among the automaton's literals.
    first_token: usize,
    /// Reference definition `[ref]: url`.
    pub(super) md_reference: Regex,
    /// HTML `<img … src=url`.
    pub(super) html_img: Regex,
    /// Slot for data in a URL.
    pub(super) url_placeholder: Regex,
    /// Percent-encoded or `+`-joined text in a URL (long base64 runs are checked in code).
    pub(super) url_data: Regex,
    /// HTML comment.
    pub(super) html_comment: Regex,
    /// Words that make an HTML comment an instruction for the model.
    pub(super) comment_instruction: Regex,
}

/// One top-level alternative of a phrase pattern, and where it can match.
struct Branch {
    regex: meta::Regex,
    /// `bytes[b]`: byte `b` can occur in a match.
    bytes: [bool; 256],
    /// The bytes that cannot occur in a match, when there are at most three (then windows are
    /// bounded with memchr instead of a byte loop).
    stops: Option<Vec<u8>>,
    /// Longest possible match in bytes (`None`: unbounded).
    max_len: Option<usize>,
    /// Every match starts at a line start (`(?m)^`): searches are anchored at each line start
    /// of a window instead of scanning it.
    line_start: bool,
}

const _: () = assert!(PHRASES.len() < 32, "anchor masks are u32");

/// The compiled rules. Patterns are constants covered by tests, so compilation cannot fail at
/// run time; should it, every phrase is reported as matched (fail closed).
pub(super) static COMPILED: LazyLock<Option<Compiled>> = LazyLock::new(|| Compiled::new().ok());

// === impl CharRule ===

impl CharRule {
    /// The stable rule id.
    pub(super) fn id(self) -> &'static str {
        match self {
            Self::TagChars => "unicode.tag_chars",
            Self::ZeroWidth => "unicode.zero_width",
            Self::Bidi => "unicode.bidi_control",
            Self::VariationSelector => "unicode.variation_selector",
            Self::Confusable => "unicode.confusable",
            Self::AnsiCsi => "escape.ansi_csi",
            Self::AnsiOsc => "escape.ansi_osc",
            Self::Osc8Hyperlink => "escape.osc8_hyperlink",
            Self::Control => "escape.control_char",
        }
    }

    /// The rule's family.
    pub(super) fn family(self) -> Family {
        match self {
            Self::TagChars | Self::ZeroWidth | Self::Bidi | Self::VariationSelector | Self::Confusable => Family::InvisibleUnicode,
            Self::AnsiCsi | Self::AnsiOsc | Self::Osc8Hyperlink | Self::Control => Family::TerminalEscape,
        }
    }
}

// === impl Compiled ===

impl Compiled {
    fn new() -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let mut literals: Vec<String> = PHRASES.iter().flat_map(|r| r.anchors.iter().map(|a| a.to_ascii_lowercase())).collect();
        literals.sort_unstable();
        literals.dedup();
        let anchor_masks = literals
            .iter()
            .map(|literal| {
                PHRASES
                    .iter()
                    .enumerate()
                    .filter(|(_, rule)| rule.anchors.iter().any(|a| a.eq_ignore_ascii_case(literal)))
                    .fold(0u32, |mask, (i, _)| mask | (1 << i))
            })
            .collect();
        let first_token = literals.len();
        let literals: Vec<&str> = literals.iter().map(String::as_str).chain(TEMPLATE_TOKENS.iter().copied()).collect();
        Ok(Self {
            phrases: PHRASES.iter().map(|r| Branch::compile(r.pattern)).collect::<Result<_, _>>()?,
            anchors: Anchors::new(&literals)?,
            anchor_masks,
            first_token,
            md_reference: Regex::new(r"(?m-u)^[ \t]*\[[^\]\n]+\]:[ \t]*<?(\S+)")?,
            html_img: Regex::new(r#"(?i-u)<img\b[^>]*?\bsrc[ \t]*=[ \t]*["']?([^"'\s>]+)"#)?,
            url_placeholder: Regex::new(r"(?-u)\[[A-Z][A-Z0-9_ ]{1,24}\]|\{[A-Z][A-Z0-9_]{1,24}\}|<[A-Z][A-Z0-9_]{1,24}>|\$\{?[A-Z][A-Z0-9_]{2,24}\}?|(?i)\{\{?[ \t]*(?:data|info|summary|conversation|chat|history|context|secrets?|password|token|key|email|messages?|content|query|user_?input)[ \t]*\}?\}")?,
            url_data: Regex::new(r"(?-u)(?:%[0-9A-Fa-f]{2}[^&#%]{0,6}){6,}|(?:[A-Za-z0-9]+\+){5,}")?,
            html_comment: Regex::new(r"(?s-u)<!--(.{0,4000}?)-->")?,
            comment_instruction: Regex::new(
                r"(?i-u)\b(?:you[ \t]+(?:must|should|are|will|need)|do[ \t]+not|don't|ignore|instead|important|assistant|llm|ai|always|never|when[ \t]+(?:analy[sz]ing|summari[sz]ing|reading|processing|evaluating))\b",
            )?,
        })
    }

    /// Phrase rules matching `view` on `surface`, as `(id, family)`.
    ///
    /// One pass of the anchor automaton collects the anchor occurrences (and notes template
    /// tokens); each rule with an occurrence runs its branches on the windows around them only
    /// (see the module docs).
    pub(super) fn phrases(&self, view: &str, surface: Surface) -> Vec<(&'static str, Family)> {
        let all = (1u32 << PHRASES.len()) - 1;
        // (start, end, rules) of every anchor occurrence, by start.
        let mut found_anchors = Vec::new();
        self.anchors.find_all(view.as_bytes(), &mut found_anchors);
        let token = found_anchors.iter().any(|&(_, _, literal)| literal >= self.first_token);
        let mut hits: Vec<(usize, usize, u32)> = found_anchors
            .into_iter()
            .filter(|&(_, _, literal)| literal < self.first_token)
            .map(|(start, end, literal)| (start, end, self.anchor_masks.get(literal).copied().unwrap_or(all)))
            .collect();
        hits.sort_unstable_by_key(|&(start, _, _)| start);
        let mask = hits.iter().fold(0, |mask, &(_, _, rules)| mask | rules);
        let mut found = Vec::new();
        for (i, (rule, branches)) in PHRASES.iter().zip(&self.phrases).enumerate() {
            let bit = 1u32 << i;
            if mask & bit == 0 || !rule.only.is_none_or(|only| only == surface) {
                continue;
            }
            let near = || hits.iter().filter(move |&&(_, _, rules)| rules & bit != 0).map(|&(start, end, _)| (start, end));
            if branches.iter().any(|branch| branch.matches_near(view.as_bytes(), near())) {
                found.push((rule.id, rule.family));
            }
        }
        if token {
            found.push(("instruction.chat_template", Family::Instruction));
        }
        found
    }
}

// === impl Branch ===

impl Branch {
    /// Compiles `pattern` (a byte regex, as `regex::bytes::Regex` reads it) into one branch per
    /// top-level alternative.
    fn compile(pattern: &str) -> Result<Vec<Self>, Box<dyn std::error::Error + Send + Sync>> {
        let hir = regex_syntax::ParserBuilder::new().utf8(false).build().parse(pattern)?;
        // The same engine configuration as `regex::bytes::Regex`.
        let config = meta::Config::new()
            .match_kind(regex_automata::MatchKind::LeftmostFirst)
            .utf8_empty(false)
            .nfa_size_limit(Some(10 * (1 << 20)))
            .hybrid_cache_capacity(2 * (1 << 20));
        let mut branches = Vec::new();
        for hir in top_level_alternatives(hir) {
            let mut bytes = [false; 256];
            match_bytes(&hir, &mut bytes);
            let regex = meta::Builder::new().configure(config.clone()).build_from_hir(&hir)?;
            let stops: Vec<u8> = (0..=u8::MAX).filter(|&b| !bytes[usize::from(b)]).collect();
            let stops = (stops.len() <= 3).then_some(stops);
            let prefix = hir.properties().look_set_prefix();
            let line_start = prefix.contains(Look::StartLF) || prefix.contains(Look::Start);
            branches.push(Self { regex, bytes, stops, max_len: hir.properties().maximum_len(), line_start });
        }
        Ok(branches)
    }

    /// Whether the branch matches `hay` in a window around one of `hits` (`(start, end)` of
    /// anchor occurrences, by start). Overlapping windows are merged, so every byte is scanned
    /// at most once.
    fn matches_near(&self, hay: &[u8], hits: impl Iterator<Item = (usize, usize)>) -> bool {
        let mut window: Option<(usize, usize)> = None;
        for (start, end) in hits {
            // A match containing the occurrence contains its bytes.
            if !hay.get(start..end).is_some_and(|occurrence| occurrence.iter().all(|&b| self.bytes[usize::from(b)])) {
                continue;
            }
            // A match containing `start..end` starts no earlier than `end - max_len` and ends
            // no later than `start + max_len`.
            let low = self.max_len.map_or(0, |max| end.saturating_sub(max));
            let high = self.max_len.map_or(hay.len(), |max| start.saturating_add(max).min(hay.len()));
            let floor = window.map_or(low, |(_, right)| low.max(right));
            let left = self.extend_left(hay, floor, start);
            let right = self.extend_right(hay, window.map_or(end, |(_, right)| end.max(right)), high);
            window = match window {
                Some((from, to)) if left <= to => Some((from, right.max(to))),
                Some(done) => {
                    if self.is_match(hay, done) {
                        return true;
                    }
                    Some((left, right))
                }
                None => Some((left, right)),
            };
        }
        window.is_some_and(|window| self.is_match(hay, window))
    }

    /// The first position in `floor..=at` from which every byte up to `at` can be matched.
    fn extend_left(&self, hay: &[u8], floor: usize, at: usize) -> usize {
        let Some(before) = hay.get(floor..at) else { return at };
        let stop = match self.stops.as_deref() {
            Some([]) => None,
            Some(&[a]) => memchr::memrchr(a, before),
            Some(&[a, b]) => memchr::memrchr2(a, b, before),
            Some(&[a, b, c]) => memchr::memrchr3(a, b, c, before),
            _ => before.iter().rposition(|&b| !self.bytes[usize::from(b)]),
        };
        stop.map_or(floor, |stop| floor + stop + 1)
    }

    /// The last position in `at..=high` up to which every byte from `at` can be matched.
    fn extend_right(&self, hay: &[u8], at: usize, high: usize) -> usize {
        let Some(after) = hay.get(at..high) else { return at };
        let stop = match self.stops.as_deref() {
            Some([]) => None,
            Some(&[a]) => memchr::memchr(a, after),
            Some(&[a, b]) => memchr::memchr2(a, b, after),
            Some(&[a, b, c]) => memchr::memchr3(a, b, c, after),
            _ => after.iter().position(|&b| !self.bytes[usize::from(b)]),
        };
        stop.map_or(high, |stop| at + stop)
    }

    /// Whether the branch matches inside `from..to`; look-around sees the bytes outside.
    fn is_match(&self, hay: &[u8], (from, to): (usize, usize)) -> bool {
        if !self.line_start {
            return self.regex.is_match(Input::new(hay).range(from..to));
        }
        let Some(window) = hay.get(from..to) else { return false };
        let first = (from == 0 || hay.get(from - 1) == Some(&b'\n')).then_some(from);
        let after_newlines = memchr::memchr_iter(b'\n', window).map(|at| from + at + 1);
        first.into_iter().chain(after_newlines).filter(|&start| start < to).any(|start| {
            self.regex.is_match(Input::new(hay).range(start..to).anchored(Anchored::Yes))
        })
    }
}

/// The top-level alternatives of a pattern. The parser lifts a prefix common to all of them
/// (`\b` in `\bfoo|\bbar`) in front of the alternation; it is distributed back.
fn top_level_alternatives(hir: Hir) -> Vec<Hir> {
    let split = match hir.kind() {
        HirKind::Alternation(alternatives) => Some(alternatives.clone()),
        HirKind::Concat(parts) => match parts.split_last().map(|(last, prefix)| (last.kind(), prefix)) {
            Some((HirKind::Alternation(alternatives), prefix)) => Some(
                alternatives
                    .iter()
                    .map(|alternative| Hir::concat(prefix.iter().cloned().chain([alternative.clone()]).collect()))
                    .collect(),
            ),
            _ => None,
        },
        _ => None,
    };
    split.unwrap_or_else(|| vec![hir])
}

/// Marks in `bytes` every byte that can occur in a match of `hir` (look-around consumes
/// nothing; any non-ASCII character marks every byte ≥ 0x80).
fn match_bytes(hir: &Hir, bytes: &mut [bool; 256]) {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(literal) => literal.0.iter().for_each(|&b| mark(bytes, b, b)),
        HirKind::Class(Class::Bytes(class)) => class.iter().for_each(|range| mark(bytes, range.start(), range.end())),
        HirKind::Class(Class::Unicode(class)) => {
            for range in class.iter() {
                if range.start().is_ascii() {
                    let end = u8::try_from(range.end()).map_or(0x7F, |end| end.min(0x7F));
                    mark(bytes, u8::try_from(range.start()).unwrap_or(0), end);
                }
                if !range.end().is_ascii() {
                    mark(bytes, 0x80, 0xFF);
                }
            }
        }
        HirKind::Repetition(repetition) => match_bytes(&repetition.sub, bytes),
        HirKind::Capture(capture) => match_bytes(&capture.sub, bytes),
        HirKind::Concat(subs) | HirKind::Alternation(subs) => subs.iter().for_each(|sub| match_bytes(sub, bytes)),
    }
}

/// Marks bytes `from..=to`.
fn mark(bytes: &mut [bool; 256], from: u8, to: u8) {
    for b in from..=to {
        bytes[usize::from(b)] = true;
    }
}

/// Every phrase rule's id and family, used when compilation failed (fail closed).
pub(super) fn all_phrases() -> impl Iterator<Item = (&'static str, Family)> {
    PHRASES.iter().map(|r| (r.id, r.family))
}

#[cfg(test)]
pub(super) fn compile_for_test() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Compiled::new().map(|_| ())
}

/// The template tokens as their own automaton.
#[cfg(test)]
static TOKENS: LazyLock<aho_corasick::AhoCorasick> =
    LazyLock::new(|| aho_corasick::AhoCorasickBuilder::new().ascii_case_insensitive(true).build(TEMPLATE_TOKENS).unwrap());

/// Each phrase rule's whole pattern as one regex, in [`PHRASES`] order.
#[cfg(test)]
static DEFINITIONS: LazyLock<Vec<Regex>> = LazyLock::new(|| PHRASES.iter().map(|rule| Regex::new(rule.pattern).unwrap()).collect());

/// The phrase rules matching `view` by the plain definition: each rule's whole pattern over
/// the whole view, no anchors, no windows (what [`Compiled::phrases`] must agree with).
#[cfg(test)]
pub(super) fn phrases_by_definition(view: &str, surface: Surface) -> Vec<(&'static str, Family)> {
    let mut found: Vec<(&'static str, Family)> = PHRASES
        .iter()
        .zip(DEFINITIONS.iter())
        .filter(|(rule, regex)| rule.only.is_none_or(|only| only == surface) && regex.is_match(view.as_bytes()))
        .map(|(rule, _)| (rule.id, rule.family))
        .collect();
    if TOKENS.is_match(view) {
        found.push(("instruction.chat_template", Family::Instruction));
    }
    found
}

/// Every phrase pattern's anchors occur in every match: checked on `text` by finding every
/// match start of each pattern (all leftmost-first matches from every start position would
/// be costly; the matches `find_iter` reports are the ones a window must contain).
#[cfg(test)]
pub(super) fn anchors_missing_in_matches(view: &str) -> Vec<(&'static str, String)> {
    let mut missing = Vec::new();
    for (rule, regex) in PHRASES.iter().zip(DEFINITIONS.iter()) {
        for m in regex.find_iter(view.as_bytes()) {
            let text = String::from_utf8_lossy(m.as_bytes()).to_ascii_lowercase();
            if !rule.anchors.iter().any(|a| text.contains(&a.to_ascii_lowercase())) {
                missing.push((rule.id, text));
            }
        }
    }
    missing
}
