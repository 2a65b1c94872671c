//! Character-level pass: finds invisible Unicode and terminal escapes, strips them, and builds
//! the normalized *view* that the phrase rules match.
//!
//! The view drops what a reader cannot see (invisible and format characters, escape sequences,
//! controls; a backspace erases the character before it, as a terminal would), maps compatibility
//! forms to their NFKC base without combining marks (full-width letters, ligatures, Zalgo), folds
//! non-ASCII confusables to their UTS #39 prototype (Cyrillic `е` → `e`) and turns every Unicode
//! space into `' '`. Pure printable ASCII is its own view and is never copied; in other texts,
//! runs of printable ASCII are copied as they are (NFKC, confusable folding and the character
//! rules leave them unchanged), so only the other characters are classified one by one.
//!
//! Invariant: [`walk`] is the single classifier, so what is reported and what [`strip`] removes
//! are the same characters.

use std::borrow::Cow;

use unicode_normalization::char::{decompose_compatible, is_combining_mark};
use unicode_security::{MixedScript, is_potential_mixed_script_confusable_char};

use super::rules::CharRule;

/// What the walk saw at one position of the original text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event<'a> {
    /// A run of printable ASCII, tabs, line feeds and carriage returns: seen, and its own view.
    Plain(&'a str),
    /// A character a reader sees.
    Keep(char),
    /// A backspace (`U+0008`): flagged as a control and, in the view, erases the previous
    /// character.
    Backspace,
    /// Characters `start..end` (bytes) that the rule flags and [`strip`] may remove.
    Drop { rule: CharRule, start: usize, end: usize },
}

/// Result of the character pass over one text.
#[derive(Debug, Default)]
pub(super) struct Analysis<'a> {
    /// The normalized view (see the module docs).
    pub(super) view: Cow<'a, str>,
    /// Character rules that fired.
    pub(super) rules: Vec<CharRule>,
    /// ASCII decoded from Unicode tag characters (`U+E0020..=U+E007E`), one line per run.
    pub(super) tag_payload: String,
}

/// Analyzes `text`: character findings, decoded tag payload and the normalized view.
pub(super) fn analyze(text: &str) -> Analysis<'_> {
    if is_plain_ascii(text) {
        return Analysis { view: Cow::Borrowed(text), rules: Vec::new(), tag_payload: String::new() };
    }
    let mut view = String::with_capacity(text.len());
    let mut rules = Vec::new();
    let mut tag_payload = String::new();
    walk(text, |event| match event {
        Event::Plain(run) => view.push_str(run),
        Event::Keep(c) => push_normalized(&mut view, c),
        Event::Backspace => {
            view.pop();
            push_rule(&mut rules, CharRule::Control);
        }
        Event::Drop { rule, start, end } => {
            push_rule(&mut rules, rule);
            if rule == CharRule::TagChars {
                let decoded: String = text[start..end]
                    .chars()
                    .filter_map(|c| char::from_u32(u32::from(c).wrapping_sub(0xE0000)).filter(|a| (' '..='~').contains(a)))
                    .collect();
                if !decoded.is_empty() {
                    tag_payload.push_str(&decoded);
                    tag_payload.push('\n');
                }
            }
        }
    });
    if has_mixed_script_confusable(text) {
        push_rule(&mut rules, CharRule::Confusable);
    }
    Analysis { view: Cow::Owned(view), rules, tag_payload }
}

