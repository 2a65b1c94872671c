//! Whether a value that a keyword rule found is a secret. A keyword rule (`password = …`,
//! `api_key: …`, `?token=…`, gitleaks' `generic-api-key`) knows a value only by the name it is
//! assigned to, so the value's form decides: a template, a variable, a call, a run of the
//! alphabet or a UUID built from a clock is not a secret. None of this applies to provider
//! tokens with a fixed format (`AKIA…`, `ghp_…`, `sk-…`, private key blocks): their pattern is
//! the whole story.
//!
//! The filters are detect-secrets 1.5.0's (`detect_secrets/filters/heuristic.py`, PyPI
//! `detect-secrets==1.5.0`, Apache-2.0, Copyright (c) 2018 Yelp, Inc.), re-implemented here.
//! Where they differ, the port redacts more, since an audit scrubber errs on that side:
//! - `is_potential_uuid` drops every UUID; here only UUIDs derived from a clock and a node
//!   address or from a name (RFC 9562 versions 1, 2, 3, 5, 6), which are guessable by
//!   construction. Random UUIDs are issued as credentials (legacy npm tokens, Heroku API keys)
//!   and stay redacted.
//! - `is_prefixed_with_dollar_sign` drops every value starting with `$`; here only variables
//!   and substitutions (`$NAME`, `${…}`, `$(…)`, `$1`), so crypt hashes (`$2b$12$…`) stay.
//! - `is_not_alphanumeric_string` asks for a letter; here a letter or a digit, so numeric
//!   passwords and PINs stay.
//! - `is_likely_id_string` is not ported: it drops a value when anything before it on the line
//!   mentions an id (`request_id=7 password=hunter2` would lose the password), and the keyword
//!   rule names access key ids (`access_key_id`, the public half of an HMAC pair) on purpose.
//!
//! [`plausible_assigned_secret`] adds the scrubber's own checks for assigned values:
//! placeholder words and a minimum entropy.

use super::gitleaks::shannon_entropy;

/// Minimum Shannon entropy (bits per character) of a keyword-assigned value
/// (`password = "…"`): placeholders such as `changeme` or `real_key` fall below it.
const ASSIGNMENT_MIN_ENTROPY: f64 = 2.95;

/// Words that mark an assigned value as a placeholder (`insert_key_here`, `your-api-key`,
/// `fakepassword`, `changeme`), as in the documentation and tests secret scanners see.
const PLACEHOLDER_WORDS: &[&str] =
    &["fake", "dummy", "example", "sample", "placeholder", "insert", "your_", "your-", "here", "changeme", "change_me", "redacted", "password", "secret", "xxxx"];

/// Whether `value` is, by its form alone, not a secret: a template ([`is_templated`]), a
/// variable ([`is_variable_reference`]), a run of a well-known sequence ([`is_sequential`]), a
/// derived UUID ([`is_derived_uuid`]), or without any letter or digit.
pub(super) fn not_secret_by_form(value: &str) -> bool {
    let value = value.trim();
    !value.chars().any(char::is_alphanumeric)
        || is_templated(value)
        || is_variable_reference(value)
        || is_sequential(value)
        || is_derived_uuid(value)
}

/// Whether `value` is a template placeholder: `{name}`, `<name>`, `${name}` (and so
/// `{{ name }}`). A value of fewer than two characters counts too, as in detect-secrets.
pub(super) fn is_templated(value: &str) -> bool {
    let value = value.trim();
    value.chars().nth(1).is_none()
        || (value.starts_with('{') && value.ends_with('}'))
        || (value.starts_with('<') && value.ends_with('>'))
        || (value.starts_with("${") && value.ends_with('}'))
}

/// Whether `value` is a shell, PHP or Perl variable or substitution: `$NAME`, `${name}`,
/// `$(command)`, `$1`. A crypt hash (`$2b$12$…`, `$6$salt$…`, `$apr1$…`) is not one.
pub(super) fn is_variable_reference(value: &str) -> bool {
    let Some(rest) = value.trim().strip_prefix('$') else { return false };
    let identifier = rest.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
    // Modular crypt format: `$<scheme id>$…`.
    if identifier > 0 && rest.as_bytes().get(identifier) == Some(&b'$') {
        return false;
    }
    match rest.bytes().next() {
        Some(b) if b.is_ascii_digit() => rest.bytes().all(|b| b.is_ascii_digit()),
        Some(b) => b.is_ascii_alphabetic() || matches!(b, b'_' | b'{' | b'('),
        None => false,
    }
}

