//! Personal data: e-mail addresses, phone numbers, payment card numbers, IBANs and public IPv4
//! addresses.
//!
//! Invariants: a card-shaped digit sequence is redacted only when it passes the Luhn check
//! (ISO/IEC 7812-1 Annex B); a Luhn-invalid one is *protected*, so no other rule (a phone
//! pattern, say) redacts any part of it. An IBAN is redacted only when its ISO 13616 mod-97
//! check holds. Phone numbers need a `+` country code, a parenthesised area code, separators
//! in a phone-like grouping, or a phone keyword just before them; dates, times, IP addresses
//! and bare digit runs are left alone.

use std::sync::Arc;

use regex::Regex;

use super::{Error, Finding};

/// Detectors for personal data.
pub(super) struct Pii {
    email: Regex,
    digits: Regex,
    iban: Regex,
    phone: Regex,
    phone_context: Regex,
    ipv4: Regex,
    kinds: Kinds,
}

struct Kinds {
    email: Arc<str>,
    card: Arc<str>,
    iban: Arc<str>,
    phone: Arc<str>,
    ip: Arc<str>,
}

/// A span no other detector may redact inside (a Luhn-invalid card number).
#[derive(Debug, Clone, Copy)]
pub(super) struct Protected {
    pub(super) start: usize,
    pub(super) end: usize,
}

// === impl Pii ===

impl Pii {
    /// Compiles the detectors.
    ///
    /// # Errors
    /// [`Error::Rules`] when a pattern does not compile (a bug caught by the unit tests).
    pub(super) fn load() -> Result<Self, Error> {
        let re = |p: &str| Regex::new(p).map_err(|e| Error::Rules(format!("pii pattern {p}: {e}")));
        Ok(Self {
            // RFC 5322 dot-atom local part (common subset) and a DNS name with a letter TLD.
            email: re(r"(?i)(?-u:\b)[a-z0-9][a-z0-9._%+-]{0,63}@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.[a-z]{2,24}(?-u:\b)")?,
            // Runs of digit groups separated by single spaces or dashes.
            digits: re(r"[0-9]+(?:[ -][0-9]+)*")?,
            iban: re(r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?-u:\b)")?,
            phone: re(r"\+?\(?[0-9][0-9 ().-]{4,24}[0-9](?:[ \t]*(?:x|ext\.?)[ \t]*[0-9]{1,5})?")?,
            phone_context: re(r"(?i)(?:phone|tel|telephone|mobile|cell|fax|call(?:ed)?|contact|whatsapp|sms|reach (?:me|us)|number|ph)(?-u:\b)[^0-9+\n]{0,24}$")?,
            ipv4: re(r"(?-u:\b)(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?-u:\b)")?,
            kinds: Kinds {
                email: Arc::from("email"),
                card: Arc::from("payment_card"),
                iban: Arc::from("iban"),
                phone: Arc::from("phone"),
                ip: Arc::from("ip_address"),
            },
        })
    }

    /// Appends findings for personal data in `text`, and the spans of Luhn-invalid card
    /// numbers to `protected`.
    pub(super) fn scan(&self, text: &str, findings: &mut Vec<Finding>, protected: &mut Vec<Protected>) {
        // Every e-mail pattern match holds an `@`; every card, IBAN, IPv4 and phone match holds
        // an ASCII digit. Short argument values mostly have neither: skip those regex runs.
        let bytes = text.as_bytes();
        if memchr::memchr(b'@', bytes).is_some() {
            for m in self.email.find_iter(text) {
                findings.push(Finding { kind: self.kinds.email.clone(), start: m.start(), end: m.end() });
            }
        }
        if !bytes.iter().any(u8::is_ascii_digit) {
            return;
        }
        self.scan_cards(text, findings, protected);
        for m in self.iban.find_iter(text) {
            if iban_valid(m.as_str()) {
                findings.push(Finding { kind: self.kinds.iban.clone(), start: m.start(), end: m.end() });
            }
        }
        for m in self.ipv4.find_iter(text) {
            let glued = m.start().checked_sub(1).is_some_and(|i| bytes[i] == b'.' || bytes[i].is_ascii_alphanumeric())
                || bytes.get(m.end()).is_some_and(|b| *b == b'.' && bytes.get(m.end() + 1).is_some_and(u8::is_ascii_digit));
            if !glued && m.as_str().parse::<std::net::Ipv4Addr>().is_ok_and(public_ipv4) {
                findings.push(Finding { kind: self.kinds.ip.clone(), start: m.start(), end: m.end() });
            }
        }
        for m in self.phone.find_iter(text) {
            let (start, end) = trim_phone(text, m.start(), m.end());
            if start >= end {
                continue;
            }
            let before = text[floor_char(text, start.saturating_sub(40))..start].trim_end_matches(['"', '\'', '=', ':', ' ']);
            let context = self.phone_context.is_match(before);
            if phone_like(text, start, end, context) {
                findings.push(Finding { kind: self.kinds.phone.clone(), start, end });
            }
        }
    }

