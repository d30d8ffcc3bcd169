//! Strings that come from the target or from other tenants (argv, code object and file names,
//! source lines, cgroup paths) made safe for where leakprobe writes them: a Prometheus label
//! value (one `"` or newline would end the value and forge series for another namespace) and a
//! terminal (escape sequences would rewrite what the person on call reads). Pure.

use std::borrow::Cow;

/// Longest label value exported; longer ones are cut at a character boundary and marked `…`.
pub const MAX_LABEL_CHARS: usize = 256;

/// `s` as the inside of a label value of the Prometheus / OpenMetrics text format: `\`, `"` and
/// newlines escaped as the format says, every other control character dropped, cut to
/// `MAX_LABEL_CHARS`.
pub fn label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_LABEL_CHARS + 8));
    for (i, c) in s.chars().enumerate() {
        if i == MAX_LABEL_CHARS {
            out.push('…');
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// `s` without control characters (C0, DEL, C1: ESC and CSI start terminal sequences), each
/// shown as `?`, for text meant for a terminal. Borrowed when there is nothing to strip.
pub fn terminal(s: &str) -> Cow<'_, str> {
    replace_controls(s, |c| c.is_control())
}

/// A rendered text (several lines) for a terminal: like `terminal`, but its own line breaks kept.
/// Renderers pass their whole output through it, so no string from the target is missed.
pub fn terminal_lines(s: String) -> String {
    match replace_controls(&s, |c| c.is_control() && c != '\n') {
        Cow::Borrowed(_) => s,
        Cow::Owned(replaced) => replaced,
    }
}

/// `s` with every character `unsafe_char` says is unsafe shown as `?`; borrowed when none is.
fn replace_controls(s: &str, unsafe_char: impl Fn(char) -> bool) -> Cow<'_, str> {
    if s.chars().any(&unsafe_char) {
        Cow::Owned(s.chars().map(|c| if unsafe_char(c) { '?' } else { c }).collect())
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_value_cannot_end_itself_or_start_a_line() {
        let hostile = "x\"} 1\nleakprobe_forged{namespace=\"prod\"} 60\n#";
        let v = label_value(hostile);
        assert_eq!(v, "x\\\"} 1\\nleakprobe_forged{namespace=\\\"prod\\\"} 60\\n#");
        // Every quote inside is escaped, and no raw newline is left.
        assert!(!v.contains('\n'));
        assert!(v.match_indices('"').all(|(i, _)| v[..i].ends_with('\\')));
        assert_eq!(label_value("a\\b"), "a\\\\b");
        assert_eq!(label_value("tab\there\u{1b}[31m"), "tabhere[31m");
    }

    #[test]
    fn a_label_value_is_bounded_in_characters_not_bytes() {
        let long = "é".repeat(1000);
        let v = label_value(&long);
        assert_eq!(v.chars().count(), MAX_LABEL_CHARS + 1);
        assert!(v.ends_with('…'));
        assert_eq!(label_value("uvicorn"), "uvicorn");
    }

    #[test]
    fn terminal_text_loses_its_escape_sequences() {
        assert_eq!(terminal("handler\u{1b}]0;owned\u{7}"), "handler?]0;owned?");
        assert_eq!(terminal("line\r\nnext\u{9b}2J"), "line??next?2J");
        assert!(matches!(terminal("/srv/app/main.py"), Cow::Borrowed(_)));
        assert_eq!(terminal_lines("a\u{1b}[2J\nb\r\n".into()), "a?[2J\nb?\n");
    }
}
