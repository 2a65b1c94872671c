//! The rule table: stable rule ids, their families, and the patterns, compiled once.
//!
//! Phrase patterns are byte regexes over the normalized view in ASCII mode (`(?-u)`): the view
//! has already folded compatibility forms and confusables to ASCII, and ASCII word boundaries
//! keep the matcher on the DFA engines. One Aho-Corasick pass over every rule's anchor words
//! picks the rules worth running. Literal chat-template tokens run
//! through one Aho-Corasick automaton. URL rules are procedural (host allow-list, data checks).
//!
//! Invariant: rule ids are stable API (they appear in `_meta`, audit rows and metrics); add new
//! ids rather than renaming old ones.

use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, Input, MatchKind};
use regex::bytes::Regex;

use super::{Family, Surface};

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
    /// Literals (ASCII, case-insensitive) of which at least one occurs wherever the pattern
    /// matches; the pattern only runs on views that contain one.
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
        anchors: &["assistant", "ai:", "ai :", "ai message", "ai response", "ai note", "system", "user:", "user :", "user message", "user prompt", "user note", "user instruction", "user update", "human", "[admin", "[developer", "[inst", "[sys"],
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
        anchors: &["instruction", "your new", "your real", "your actual", "your true", "now on"],
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
        anchors: &["directive", "instruction", "override", "requirement", "||", "act as", "bypass", "developer mode", "god mode", "jailbreak", "unrestricted"],
        family: Family::HiddenInstruction,
        only: None,
        pattern: r#"(?-u)\[[A-Z _]{0,30}(?:DIRECTIVE|INSTRUCTIONS?|OVERRIDE|REQUIREMENT)[A-Z _]{0,20}\]|\|{2,}[ \t]*[A-Z_ ]{0,30}(?:OVERRIDE|ADMIN|SYSTEM|INSTRUCTION)[A-Z_ ]{0,30}\|{2,}|\bACT AS[ \t]*:|(?i)\b(?:system|admin|safety|security|developer|debug|god|root|emergency)[ _-]?(?:override|bypass)\b|\b(?:developer|god|jailbreak|unrestricted)[ \t]+mode\b"#,
    },
    PhraseRule {
        id: "hidden.conceal",
        anchors: &["tell", "inform", "mention", "notify", "alert", "reveal", "disclos", "secret", "hidden", "confidential", "the user"],
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
        anchors: &["send", "forward", "bcc", "cc ", "copy", "redirect", "route"],
        family: Family::ToolShadowing,
        only: None,
        pattern: r#"(?i-u)\b(?:send|forward|bcc|cc|copy|redirect|route)[ \t]+(?:all|every|any|each)[ \t]+(?:\w+[ \t]+){0,2}?(?:emails?|messages?|requests?|files?|results?|transactions?|payments?)[ \t]+to\b"#,
    },
    PhraseRule {
        id: "exfil.instruction",
        anchors: &["replac", "substitut", "fill", "whereas", "base64", "encod", "append", "conversation", "chat history", "previous message", "password", "secrets", "api key"],
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
    /// One regex per phrase rule, in [`PHRASES`] order.
    phrases: Vec<Regex>,
    /// Every phrase rule's anchors (unique, lowercase), leftmost-longest.
    anchors: AhoCorasick,
    /// Per anchor literal: bit `i` set when phrase rule `i` may match where it occurs.
    anchor_masks: Vec<u32>,
    tokens: AhoCorasick,
    /// Markdown link `[text](url` (images included; callers skip those).
    pub(super) md_link: Regex,
    /// Reference definition `[ref]: url`.
    pub(super) md_reference: Regex,
    /// HTML `<img … src=url`.
    pub(super) html_img: Regex,
    /// Bare `http(s)://…` URL.
    pub(super) bare_url: Regex,
    /// Slot for data in a URL.
    pub(super) url_placeholder: Regex,
    /// Percent-encoded or `+`-joined text in a URL (long base64 runs are checked in code).
    pub(super) url_data: Regex,
    /// Base64 run worth decoding.
    pub(super) base64_run: Regex,
    /// Three or more short quoted fragments in a row (`"ht","tps:","//"`).
    pub(super) split_fragments: Regex,
    /// HTML comment.
    pub(super) html_comment: Regex,
    /// Words that make an HTML comment an instruction for the model.
    pub(super) comment_instruction: Regex,
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
        // Unique anchor literals; each one's mask names the rules of every anchor it contains,
        // so the longest literal found at a position stands for the shorter ones inside it.
        let mut literals: Vec<String> = PHRASES.iter().flat_map(|r| r.anchors.iter().map(|a| a.to_ascii_lowercase())).collect();
        literals.sort_unstable();
        literals.dedup();
        let anchor_masks = literals
            .iter()
            .map(|literal| {
                PHRASES
                    .iter()
                    .enumerate()
                    .filter(|(_, rule)| rule.anchors.iter().any(|a| literal.contains(&a.to_ascii_lowercase())))
                    .fold(0u32, |mask, (i, _)| mask | (1 << i))
            })
            .collect();
        Ok(Self {
            phrases: PHRASES.iter().map(|r| Regex::new(r.pattern)).collect::<Result<_, _>>()?,
            anchors: AhoCorasickBuilder::new().ascii_case_insensitive(true).match_kind(MatchKind::LeftmostLongest).build(&literals)?,
            anchor_masks,
            tokens: AhoCorasickBuilder::new().ascii_case_insensitive(true).match_kind(MatchKind::LeftmostFirst).build(TEMPLATE_TOKENS)?,
            md_link: Regex::new(r"(?-u)(!?)\[[^\]\n]*\]\([ \t]*<?([^)\s>]+)")?,
            md_reference: Regex::new(r"(?m-u)^[ \t]*\[[^\]\n]+\]:[ \t]*<?(\S+)")?,
            html_img: Regex::new(r#"(?i-u)<img\b[^>]*?\bsrc[ \t]*=[ \t]*["']?([^"'\s>]+)"#)?,
            bare_url: Regex::new(r#"(?i-u)\bhttps?://[^\s<>"'`]+"#)?,
            url_placeholder: Regex::new(r"(?-u)\[[A-Z][A-Z0-9_ ]{1,24}\]|\{[A-Z][A-Z0-9_]{1,24}\}|<[A-Z][A-Z0-9_]{1,24}>|\$\{?[A-Z][A-Z0-9_]{2,24}\}?|(?i)\{\{?[ \t]*(?:data|info|summary|conversation|chat|history|context|secrets?|password|token|key|email|messages?|content|query|user_?input)[ \t]*\}?\}")?,
            url_data: Regex::new(r"(?-u)(?:%[0-9A-Fa-f]{2}[^&#%]{0,6}){6,}|(?:[A-Za-z0-9]+\+){5,}")?,
            base64_run: Regex::new(r"(?-u)[A-Za-z0-9+/]{24,}={0,2}|[A-Za-z0-9_-]{32,}")?,
            split_fragments: Regex::new(r#"(?-u)"[^"\n]{1,12}",[ \t]?"[^"\n]{1,12}",[ \t]?"[^"\n]{1,12}",[ \t]?""#)?,
            html_comment: Regex::new(r"(?s-u)<!--(.{0,4000}?)-->")?,
            comment_instruction: Regex::new(
                r"(?i-u)\b(?:you[ \t]+(?:must|should|are|will|need)|do[ \t]+not|don't|ignore|instead|important|assistant|llm|ai|always|never|when[ \t]+(?:analy[sz]ing|summari[sz]ing|reading|processing|evaluating))\b",
            )?,
        })
    }

    /// Phrase rules matching `view` on `surface`, as `(id, family)`.
    ///
    /// One Aho-Corasick pass finds the rules whose anchors occur; only those regexes run, so
    /// benign text without trigger words costs one linear scan.
    pub(super) fn phrases(&self, view: &str, surface: Surface) -> Vec<(&'static str, Family)> {
        // Restarting one byte after each match start finds every anchor occurrence, including
        // ones that begin inside a longer anchor and end after it.
        let all = (1u32 << PHRASES.len()) - 1;
        let mut mask = 0u32;
        let mut at = 0;
        while mask != all {
            let Some(hit) = self.anchors.find(Input::new(view).span(at..view.len())) else { break };
            mask |= self.anchor_masks.get(hit.pattern().as_usize()).copied().unwrap_or(all);
            at = hit.start() + 1;
        }
        let mut found = Vec::new();
        for (i, (rule, regex)) in PHRASES.iter().zip(&self.phrases).enumerate() {
            if mask & (1 << i) != 0 && rule.only.is_none_or(|only| only == surface) && regex.is_match(view.as_bytes()) {
                found.push((rule.id, rule.family));
            }
        }
        if self.tokens.is_match(view) {
            found.push(("instruction.chat_template", Family::Instruction));
        }
        found
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
