//! Whether the end of a text could still be the start of a value a detector finds.
//!
//! A stream released before its line ends (live output that has gone quiet) may stop in the
//! middle of a value: `alice@exa` now, `mple.com` later. Each detector's pattern is compiled a
//! second time into a lazy DFA ([`regex_automata::hybrid`], the engine inside `regex`), which
//! is run anchored from a start position to the end of the text: if it has not reached its
//! dead state there and some next byte keeps it alive, more text could complete a match, and
//! the text from that position is a possible value. Whatever the automaton cannot answer (a pattern it cannot compile, a
//! non-ASCII byte where a Unicode word boundary matters, a cache that gives up) counts as a
//! possible value: the caller masks rather than passes.

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::util::start;
use regex_automata::Anchored;

/// Size of each automaton's state cache.
const CACHE_BYTES: usize = 2 << 20;

/// The prefix automaton of one pattern (`None`: the pattern could not be compiled for it, so
/// every text is a possible start).
pub struct Prefix {
    dfa: Option<DFA>,
}

impl Prefix {
    /// Compile `pattern` for prefix questions.
    pub fn new(pattern: &str) -> Self {
        let dfa = DFA::builder()
            .configure(
                DFA::config()
                    .unicode_word_boundary(true)
                    .cache_capacity(CACHE_BYTES),
            )
            .build(pattern)
            .map_err(|e| tracing::debug!(error = %e, "a detector pattern has no prefix automaton; quiet output is masked whole"))
            .ok();
        Prefix { dfa }
    }

    /// A cache for [`Prefix::could_grow`] (one per question batch).
    pub fn cache(&self) -> Option<Cache> {
        self.dfa.as_ref().map(DFA::create_cache)
    }

    /// Whether a match that starts at the beginning of `text` (after the byte `before`) could
    /// still be unfinished at its end.
    pub fn could_grow(&self, cache: Option<&mut Cache>, before: Option<u8>, text: &[u8]) -> bool {
        let (Some(dfa), Some(cache)) = (&self.dfa, cache) else {
            return true;
        };
        let config = start::Config::new()
            .anchored(Anchored::Yes)
            .look_behind(before);
        let Ok(mut state) = dfa.start_state(cache, &config) else {
            return true;
        };
        for &b in text {
            match dfa.next_state(cache, state, b) {
                Ok(next) => state = next,
                Err(_) => return true,
            }
            if state.is_quit() {
                return true;
            }
            if state.is_dead() {
                return false;
            }
        }
        // Matches are reported one byte late, so a state can be alive only to report a match
        // that already ended: it could grow only if some next byte keeps it alive. (A byte
        // the automaton quits on is not counted here: it is judged when it arrives.)
        (0..=u8::MAX).any(|b| {
            dfa.next_state(cache, state, b)
                .map_or(true, |next| !next.is_dead() && !next.is_quit())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfinished_values_could_grow_and_other_text_could_not() {
        let email = Prefix::new(r"(?i)[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}");
        let mut cache = email.cache();
        for text in ["alice", "alice@exa", "alice@example.", "alice@example.com"] {
            assert!(
                email.could_grow(cache.as_mut(), None, text.as_bytes()),
                "{text}"
            );
        }
        for text in ["$ ", "alice ", "a:b", "alice@example.com "] {
            assert!(
                !email.could_grow(cache.as_mut(), None, text.as_bytes()),
                "{text}"
            );
        }
        let ssn = Prefix::new(r"\b\d{3}-\d{2}-\d{4}\b");
        let mut cache = ssn.cache();
        assert!(ssn.could_grow(cache.as_mut(), Some(b' '), b"123-4"));
        assert!(!ssn.could_grow(cache.as_mut(), Some(b'7'), b"123-4"));
        assert!(!ssn.could_grow(cache.as_mut(), Some(b' '), b"12x"));
        // Non-ASCII text where a Unicode word boundary matters: not known, so possible.
        assert!(ssn.could_grow(cache.as_mut(), Some(b' '), "12\u{e9}".as_bytes()));
    }
}