    fn scan_cards(&self, text: &str, findings: &mut Vec<Finding>, protected: &mut Vec<Protected>) {
        let bytes = text.as_bytes();
        for run in self.digits.find_iter(text) {
            // A card number stands alone: no letter or digit glued to either end.
            let before = run.start().checked_sub(1).map(|i| bytes[i]);
            let after = bytes.get(run.end()).copied();
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/' | b'+'))
                || after.is_some_and(|b| b.is_ascii_alphanumeric())
                || (after == Some(b'.') && bytes.get(run.end() + 1).is_some_and(u8::is_ascii_digit))
            {
                continue;
            }
            let groups = split_groups(run.as_str(), run.start());
            let mut i = 0;
            while i < groups.len() {
                match card_at(text, &groups, i) {
                    Some((j, true)) => {
                        findings.push(Finding { kind: self.kinds.card.clone(), start: groups[i].start, end: groups[j].end });
                        i = j + 1;
                    }
                    Some((j, false)) => {
                        protected.push(Protected { start: groups[i].start, end: groups[j].end });
                        i += 1;
                    }
                    None => i += 1,
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Group {
    start: usize,
    end: usize,
    digits: usize,
    /// The separator before this group (`None` for the first).
    separator: Option<u8>,
}

fn split_groups(run: &str, offset: usize) -> Vec<Group> {
    let mut groups = Vec::new();
    let mut separator = None;
    let mut start = 0;
    for (i, b) in run.bytes().enumerate() {
        if b == b' ' || b == b'-' {
            groups.push(Group { start: offset + start, end: offset + i, digits: i - start, separator });
            separator = Some(b);
            start = i + 1;
        }
    }
    groups.push(Group { start: offset + start, end: offset + run.len(), digits: run.len() - start, separator });
    groups
}

/// The card number starting at group `i`, if the groups from there are card-shaped:
/// `Some((last group, Luhn-valid))`.
///
/// Card shape: 12–19 digits, either one group, or a first group of exactly 4 digits followed by
/// every following group of 1–6 digits with the same separator (4-4-4-4, 4-6-5, 4-4-4-1, …).
/// The number is the whole grouping: a Luhn-valid prefix of a longer grouping is not a card.
fn card_at(text: &str, groups: &[Group], i: usize) -> Option<(usize, bool)> {
    let first = groups[i];
    if (12..=19).contains(&first.digits) {
        return Some((i, luhn_valid_groups(text, &groups[i..=i])));
    }
    if first.digits != 4 {
        return None;
    }
    let separator = groups.get(i + 1)?.separator;
    let mut total = first.digits;
    let mut last = i;
    for (j, group) in groups.iter().enumerate().skip(i + 1) {
        if group.separator != separator || group.digits > 6 {
            break;
        }
        total += group.digits;
        last = j;
    }
    (12..=19).contains(&total).then(|| (last, luhn_valid_groups(text, &groups[i..=last])))
}

fn luhn_valid_groups(text: &str, groups: &[Group]) -> bool {
    luhn(groups.iter().flat_map(|g| text.as_bytes()[g.start..g.end].iter().copied()).collect::<Vec<_>>().into_iter())
}

/// The Luhn check (ISO/IEC 7812-1 Annex B) over ASCII digits.
pub(super) fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let mut sum = 0u32;
    let mut count = 0;
    for (i, b) in digits.rev().enumerate() {
        let Some(d) = (b as char).to_digit(10) else { return false };
        sum += if i % 2 == 1 {
            let doubled = d * 2;
            if doubled > 9 { doubled - 9 } else { doubled }
        } else {
            d
        };
        count += 1;
    }
    count > 0 && sum.is_multiple_of(10)
}

/// ISO 13616 check: move the first four characters to the end, letters to 10..35, mod 97 = 1.
pub(super) fn iban_valid(candidate: &str) -> bool {
    let compact: Vec<u8> = candidate.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let mut remainder = 0u32;
    for b in compact[4..].iter().chain(&compact[..4]) {
        let value = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 { (remainder * 100 + value) % 97 } else { (remainder * 10 + value) % 97 };
    }
    remainder == 1
}

/// Whether `ip` is a globally routable unicast address: a public address identifies a person's
/// connection (GDPR recital 30); private, loopback, link-local, shared, documentation,
/// benchmarking, multicast and reserved ranges (RFC 6890) do not.
fn public_ipv4(ip: std::net::Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19)))
}

fn floor_char(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// Trims separators the phone pattern may have taken at either end, and an unbalanced `(`.
fn trim_phone(text: &str, mut start: usize, mut end: usize) -> (usize, usize) {
    let bytes = text.as_bytes();
    while end > start && matches!(bytes[end - 1], b' ' | b'.' | b'-' | b'(') {
        end -= 1;
    }
    while start < end && matches!(bytes[start], b' ' | b'.' | b'-' | b')') {
        start += 1;
    }
    (start, end)
}

/// Whether `text[start..end]` is shaped like a phone number.
fn phone_like(text: &str, start: usize, end: usize, context: bool) -> bool {
    let bytes = text.as_bytes();
    let candidate = &text[start..end];
    let before = start.checked_sub(1).map(|i| bytes[i]);
    let after = bytes.get(end).copied();
    // Glued to a word, a path, a version or a time: not a phone number.
    if before.is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'/' | b'.' | b'-' | b':' | b'#' | b'@'))
        || after.is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'/' | b'-' | b':' | b'@'))
        || (after == Some(b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit))
    {
        return false;
    }
    let main = candidate.split(['x', 'e']).next().unwrap_or(candidate);
    let digits = main.bytes().filter(u8::is_ascii_digit).count();
    if !(7..=15).contains(&digits) {
        return false;
    }
    if candidate.matches('(').count() != candidate.matches(')').count() {
        return false;
    }
    let groups: Vec<&str> = main.split(|c: char| !c.is_ascii_digit()).filter(|g| !g.is_empty()).collect();
    let separated = groups.len() > 1;
    // Dates (2024-01-31, 31.01.2024), IPv4 addresses and dotted versions.
    let dotted = main.contains('.') && !main.contains([' ', '-', '(']);
    if dotted && groups.iter().all(|g| g.len() <= 4) && groups.len() >= 3 && !main.starts_with('+') {
        let phone_dots = groups.len() == 3 && groups[0].len() == 3 && groups[1].len() == 3 && groups[2].len() == 4;
        if !phone_dots {
            return false;
        }
    }
    if groups.len() == 3 && (groups[0].len() == 4 && groups[1].len() <= 2 && groups[2].len() <= 2) {
        return false;
    }
    if groups.len() == 3 && groups[0].len() <= 2 && groups[1].len() <= 2 && groups[2].len() == 4 {
        return false;
    }
    if candidate.starts_with('+') || candidate.starts_with('(') {
        return separated || digits >= 8;
    }
    if context {
        return true;
    }
    // Unprefixed, without a keyword: at least 9 digits in two or more groups, none longer than 8.
    separated && digits >= 9 && groups.iter().all(|g| g.len() <= 8) && groups.last().is_some_and(|g| g.len() >= 2)
}
