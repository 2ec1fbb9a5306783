//! An uploaded recording (asciicast v2) through the parser and the replay sanitizer.
//!
//! Properties: nothing panics; the visible rendering holds no control character but line
//! ends and tabs, and no bidirectional control; the raw rendering holds no operating system
//! command or device control string.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis_audit::asciicast::Cast;
use portcullis_audit::sanitize::{Render, Sanitizer};

fn check_visible(text: &str) {
    for c in text.chars() {
        let bad = (c.is_control() && c != '\n' && c != '\t' && c != '\r')
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c);
        assert!(!bad, "visible rendering passed {c:?} in {text:?}");
    }
    // A carriage return only ever ends a line.
    for (i, _) in text.match_indices('\r') {
        assert_eq!(
            text.as_bytes().get(i + 1),
            Some(&b'\n'),
            "bare CR in {text:?}"
        );
    }
}

fn check_raw(text: &str) {
    for seq in ["\x1b]", "\x1bP", "\u{9d}", "\u{90}"] {
        assert!(
            !text.contains(seq),
            "raw rendering passed {seq:?} in {text:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(cast) = Cast::parse(data) else {
        return;
    };
    let _ = cast.output();
    let _ = cast.duration();
    for (mode, check) in [
        (Render::Visible, check_visible as fn(&str)),
        (Render::Raw, check_raw as fn(&str)),
    ] {
        let mut s = Sanitizer::new(mode);
        let mut out = String::new();
        for e in cast.events.iter().filter(|e| e.code == "o") {
            out.push_str(&s.render(e.data.as_bytes()));
        }
        out.push_str(&s.finish());
        check(&out);
    }
});