/// Removes the characters flagged by the rules for which `strip` returns true, and folds
/// confusable letters inside mixed-script words to their ASCII prototype when
/// [`CharRule::Confusable`] is stripped. Returns `None` when nothing changed.
pub(super) fn strip(text: &str, strip: impl Fn(CharRule) -> bool) -> Option<String> {
    if is_plain_ascii(text) {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut last = 0;
    walk(text, |event| match event {
        Event::Plain(_) | Event::Keep(_) => {}
        Event::Backspace => {
            if strip(CharRule::Control) {
                changed = true;
            }
        }
        Event::Drop { rule, start, end } => {
            if strip(rule) {
                out.push_str(&text[last..start]);
                last = end;
                changed = true;
            }
        }
    });
    // Backspaces are reported through their own event: remove them in a second, simple pass.
    out.push_str(&text[last..]);
    if strip(CharRule::Control) && out.contains('\u{8}') {
        out.retain(|c| c != '\u{8}');
        changed = true;
    }
    if strip(CharRule::Confusable) && has_mixed_script_confusable(&out) {
        out = fold_confusables(&out);
        changed = true;
    }
    changed.then_some(out)
}

/// Printable ASCII plus tab, line feed and carriage return: nothing to classify.
fn is_plain_ascii(text: &str) -> bool {
    plain_prefix_len(text.as_bytes()) == text.len()
}

/// Whether `b` is printable ASCII, a tab, a line feed or a carriage return (branch-free).
fn is_plain_byte(b: u8) -> bool {
    (b.wrapping_sub(0x20) < 0x5F) | (b == b'\t') | (b == b'\n') | (b == b'\r')
}

/// Length of the leading run of plain bytes (see [`is_plain_byte`]), 32 bytes at a time.
fn plain_prefix_len(bytes: &[u8]) -> usize {
    let mut len = 0;
    for chunk in bytes.chunks(32) {
        if chunk.iter().fold(true, |all, &b| all & is_plain_byte(b)) {
            len += chunk.len();
        } else {
            return len + chunk.iter().take_while(|&&b| is_plain_byte(b)).count();
        }
    }
    len
}

fn push_rule(rules: &mut Vec<CharRule>, rule: CharRule) {
    if !rules.contains(&rule) {
        rules.push(rule);
    }
}

/// Appends `c` to the view: NFKC without combining marks, confusables folded.
fn push_normalized(view: &mut String, c: char) {
    if c.is_ascii() {
        view.push(c);
        return;
    }
    if c.is_whitespace() {
        view.push(' ');
        return;
    }
    decompose_compatible(c, |d| {
        if is_combining_mark(d) {
            return;
        }
        if d.is_ascii() || !is_potential_mixed_script_confusable_char(d) {
            view.push(d);
            return;
        }
        let mut buf = [0u8; 4];
        for p in unicode_security::skeleton(d.encode_utf8(&mut buf)) {
            if !is_combining_mark(p) {
                view.push(p);
            }
        }
    });
}

/// Walks `text`, reporting kept characters and flagged spans in order.
pub(super) fn walk<'a>(text: &'a str, mut on: impl FnMut(Event<'a>)) {
    let mut at = 0;
    while let Some(rest) = text.get(at..).filter(|rest| !rest.is_empty()) {
        let plain = plain_prefix_len(rest.as_bytes());
        if plain > 0 {
            // Plain bytes are ASCII, so `at + plain` is a character boundary.
            on(Event::Plain(rest.get(..plain).unwrap_or_default()));
            at += plain;
            continue;
        }
        let Some(c) = rest.chars().next() else { break };
        let start = at;
        let end = at + c.len_utf8();
        let prev = text.get(..start).and_then(|before| before.chars().next_back());
        let next = text.get(end..).and_then(|after| after.chars().next());
        let cp = u32::from(c);
        // Escape sequences first: they consume several characters.
        if c == '\u{1b}' || c == '\u{9b}' || c == '\u{9d}' {
            let (rule, len) = escape_sequence(rest);
            on(Event::Drop { rule, start, end: start + len });
            at += len;
            continue;
        }
        if is_tag(cp) {
            let run_len = rest.char_indices().find(|&(_, c)| !is_tag(u32::from(c))).map_or(rest.len(), |(i, _)| i);
            let run = rest.get(..run_len).unwrap_or_default();
            if !is_emoji_tag_sequence(prev, run) {
                on(Event::Drop { rule: CharRule::TagChars, start, end: start + run_len });
            } else {
                for c in run.chars() {
                    on(Event::Keep(c));
                }
            }
            at += run_len;
            continue;
        }
        let rule = match c {
            '\u{8}' => {
                on(Event::Backspace);
                at = end;
                continue;
            }
            _ => char_rule(c, start, prev, next),
        };
        match rule {
            Some(rule) => on(Event::Drop { rule, start, end }),
            None => on(Event::Keep(c)),
        }
        at = end;
    }
}

/// Unicode tag characters `U+E0000..=U+E007F`.
fn is_tag(cp: u32) -> bool {
    (0xE0000..=0xE007F).contains(&cp)
}

/// Classifies the escape sequence at the start of `rest` (which starts with ESC, CSI or OSC)
/// and returns its rule and length in bytes (ECMA-48 §5.4 and §8.3.89).
fn escape_sequence(rest: &str) -> (CharRule, usize) {
    let bytes = rest.as_bytes();
    // `body`: bytes before the parameters (ESC `[`, ESC `]`, or the two-byte C1 CSI/OSC).
    let (csi, body) = if rest.starts_with('\u{9b}') {
        (true, 2)
    } else if rest.starts_with('\u{9d}') {
        (false, 2)
    } else {
        match bytes.get(1) {
            Some(b'[') => (true, 2),
            Some(b']') => (false, 2),
            Some(b) if (0x40..=0x5f).contains(b) => return (CharRule::Control, 2),
            _ => return (CharRule::Control, 1),
        }
    };
    if csi {
        // Parameter bytes 0x30–0x3F, intermediate bytes 0x20–0x2F, one final byte 0x40–0x7E.
        let mut i = body;
        while bytes.get(i).is_some_and(|b| (0x20..=0x3f).contains(b)) && i < body + 64 {
            i += 1;
        }
        if bytes.get(i).is_some_and(|b| (0x40..=0x7e).contains(b)) {
            i += 1;
        }
        return (CharRule::AnsiCsi, i);
    }
    // OSC: up to BEL, ST (ESC \) or C1 ST, or at most 4096 characters.
    let after = rest.get(body..).unwrap_or_default();
    let hyperlink = after.starts_with("8;");
    let mut len = rest.len();
    for (count, (offset, c)) in after.char_indices().enumerate() {
        let at = body + offset;
        if c == '\u{7}' || c == '\u{9c}' {
            len = at + c.len_utf8();
            break;
        }
        if c == '\u{1b}' {
            len = at + if bytes.get(at + 1) == Some(&b'\\') { 2 } else { 1 };
            break;
        }
        if count >= 4096 {
            len = at;
            break;
        }
    }
    (if hyperlink { CharRule::Osc8Hyperlink } else { CharRule::AnsiOsc }, len)
}

/// An emoji tag sequence (a subdivision flag such as England's): U+1F3F4, tag letters or
/// digits, then CANCEL TAG (Unicode TS #51 §2.8). `run` is the run of tag characters.
fn is_emoji_tag_sequence(prev: Option<char>, run: &str) -> bool {
    let Some(body) = run.strip_suffix('\u{e007f}') else { return false };
    prev == Some('\u{1f3f4}')
        && (1..=7).contains(&body.chars().count())
        && body.chars().all(|c| matches!(u32::from(c), 0xE0030..=0xE0039 | 0xE0061..=0xE007A))
}

/// The rule that drops `c` (not a backspace), or `None` to keep it: the one table both scans
/// use. `start` is `c`'s byte offset (a byte-order mark is kept only at 0); `prev`/`next` are
/// its neighbours in the text.
fn char_rule(c: char, start: usize, prev: Option<char>, next: Option<char>) -> Option<CharRule> {
    match c {
        '\t' | '\n' | '\r' => None,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => Some(CharRule::Control),
        // Zero-width space, word joiner, invisible operators (used for binary smuggling),
        // Mongolian vowel separator, Hangul fillers, interlinear annotation marks.
        '\u{200b}' | '\u{2060}'..='\u{2064}' | '\u{180e}' | '\u{115f}' | '\u{1160}' | '\u{3164}' | '\u{ffa0}'
        | '\u{fff9}'..='\u{fffb}' | '\u{34f}' => Some(CharRule::ZeroWidth),
        // A byte-order mark is only legitimate as the very first character.
        '\u{feff}' => (start != 0).then_some(CharRule::ZeroWidth),
        // Joiners are legitimate between two non-ASCII characters (emoji sequences, Indic
        // and Arabic shaping); next to ASCII they only hide something.
        '\u{200c}' | '\u{200d}' => (!between_non_ascii(prev, next)).then_some(CharRule::ZeroWidth),
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => Some(CharRule::Bidi),
        '\u{200e}' | '\u{200f}' | '\u{61c}' => (!between_non_ascii(prev, next) && !touches_non_ascii(prev, next)).then_some(CharRule::Bidi),
        '\u{fe00}'..='\u{fe0f}' => (!legit_variation_selector(prev)).then_some(CharRule::VariationSelector),
        '\u{e0100}'..='\u{e01ef}' => (!prev.is_some_and(is_han)).then_some(CharRule::VariationSelector),
        _ => None,
    }
}

fn between_non_ascii(prev: Option<char>, next: Option<char>) -> bool {
    let visible = |c: Option<char>| c.is_some_and(|c| !c.is_ascii() && !c.is_whitespace());
    visible(prev) && visible(next)
}

fn touches_non_ascii(prev: Option<char>, next: Option<char>) -> bool {
    prev.is_some_and(|c| !c.is_ascii()) || next.is_some_and(|c| !c.is_ascii())
}

/// A variation selector is legitimate once, right after a visible base: a non-ASCII symbol,
/// letter or emoji, or the ASCII bases of keycap and text/emoji sequences (`0-9 # *`).
fn legit_variation_selector(prev: Option<char>) -> bool {
    match prev {
        Some(c) if c.is_ascii() => c.is_ascii_digit() || c == '#' || c == '*',
        Some(c) => !c.is_whitespace() && !matches!(u32::from(c), 0xFE00..=0xFE0F | 0xE0100..=0xE01EF),
        None => false,
    }
}

fn is_han(c: char) -> bool {
    matches!(u32::from(c), 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x3134F)
}

/// Whether some word mixes scripts and contains a character confusable with another script,
/// such as Latin `age` spelled with a Cyrillic `е` (UTS #39 §5.1, §4).
///
/// Only words with both an ASCII letter and a non-ASCII character can qualify, and such a word
/// has a non-ASCII letter or digit right next to an ASCII one: the walk jumps from one
/// non-ASCII character to the next and looks at the word around those only.
fn has_mixed_script_confusable(text: &str) -> bool {
    let mut at = 0;
    while let Some(offset) = text.as_bytes().get(at..).and_then(|rest| rest.iter().position(|b| !b.is_ascii())) {
        let start = at + offset;
        let Some(c) = text.get(start..).and_then(|rest| rest.chars().next()) else { break };
        let ascii_neighbour = text.as_bytes().get(start.wrapping_sub(1)).is_some_and(u8::is_ascii_alphanumeric)
            || text.as_bytes().get(start + c.len_utf8()).is_some_and(u8::is_ascii_alphanumeric);
        if !ascii_neighbour || !c.is_alphanumeric() {
            at = start + c.len_utf8();
            continue;
        }
        // The word: the maximal run of alphanumeric characters around `c`.
        let before = text.get(..start).unwrap_or_default();
        let from = before.char_indices().rev().take_while(|&(_, c)| c.is_alphanumeric()).last().map_or(start, |(i, _)| i);
        let after = text.get(start..).unwrap_or_default();
        let to = start + after.char_indices().find(|&(_, c)| !c.is_alphanumeric()).map_or(after.len(), |(i, _)| i);
        if text.get(from..to).is_some_and(is_confusable_word) {
            return true;
        }
        at = to;
    }
    false
}

fn is_confusable_word(word: &str) -> bool {
    word.chars().any(|c| c.is_ascii_alphabetic())
        && word.chars().any(|c| !c.is_ascii() && is_potential_mixed_script_confusable_char(c))
        && !word.is_single_script()
}

/// Folds the confusable characters of mixed-script words to their prototype when it is ASCII.
fn fold_confusables(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if !word.is_ascii() && is_confusable_word(word) {
            for c in word.chars() {
                let mut buf = [0u8; 4];
                let proto: String = unicode_security::skeleton(c.encode_utf8(&mut buf)).collect();
                if !c.is_ascii() && proto.is_ascii() && !proto.is_empty() {
                    out.push_str(&proto);
                } else {
                    out.push(c);
                }
            }
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The character walk before ASCII runs were batched (one event per character), kept to
    /// check that [`walk`] reports the same events.
    fn walk_reference(text: &str, mut on: impl FnMut(Event<'static>)) {
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let end_of = |i: usize| chars.get(i).map_or(text.len(), |&(at, _)| at);
        let mut i = 0;
        while let Some(&(start, c)) = chars.get(i) {
            let prev = i.checked_sub(1).and_then(|p| chars.get(p)).map(|&(_, c)| c);
            let next = chars.get(i + 1).map(|&(_, c)| c);
            let cp = u32::from(c);
            // Escape sequences first: they consume several characters.
            if c == '\u{1b}' || c == '\u{9b}' || c == '\u{9d}' {
                let (rule, len) = escape_sequence_reference(&chars[i..]);
                on(Event::Drop { rule, start, end: end_of(i + len) });
                i += len;
                continue;
            }
            if (0xE0000..=0xE007F).contains(&cp) {
                let run = chars[i..].iter().take_while(|&&(_, c)| (0xE0000..=0xE007F).contains(&u32::from(c))).count();
                if !is_emoji_tag_sequence_reference(prev, &chars[i..i + run]) {
                    on(Event::Drop { rule: CharRule::TagChars, start, end: end_of(i + run) });
                } else {
                    for &(_, c) in &chars[i..i + run] {
                        on(Event::Keep(c));
                    }
                }
                i += run;
                continue;
            }
            let rule = match c {
                '\u{8}' => {
                    on(Event::Backspace);
                    i += 1;
                    continue;
                }
                _ => char_rule(c, start, prev, next),
            };
            match rule {
                Some(rule) => on(Event::Drop { rule, start, end: end_of(i + 1) }),
                None => on(Event::Keep(c)),
            }
            i += 1;
        }
    }

    /// Classifies the escape sequence at the start of `chars` (which starts with ESC, CSI or OSC)
    /// and returns its rule and length in characters (ECMA-48 §5.4 and §8.3.89).
    fn escape_sequence_reference(chars: &[(usize, char)]) -> (CharRule, usize) {
        let at = |i: usize| chars.get(i).map(|&(_, c)| c);
        let (kind, body) = match at(0) {
            Some('\u{9b}') => ('[', 1),
            Some('\u{9d}') => (']', 1),
            _ => match at(1) {
                Some('[') => ('[', 2),
                Some(']') => (']', 2),
                Some(c) if ('\u{40}'..='\u{5f}').contains(&c) => return (CharRule::Control, 2),
                _ => return (CharRule::Control, 1),
            },
        };
        if kind == '[' {
            // Parameter bytes 0x30–0x3F, intermediate bytes 0x20–0x2F, one final byte 0x40–0x7E.
            let mut i = body;
            while at(i).is_some_and(|c| ('\u{20}'..='\u{3f}').contains(&c)) && i < body + 64 {
                i += 1;
            }
            if at(i).is_some_and(|c| ('\u{40}'..='\u{7e}').contains(&c)) {
                i += 1;
            }
            return (CharRule::AnsiCsi, i);
        }
        // OSC: up to BEL, ST (ESC \) or C1 ST, or at most 4096 characters.
        let hyperlink = at(body) == Some('8') && at(body + 1) == Some(';');
        let mut i = body;
        while let Some(c) = at(i) {
            if c == '\u{7}' || c == '\u{9c}' {
                i += 1;
                break;
            }
            if c == '\u{1b}' {
                i += if at(i + 1) == Some('\\') { 2 } else { 1 };
                break;
            }
            if i >= body + 4096 {
                break;
            }
            i += 1;
        }
        (if hyperlink { CharRule::Osc8Hyperlink } else { CharRule::AnsiOsc }, i)
    }

    /// An emoji tag sequence (a subdivision flag such as England's): U+1F3F4, tag letters or
    /// digits, then CANCEL TAG (Unicode TS #51 §2.8).
    fn is_emoji_tag_sequence_reference(prev: Option<char>, run: &[(usize, char)]) -> bool {
        let Some((&(_, last), body)) = run.split_last() else { return false };
        prev == Some('\u{1f3f4}')
            && last == '\u{e007f}'
            && (1..=7).contains(&body.len())
            && body.iter().all(|&(_, c)| matches!(u32::from(c), 0xE0030..=0xE0039 | 0xE0061..=0xE007A))
    }


    fn events(text: &str) -> Vec<Event<'_>> {
        let mut events = Vec::new();
        walk(text, |event| match event {
            Event::Plain(run) => events.extend(run.chars().map(Event::Keep)),
            event => events.push(event),
        });
        events
    }

    fn events_reference(text: &str) -> Vec<Event<'static>> {
        let mut events = Vec::new();
        walk_reference(text, |event| events.push(event));
        events
    }

    #[test]
    fn walk_reports_what_the_character_walk_reported() {
        for text in [
            "",
            "plain",
            "a\u{1b}[31mred\u{1b}[0m\u{9b}2J\u{1b}]8;;https://x\u{1b}\\x\u{1b}]0;t\u{7}\u{1b}]0;é\u{9c}\u{1b}\u{1b}Aé\u{1b}é",
            "🏴\u{e0067}\u{e0062}\u{e0065}\u{e006e}\u{e0067}\u{e007f} tags\u{e0041}\u{e0042} back\u{8}\u{8}space",
            "\u{feff}bom\u{feff} a\u{200d}b 👨\u{200d}👩 \u{200e}x\u{200f}é\u{200e} 1\u{fe0f} a\u{fe00} 漢\u{e0100} a\u{e0100}",
            "\u{1b}]",
            "\u{1b}[",
            "\u{9d}",
        ] {
            assert_eq!(events(text), events_reference(text), "{text:?}");
        }
        let long_osc = format!("\u{1b}]2;{}\u{7}after", "é".repeat(5000));
        assert_eq!(events(&long_osc), events_reference(&long_osc));
        let long_csi = format!("\u{1b}[{}m", "1;".repeat(40));
        assert_eq!(events(&long_csi), events_reference(&long_csi));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn walk_matches_the_character_walk(text in "([a-z ;\\[\\]\\\\0-9]|\u{1b}|\u{9b}|\u{9d}|\u{9c}|\u{7}|\u{8}|\t|\n|\u{0}|é|漢|👨|🏴|[\u{e0000}-\u{e007f}]|[\u{200b}-\u{200f}]|[\u{202a}-\u{202e}]|[\u{fe00}-\u{fe0f}]|\u{e0100}|\u{feff}|\u{61c}|\u{2066})*") {
            prop_assert_eq!(events(&text), events_reference(&text));
        }

        #[test]
        fn confusable_words_found_as_before(text in "([a-z ,.]|е|о|а|é|漢|ß|\u{2160}|1)*") {
            let words_reference = text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty());
            let reference = words_reference.into_iter().any(|word| !word.is_ascii() && is_confusable_word(word));
            prop_assert_eq!(has_mixed_script_confusable(&text), reference);
        }
    }
}
