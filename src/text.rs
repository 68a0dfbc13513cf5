//! Caller-supplied text in messages: bounded and escaped, so that an error or a log line never
//! reflects unbounded input, terminal escapes or line breaks.

/// How many characters of a caller's value a message may quote.
const EXCERPT_CHARS: usize = 32;

/// How many characters of a caller identity a log line may quote (SPIFFE ids are long).
pub const IDENTITY_CHARS: usize = 256;

/// At most 32 characters of `value`, control characters escaped, `…` when cut.
pub fn excerpt(value: &str) -> String {
    bounded(value, EXCERPT_CHARS)
}

/// At most `max` characters of `value`, control characters escaped, `…` when cut.
pub fn bounded(value: &str, max: usize) -> String {
    let mut out: String = value
        .chars()
        .take(max)
        .flat_map(char::escape_debug)
        .collect();
    if value.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// Whether `value` has a character that has no place in a name, key or address: C0/C1 controls
/// (line breaks, ESC of terminal sequences, NUL), and the Unicode bidi overrides that make text
/// display differently from what it is.
pub fn has_control(value: &str) -> bool {
    value.chars().any(|c| {
        c.is_control()
            || ('\u{202A}'..='\u{202E}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_bounded_and_escaped() {
        assert_eq!(excerpt("abc"), "abc");
        assert_eq!(excerpt("a\u{1b}[31mred\n"), "a\\u{1b}[31mred\\n");
        let long = "x".repeat(1_000_000);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
        assert!(e.ends_with('…'));
    }

    #[test]
    fn control_characters_are_found() {
        assert!(!has_control("Jane O'Neil-Smith, 12 Rue d'Été"));
        for bad in [
            "a\nb",
            "\u{1b}[2J",
            "nul\0",
            "\u{85}",
            "rtl\u{202E}gnp.exe",
            "\u{2066}x",
        ] {
            assert!(has_control(bad), "{bad:?}");
        }
    }
}
