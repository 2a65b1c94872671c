//! The scrubber's own rules: credentials in HTTP and URL syntax (headers, bearer and basic
//! credentials, JWTs, secret-looking URL/form parameters, passwords in URLs) and keyword
//! assignments (`password = "…"`), which no provider rule set covers generically.
//!
//! Each rule redacts one capture group (the value), so the name of what was redacted stays
//! readable: `Authorization: Bearer [REDACTED:bearer_token]`. Values found by their name
//! (keyword assignments, URL parameters) must look like secrets: see
//! [`heuristic`](super::heuristic).

use std::sync::Arc;

use regex::{Regex, RegexSet};

use super::{
    Error, Finding,
    heuristic::{is_indirect_reference, not_filler, not_secret_by_form, plausible_assigned_secret},
};

struct Rule {
    kind: Arc<str>,
    regex: Regex,
    /// Capture group holding the value to redact.
    group: usize,
    /// Extra check on the captured value.
    check: fn(&str) -> bool,
}

/// The compiled built-in rules.
pub(super) struct Builtin {
    rules: Vec<Rule>,
    /// All patterns in one automaton: one pass over clean text tells that no rule can match.
    prefilter: RegexSet,
}

/// (kind, pattern, group, check). Patterns use ASCII classes only.
/// A built-in rule: kind, pattern, capture group (0: first that matched), value check.
type RuleSpec = (&'static str, &'static str, usize, fn(&str) -> bool);