/// Whether the text at an unquoted value is a call or a subscript (`get_secret()`,
/// `request.headers['apikey']`, `os.environ["KEY"]`): a name, then `(` or `[`, then a closing
/// `)` or `]` before the end of the line.
pub(super) fn is_indirect_reference(from_value: &str) -> bool {
    let line = from_value.split(['\r', '\n']).next().unwrap_or("");
    let name = line.bytes().take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')).count();
    name > 0
        && matches!(line.as_bytes().get(name), Some(b'(' | b'['))
        && line[name + 1..].contains([')', ']'])
}

/// Whether `value` is a run of a well-known sequence, compared case-insensitively: the
/// alphabet, the digits, hexadecimal or base64 digits in order, possibly wrapping around
/// (`ABCDEF`, `0123456789`, `0123456789abcdef`, `XYZABC`).
pub(super) fn is_sequential(value: &str) -> bool {
    const LETTERS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    const DIGITS: &str = "0123456789";
    const HEX: &str = "0123456789ABCDEF";
    // Upper case throughout, as the value is compared upper-cased; each sequence is doubled
    // where a run may wrap around.
    let sequences = [
        // Base64's alphabet (its two cases fold into one), letters first or digits first.
        [LETTERS, LETTERS, DIGITS, "+/"].concat(),
        [DIGITS, LETTERS, LETTERS, "+/"].concat(),
        // Digits then letters; digits alone; hexadecimal (both cases fold into one).
        [DIGITS, LETTERS, DIGITS, LETTERS].concat(),
        [DIGITS, DIGITS].concat(),
        [HEX, "ABCDEF", HEX, "ABCDEF"].concat(),
        [LETTERS, "=/"].concat(),
    ];
    let upper = value.trim().to_ascii_uppercase();
    sequences.iter().any(|sequence| sequence.contains(&upper))
}

/// Whether `value` is an RFC 9562 UUID of a version built from public or guessable inputs: a
/// timestamp and a node address (versions 1, 2 and 6) or a hash of a name (3 and 5). Random
/// UUIDs (version 4, 7, 8) are not derived: services issue them as API keys and tokens.
pub(super) fn is_derived_uuid(value: &str) -> bool {
    let bytes = value.trim().as_bytes();
    if bytes.len() != 36 {
        return false;
    }
    let shaped = bytes.iter().enumerate().all(|(i, b)| match i {
        8 | 13 | 18 | 23 => *b == b'-',
        _ => b.is_ascii_hexdigit(),
    });
    // Version nibble, and the RFC 9562 variant (binary 10xx).
    shaped && matches!(bytes[14], b'1' | b'2' | b'3' | b'5' | b'6') && matches!(bytes[19], b'8' | b'9' | b'a' | b'b' | b'A' | b'B')
}

/// Whether `value` is more than filler (`XXXX`, `****`, `0000`, `XXXX-XXXX`) or a template
/// reference (`{name}`, `<name>`, `${NAME}`, `%s`). Filler repeats one letter or digit; a
/// single letter among symbols (`A,.:-@*?!`) is not filler.
pub(super) fn not_filler(value: &str) -> bool {
    let value = value.trim();
    let alnum: Vec<char> = value.chars().filter(char::is_ascii_alphanumeric).collect();
    let Some(first) = alnum.first() else { return false };
    let same = alnum.len() > 1 && alnum.iter().all(|c| c.eq_ignore_ascii_case(first));
    let template = (value.starts_with('{') && value.ends_with('}'))
        || (value.starts_with('<') && value.ends_with('>'))
        || value.starts_with("${")
        || value.starts_with('%');
    !(template || same)
}

/// Whether a keyword-assigned value looks like a secret rather than a reference or placeholder:
/// it is not [`not_secret_by_form`], not a template or environment reference (`{{x}}`, `%s`,
/// `<x>`, `process.env.X`) or a literal (`null`, `true`), has no placeholder word, is not
/// filler, and is not low-entropy.
pub(super) fn plausible_assigned_secret(value: &str) -> bool {
    let trimmed = value.trim();
    if not_secret_by_form(trimmed) {
        return false;
    }
    let reference = trimmed.starts_with("{{")
        || trimmed.starts_with('%')
        || trimmed.starts_with("process.env")
        || trimmed.starts_with("os.environ")
        || trimmed.starts_with("env.")
        || trimmed.eq_ignore_ascii_case("null")
        || trimmed.eq_ignore_ascii_case("none")
        || trimmed.eq_ignore_ascii_case("true")
        || trimmed.eq_ignore_ascii_case("false")
        || trimmed.eq_ignore_ascii_case("[redacted]")
        || trimmed.starts_with("[REDACTED");
    let lower = trimmed.to_ascii_lowercase();
    let placeholder = PLACEHOLDER_WORDS.iter().any(|w| lower.contains(w));
    !reference && !placeholder && not_filler(trimmed) && shannon_entropy(trimmed) >= ASSIGNMENT_MIN_ENTROPY
}
