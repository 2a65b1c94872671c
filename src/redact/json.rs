//! Scrubbing JSON values (audit arguments): every string, every number rendered as text, and
//! every object key goes through the scrubber; the whole value of a member whose name says it
//! holds a credential (`password`, `api_key`, `client_secret`, `authorization`, …) is replaced,
//! since a bare value such as `"hunter2"` carries no pattern a rule could see.

use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;
use serde_json::Value;

use super::Scrubber;

/// Member names whose value is replaced whole (`[REDACTED:secret_field]`).
static SECRET_KEY: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^(?:.*[_.-])?(?:password|passwd|pwd|passphrase|secret|client_secret|token|access_token|refresh_token|id_token|auth_token|api[_-]?key|apikey|authorization|proxy-authorization|cookie|set-cookie|private[_-]?key|credentials?|session[_-]?id|otp|pin|cvv|cvc)$",
    )
    .ok()
});

/// A redaction inside a JSON value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JsonFinding {
    /// RFC 6901 JSON Pointer to the member or element that was changed (`/user/email`).
    pub pointer: String,
    /// What was found (see [`super::Finding::kind`]); `secret_field` for a member replaced
    /// because of its name.
    pub kind: String,
}

/// Returns a scrubbed copy of `value` and what was redacted.
pub fn scrub_json(value: &Value) -> (Value, Vec<JsonFinding>) {
    let mut copy = value.clone();
    let findings = scrub_json_in_place(&mut copy);
    (copy, findings)
}

/// Scrubs `value` in place and returns what was redacted.
pub fn scrub_json_in_place(value: &mut Value) -> Vec<JsonFinding> {
    let mut findings = Vec::new();
    let mut pointer = String::new();
    walk(Scrubber::global(), value, &mut pointer, &mut findings);
    findings
}

fn walk(scrubber: &Scrubber, value: &mut Value, pointer: &mut String, findings: &mut Vec<JsonFinding>) {
    match value {
        Value::String(text) => {
            let scrubbed = scrubber.scrub(text);
            if !scrubbed.findings.is_empty() {
                findings.extend(scrubbed.findings.iter().map(|f| JsonFinding { pointer: pointer.clone(), kind: f.kind.to_string() }));
                *text = scrubbed.text;
            }
        }
        Value::Number(number) => {
            let scrubbed = scrubber.scrub(&number.to_string());
            if !scrubbed.findings.is_empty() {
                findings.extend(scrubbed.findings.iter().map(|f| JsonFinding { pointer: pointer.clone(), kind: f.kind.to_string() }));
                *value = Value::String(scrubbed.text);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&index.to_string());
                walk(scrubber, item, pointer, findings);
                pointer.truncate(len);
            }
        }
        Value::Object(members) => {
            let entries = std::mem::take(members);
            for (key, mut member) in entries {
                let key = {
                    let scrubbed = scrubber.scrub(&key);
                    if scrubbed.findings.is_empty() { key } else { scrubbed.text }
                };
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                let secret_name = SECRET_KEY.as_ref().is_none_or(|re| re.is_match(&key));
                if secret_name && matches!(member, Value::String(_) | Value::Number(_)) {
                    member = Value::String("[REDACTED:secret_field]".to_owned());
                    findings.push(JsonFinding { pointer: pointer.clone(), kind: "secret_field".to_owned() });
                } else {
                    walk(scrubber, &mut member, pointer, findings);
                }
                pointer.truncate(len);
                members.insert(key, member);
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}