const RULES: &[RuleSpec] = &[
    // RFC 9110 §11.6.2/§11.7.2 credentials; the scheme word stays, the credentials go.
    (
        "authorization_header",
        r#"(?i)(?-u:\b)(?:proxy-)?authorization["']?[ \t]*[:=][ \t]*["']?(?:(?:bearer|basic|digest|negotiate|token|apikey|dpop|mac|aws4-hmac-sha256|ntlm)[ \t]+)?([^\r\n"'\\]+)"#,
        1,
        not_placeholder,
    ),
    // RFC 6265 Cookie / Set-Cookie values.
    ("cookie", r#"(?i)(?-u:\b)(?:set-)?cookie["']?[ \t]*[:=][ \t]*["']?([^\r\n"'\\]+)"#, 1, not_placeholder),
    // RFC 6750 §2.1 b64token.
    ("bearer_token", r"(?i)(?-u:\b)bearer[ \t]+([A-Za-z0-9._~+/-]{8,}=*)", 1, not_placeholder),
    // RFC 7617 basic credentials.
    ("basic_auth", r"(?i)(?-u:\b)basic[ \t]+([A-Za-z0-9+/]{8,}={0,2})", 1, not_placeholder),
    // RFC 7519 JWS compact serialization (also unsigned tokens ending in `.`).
    // A JWT must decode to a JSON header (RFC 7519 §7.2 steps 3-4); random `eyJ…` is not one.
    ("jwt", r"(?-u:\b)(eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*)", 1, jwt_header_decodes),
    // A private key header means key material follows, up to the END line or the end of the
    // text (a truncated key is still a key).
    (
        "private_key",
        r"(?s)(-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----|\z))",
        1,
        non_empty,
    ),
    // Secret-looking URL query and form parameters (RFC 6749 §4.2.2, §4.1.2, §2.3.1).
    (
        "secret_parameter",
        r#"(?im)(?:^|[?&;])(?:access_token|refresh_token|id_token|token|auth_token|api_key|apikey|api-key|key|secret|client_secret|password|passwd|pwd|code|sig|signature|x-amz-signature|x-amz-security-token|x-goog-signature|session|sessionid|session_id|_authtoken)=([^&\s"'#<>]+)"#,
        1,
        parameter_value,
    ),
    // RFC 3986 §3.2.1 userinfo `user:password@`.
    ("password_in_url", r#"(?i)(?-u:\b)[a-z][a-z0-9+.-]*://[^/\s:@"'<>;]+:([^/\s@"'<>;]+)@"#, 1, not_placeholder),
    // Keyword assignments in code, config and logs: `password = "…"`, `api_key: …`,
    // `db_pass := …`, `"secret": "…"`. An unquoted value runs to the end of the line. Longer
    // operators come first: the first alternative that lets the pattern match wins.
    (
        "secret_assignment",
        r#"(?i)[a-z0-9_.\[\]-]*(?:passw(?:or)?d|(?:(?-u:\b)|_)pass(?:(?-u:\b)|_)|pwd|secrete?|api[_-]?key|private[_-]?key|access[_-]?key|secret[_-]?key|auth[_-]?token|access[_-]?token|access[_-]?(?:key[_-]?)?id|credentials?)[a-z0-9_\[\]-]*["'\]]{0,2}[ \t]*(?:===|!==|==|!=|=>|:=|::|=|:)[ \t]*(?:"([^"\r\n]{4,})"|'([^'\r\n]{4,})'|`([^`\r\n]{4,})`|([^\s"'`][^\r\n"'`]{3,}))"#,
        0,
        non_empty,
    ),
    // A secret passed to a constructor or setter: `secret("…")`, `password.assign("…")`.
    (
        "secret_assignment",
        r#"(?i)[a-z0-9_]*(?:passw(?:or)?d|secrete?|api[_-]?key|token)[a-z0-9_]*(?:\.(?:assign|set))?\([ \t]*"([^"\r\n]{4,})""#,
        1,
        non_empty,
    ),
    // A secret compared against a secret-named variable: `if ("…" == my_password)`.
    (
        "secret_assignment",
        r#"(?i)"([^"\r\n]{4,})"[ \t]*(?:==|===|!=|!==)[ \t]*[a-z0-9_]*(?:passw(?:or)?d|pass|secret|key|token)"#,
        1,
        non_empty,
    ),
];

fn non_empty(value: &str) -> bool {
    !value.is_empty()
}

/// Whether `value` is a real value rather than a placeholder: it has at least four
/// alphanumeric characters, not all the same (`XXXX`, `****`, `...`), and is not a template
/// reference (`{name}`, `<name>`, `${NAME}`, `%s`).
fn not_placeholder(value: &str) -> bool {
    alphanumeric_count(value) >= 4 && not_filler(value)
}

/// Whether a secret-named URL or form parameter's value is a real value: [`not_placeholder`],
/// and not a template, variable, sequence or derived UUID by form ([`not_secret_by_form`]).
fn parameter_value(value: &str) -> bool {
    not_placeholder(value) && !not_secret_by_form(value)
}

fn alphanumeric_count(value: &str) -> usize {
    value.chars().filter(char::is_ascii_alphanumeric).count()
}

/// Whether the first segment of a JWT candidate is base64url-encoded JSON (a JOSE header).
pub(super) fn jwt_header_decodes(candidate: &str) -> bool {
    use base64::Engine as _;
    let header = candidate.split('.').next().unwrap_or("").trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|v| v.is_object())
}

// === impl Builtin ===

impl Builtin {
    /// Compiles the built-in rules.
    ///
    /// # Errors
    /// [`Error::Rules`] when a pattern does not compile (a bug caught by the unit tests).
    pub(super) fn load() -> Result<Self, Error> {
        let rules = RULES
            .iter()
            .map(|(kind, pattern, group, check)| {
                let regex = Regex::new(pattern).map_err(|e| Error::Rules(format!("built-in rule {kind}: {e}")))?;
                Ok(Rule { kind: Arc::from(*kind), regex, group: *group, check: *check })
            })
            .collect::<Result<_, Error>>()?;
        let prefilter = RegexSet::new(RULES.iter().map(|(_, pattern, _, _)| *pattern))
            .map_err(|e| Error::Rules(format!("built-in rule set: {e}")))?;
        Ok(Self { rules, prefilter })
    }

    /// Appends a finding for every value the rules detect in `text`.
    pub(super) fn scan(&self, text: &str, findings: &mut Vec<Finding>) {
        for index in self.prefilter.matches(text).iter() {
            let rule = &self.rules[index];
            for captures in rule.regex.captures_iter(text) {
                // Group 0 means "the first alternative group that matched".
                let value = if rule.group == 0 {
                    captures.iter().skip(1).flatten().next()
                } else {
                    captures.get(rule.group)
                };
                let Some(found) = value else { continue };
                let start = found.start();
                let mut value = found.as_str();
                if &*rule.kind == "secret_assignment" {
                    // A quoted value is a literal whatever it holds, and its quotes delimit it.
                    let quoted = text[..start].ends_with(['"', '\'', '`']);
                    if !quoted {
                        // A call or subscript is a reference to a secret, not one.
                        if is_indirect_reference(&text[start..]) {
                            continue;
                        }
                        // The value is judged whole (`{name}` is a template) but ends, for
                        // redaction, before trailing spaces and closing punctuation.
                        value = value.trim_end_matches([' ', '\t', ',', ';']);
                    }
                    if !plausible_assigned_secret(value) {
                        continue;
                    }
                    if !quoted {
                        value = value.trim_end_matches([' ', '\t', ',', ';', ')', '}', ']']);
                    }
                }
                let end = start + value.len();
                if !(rule.check)(value) {
                    continue;
                }
                findings.push(Finding { kind: rule.kind.clone(), start, end });
            }
        }
    }
}
