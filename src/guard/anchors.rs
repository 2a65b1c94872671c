//! Anchor search: every occurrence of a set of ASCII literals, ASCII case-insensitively, in one
//! pass over the view.
//!
//! An Aho-Corasick automaton compiled to a dense DFA over byte classes. A DFA step is one
//! dependent table load, so a single scan is bound by load latency; the view is cut into
//! lanes that are scanned in lock step, which lets the processor overlap the lanes' loads
//! (about twice as fast as `aho_corasick`'s DFA on the benign corpus). Each lane starts
//! `longest literal − 1` bytes early without reporting, so a literal that crosses a lane
//! boundary is found by the lane where it ends.
//!
//! Invariant: [`Anchors::find_all`] reports every occurrence of every literal (overlapping ones
//! included) exactly once.

use std::collections::VecDeque;

/// Lanes scanned in lock step.
const LANES: usize = 4;
/// Views shorter than this (bytes) are scanned in one lane.
const MIN_LANE_SCAN: usize = LANES * 32;

/// One occurrence: `(start, end, literal)`; `start..end` in bytes, `literal` the index into the
/// literals given to [`Anchors::new`].
pub(super) type Hit = (usize, usize, usize);

/// The compiled literal set.
pub(super) struct Anchors {
    /// Byte → class; a letter and its upper case share a class, bytes in no literal are 0.
    class: [u8; 256],
    /// Number of classes (the row length of `table`).
    classes: usize,
    /// DFA transitions: `table[state + class]` is the next state. States are row offsets
    /// (index × `classes`); the start state is 0.
    table: Vec<u32>,
    /// States at or above this one end at least one literal.
    first_match: u32,
    /// Per matching state (`(state − first_match) / classes`): the literals ending there.
    outputs: Vec<Vec<usize>>,
    /// Length of each literal (bytes).
    lens: Vec<usize>,
    /// The longest literal (bytes).
    max_len: usize,
}

/// Why a literal set cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub(super) enum AnchorError {
    /// A literal is empty or not ASCII.
    #[error("anchor literal {0:?} is empty or not ASCII")]
    Literal(String),
    /// The automaton does not fit 32-bit state offsets.
    #[error("anchor automaton too large")]
    TooLarge,
}

impl Anchors {
    /// Compiles `literals` (non-empty ASCII; matched ASCII case-insensitively).
    ///
    /// # Errors
    /// A literal is empty or not ASCII, or the literals are far too many.
    pub(super) fn new(literals: &[&str]) -> Result<Self, AnchorError> {
        if let Some(bad) = literals.iter().find(|l| l.is_empty() || !l.is_ascii()) {
            return Err(AnchorError::Literal((*bad).to_owned()));
        }
        // Classes: one per distinct lower-case byte of the literals, 0 for every other byte.
        let mut class = [0u8; 256];
        let mut classes = 1u8;
        for b in literals.iter().flat_map(|l| l.bytes()) {
            let slot = &mut class[usize::from(b.to_ascii_lowercase())];
            if *slot == 0 {
                *slot = classes;
                classes += 1;
            }
        }
        for b in 0..=u8::MAX {
            class[usize::from(b)] = class[usize::from(b.to_ascii_lowercase())];
        }
        let classes = usize::from(classes);

        // The trie, then failure links and full transitions breadth first.
        let mut trie: Vec<Vec<Option<usize>>> = vec![vec![None; classes]];
        let mut ends: Vec<Vec<usize>> = vec![Vec::new()];
        for (id, literal) in literals.iter().enumerate() {
            let mut state = 0;
            for b in literal.bytes() {
                let c = usize::from(class[usize::from(b)]);
                state = match trie[state][c] {
                    Some(next) => next,
                    None => {
                        trie.push(vec![None; classes]);
                        ends.push(Vec::new());
                        let next = trie.len() - 1;
                        trie[state][c] = Some(next);
                        next
                    }
                };
            }
            ends[state].push(id);
        }
        let states = trie.len();
        let mut fail = vec![0usize; states];
        let mut delta = vec![vec![0usize; classes]; states];
        let mut queue = VecDeque::new();
        for c in 0..classes {
            if let Some(next) = trie[0][c] {
                delta[0][c] = next;
                queue.push_back(next);
            }
        }
        while let Some(state) = queue.pop_front() {
            let inherited = ends[fail[state]].clone();
            ends[state].extend(inherited);
            for c in 0..classes {
                match trie[state][c] {
                    Some(next) => {
                        fail[next] = delta[fail[state]][c];
                        delta[state][c] = next;
                        queue.push_back(next);
                    }
                    None => delta[state][c] = delta[fail[state]][c],
                }
            }
        }

        // Renumber: states that end no literal first (the start state stays 0), then the rest,
        // so one comparison tells whether a state reports.
        let mut order: Vec<usize> = (0..states).filter(|&s| ends[s].is_empty()).collect();
        let first_match = order.len();
        order.extend((0..states).filter(|&s| !ends[s].is_empty()));
        let mut offsets = vec![0u32; states];
        for (new, &old) in order.iter().enumerate() {
            offsets[old] = u32::try_from(new * classes).map_err(|_| AnchorError::TooLarge)?;
        }
        let table = order.iter().flat_map(|&old| delta[old].iter().map(|&next| offsets[next])).collect();
        Ok(Self {
            class,
            classes,
            table,
            first_match: u32::try_from(first_match * classes).map_err(|_| AnchorError::TooLarge)?,
            outputs: order[first_match..].iter().map(|&old| ends[old].clone()).collect(),
            lens: literals.iter().map(|l| l.len()).collect(),
            max_len: literals.iter().map(|l| l.len()).max().unwrap_or(1),
        })
    }

