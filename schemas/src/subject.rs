//! The subject scheme of the log, kept in one place.
//!
//! ```text
//! sync.<space>.<app>.<table>     client record changes (RecordChanged)
//! space.<space>.members          membership events (SpaceCreated, Member*, SpaceDeleted)
//! space.<space>.visibility       visibility events (reserved)
//! ```
//!
//! Every token taken from outside (space, app and table names) goes through
//! [`escape_token`], so `.`, `*`, `>`, whitespace or an empty string can never change
//! the meaning of a subject: the escape is injective and its output only contains
//! `[A-Za-z0-9_-~]`.

/// Subjects the log stream captures.
pub const STREAM_SUBJECTS: [&str; 2] = ["sync.>", "space.>"];

/// Subject of a record change.
pub fn change_subject(space_id: &str, app_id: &str, table: &str) -> String {
    // Written in one buffer: every published and every projected change computes it.
    let mut out = String::with_capacity(8 + space_id.len() + app_id.len() + table.len());
    out.push_str("sync");
    for token in [space_id, app_id, table] {
        out.push('.');
        push_escaped(&mut out, token);
    }
    out
}

/// Subject of a space's membership events.
pub fn membership_subject(space_id: &str) -> String {
    format!("space.{}.members", escape_token(space_id))
}

/// Every space's membership events (what each gateway's membership view follows).
pub const MEMBERSHIP_SUBJECTS: &str = "space.*.members";

/// Escapes one subject token. Bytes outside `[A-Za-z0-9_-]` become `~XX` (upper-case
/// hex of each UTF-8 byte); the empty string becomes a lone `~`, which no non-empty
/// input can produce.
pub fn escape_token(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len().max(1));
    push_escaped(&mut out, raw);
    out
}

/// Appends [`escape_token`] of `raw` to `out`.
fn push_escaped(out: &mut String, raw: &str) {
    if raw.is_empty() {
        out.push('~');
        return;
    }
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push('~');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

/// Inverse of [`escape_token`]; `None` for a token it cannot have produced.
pub fn unescape_token(token: &str) -> Option<String> {
    if token == "~" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'~' => {
                let hi = hex_val(*bytes.get(i + 1)?)?;
                let lo = hex_val(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok().filter(|s| !s.is_empty())
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_tokens_stay_one_token() {
        for raw in [
            "a.b",
            "*",
            ">",
            "a b",
            "",
            "tab\there",
            "~",
            "x~41",
            "ünï",
            "a.>",
        ] {
            let token = escape_token(raw);
            assert!(!token.is_empty());
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'~'),
                "{raw:?} escaped to {token:?}"
            );
            assert_eq!(unescape_token(&token).as_deref(), Some(raw), "{raw:?}");
        }
    }

    #[test]
    fn escape_is_injective_on_lookalikes() {
        let inputs = ["a.b", "a~2Eb", "a_b", "a-b", "a b", ""];
        let escaped: std::collections::HashSet<_> =
            inputs.iter().map(|s| escape_token(s)).collect();
        assert_eq!(escaped.len(), inputs.len());
    }

    #[test]
    fn change_subject_has_exactly_four_tokens() {
        let subject = change_subject("sp.ace", "*", "> x");
        assert_eq!(subject.split('.').count(), 4);
        assert!(subject.starts_with("sync."));
        assert!(!subject.contains('*') && !subject.contains('>') && !subject.contains(' '));
        let tokens: Vec<_> = subject.split('.').skip(1).collect();
        assert_eq!(
            tokens,
            [
                escape_token("sp.ace"),
                escape_token("*"),
                escape_token("> x")
            ]
        );
        assert_eq!(change_subject("", "a", ""), "sync.~.a.~");
    }

    #[test]
    fn plain_ids_are_readable() {
        assert_eq!(change_subject("s1", "todo", "tasks"), "sync.s1.todo.tasks");
    }
}