    /// Appends every occurrence in `hay` to `hits`, grouped by lane (not sorted).
    pub(super) fn find_all(&self, hay: &[u8], hits: &mut Vec<Hit>) {
        if hay.len() < MIN_LANE_SCAN {
            let mut state = 0;
            for (at, &b) in hay.iter().enumerate() {
                state = self.step(state, b);
                if state >= self.first_match {
                    self.report(state, at + 1, hits);
                }
            }
            return;
        }
        let lane_len = hay.len() / LANES;
        let starts: [usize; LANES] = std::array::from_fn(|lane| lane * lane_len);
        let mut states = [0u32; LANES];
        for (state, &start) in states.iter_mut().zip(&starts) {
            // Run in over the bytes before the lane that a literal ending in it may cover.
            for &b in &hay[start.saturating_sub(self.max_len - 1)..start] {
                *state = self.step(*state, b);
            }
        }
        for offset in 0..lane_len {
            let mut any = false;
            for (state, &start) in states.iter_mut().zip(&starts) {
                *state = self.step(*state, hay[start + offset]);
                any |= *state >= self.first_match;
            }
            if any {
                for (&state, &start) in states.iter().zip(&starts) {
                    if state >= self.first_match {
                        self.report(state, start + offset + 1, hits);
                    }
                }
            }
        }
        // The last lane also takes the remainder.
        let mut state = states[LANES - 1];
        for (at, &b) in hay.iter().enumerate().skip(LANES * lane_len) {
            state = self.step(state, b);
            if state >= self.first_match {
                self.report(state, at + 1, hits);
            }
        }
    }

    #[inline]
    fn step(&self, state: u32, b: u8) -> u32 {
        self.table[state as usize + usize::from(self.class[usize::from(b)])]
    }

    /// Reports the literals of matching `state`, which ends at `end`.
    fn report(&self, state: u32, end: usize, hits: &mut Vec<Hit>) {
        let index = (state - self.first_match) as usize / self.classes;
        for &literal in self.outputs.get(index).map_or(&[][..], Vec::as_slice) {
            if let Some(&len) = self.lens.get(literal) {
                hits.push((end - len, end, literal));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use aho_corasick::{AhoCorasickBuilder, MatchKind};
    use proptest::prelude::*;

    use super::*;

    fn reference(literals: &[&str], hay: &str) -> Vec<Hit> {
        let ac = AhoCorasickBuilder::new().ascii_case_insensitive(true).match_kind(MatchKind::Standard).build(literals).unwrap();
        let mut hits: Vec<Hit> = ac.find_overlapping_iter(hay).map(|m| (m.start(), m.end(), m.pattern().as_usize())).collect();
        hits.sort_unstable();
        hits
    }

    fn found(anchors: &Anchors, hay: &str) -> Vec<Hit> {
        let mut hits = Vec::new();
        anchors.find_all(hay.as_bytes(), &mut hits);
        hits.sort_unstable();
        hits
    }

    const LITERALS: &[&str] = &["user ", "user:", "us", "ignore", "gnore all", "<|", "||", "sys", "system", "a"];

    #[test]
    fn finds_every_occurrence_across_lanes() {
        let anchors = Anchors::new(LITERALS).unwrap();
        let unit = "x USER: Ignore ALL <|sys||tem|> ";
        for reps in [1, 3, 9, 40, 200] {
            let hay = unit.repeat(reps);
            assert_eq!(found(&anchors, &hay), reference(LITERALS, &hay), "{reps}");
        }
        assert!(Anchors::new(&["", "a"]).is_err());
        assert!(Anchors::new(&["é"]).is_err());
    }

    proptest! {
        #[test]
        fn matches_aho_corasick(hay in "[ a-zA-Z:|<]{0,700}") {
            let anchors = Anchors::new(LITERALS).unwrap();
            prop_assert_eq!(found(&anchors, &hay), reference(LITERALS, &hay));
        }
    }
}
