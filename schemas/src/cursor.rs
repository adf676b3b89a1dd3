//! Cursors: opaque, URL-safe positions in the log.
//!
//! A cursor is `s` followed by the stream sequence as 16 lower-case hex digits. Fixed
//! width makes string order equal log order, and the leading letter sorts after every
//! digit, so every legacy ISO-8601 timestamp (`1970-01-01T00:00:00.000Z`, `2026-…`)
//! sorts before every cursor, as clients that keep "the smallest cursor" require.

use chrono::{DateTime, Utc};

const PREFIX: char = 's';

/// Bytes of an encoded cursor: the prefix and 16 hex digits.
pub const ENCODED_LEN: usize = 17;

/// A position in the log: the stream sequence of the last event seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Cursor(pub u64);

impl Cursor {
    pub const START: Cursor = Cursor(0);

    pub fn seq(self) -> u64 {
        self.0
    }

    pub fn encode(self) -> String {
        self.as_text(&mut [0; ENCODED_LEN]).to_owned()
    }

    /// The encoded cursor, written into `buf` (no allocation: a page of 1000 changes
    /// writes one cursor per change).
    pub fn as_text(self, buf: &mut [u8; ENCODED_LEN]) -> &str {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        buf[0] = PREFIX as u8;
        for (i, digit) in buf[1..].iter_mut().enumerate() {
            *digit = HEX[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        std::str::from_utf8(buf).expect("a prefix letter and hex digits are ASCII")
    }

    pub fn decode(raw: &str) -> Option<Cursor> {
        let hex = raw.strip_prefix(PREFIX)?;
        if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok().map(Cursor)
    }
}

/// Serialized as its encoded text.
impl serde::Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_text(&mut [0; ENCODED_LEN]))
    }
}

/// What a client sent as `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Nothing, or an empty string: from the start of the log.
    Start,
    /// A cursor: strictly after that position.
    After(Cursor),
    /// A legacy ISO-8601 timestamp: from the first event logged at or after it.
    Timestamp(DateTime<Utc>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`since` is neither a cursor nor an ISO-8601 timestamp")]
pub struct CursorError;

impl Since {
    pub fn parse(raw: Option<&str>) -> Result<Since, CursorError> {
        let raw = match raw.map(str::trim) {
            None | Some("") => return Ok(Since::Start),
            Some(raw) => raw,
        };
        if let Some(cursor) = Cursor::decode(raw) {
            return Ok(Since::After(cursor));
        }
        crate::time::parse_instant(raw)
            .map(Since::Timestamp)
            .ok_or(CursorError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_prefix_and_sixteen_hex_digits() {
        assert_eq!(Cursor(0).encode(), "s0000000000000000");
        assert_eq!(Cursor(0xabc).encode(), "s0000000000000abc");
        assert_eq!(Cursor(u64::MAX).encode(), "sffffffffffffffff");
        assert_eq!(Cursor(0x0123_4567_89ab_cdef).encode(), "s0123456789abcdef");
        assert_eq!(
            serde_json::to_string(&Cursor(0x1f)).unwrap(),
            "\"s000000000000001f\""
        );
    }

    #[test]
    fn round_trips() {
        for seq in [0, 1, 42, 1 << 40, u64::MAX] {
            assert_eq!(Cursor::decode(&Cursor(seq).encode()), Some(Cursor(seq)));
        }
    }

    #[test]
    fn string_order_is_log_order() {
        let seqs = [
            0u64,
            1,
            9,
            10,
            15,
            16,
            255,
            256,
            4095,
            1 << 20,
            1 << 33,
            u64::MAX,
        ];
        for a in seqs {
            for b in seqs {
                assert_eq!(
                    a.cmp(&b),
                    Cursor(a).encode().cmp(&Cursor(b).encode()),
                    "{a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn every_timestamp_sorts_before_every_cursor() {
        let stamps = [
            "1970-01-01T00:00:00.000Z",
            "2026-05-01T10:05:30.120Z",
            "9999-12-31T23:59:59.999Z",
            "+10000-01-01T00:00:00Z",
            "2026-05-01",
        ];
        for stamp in stamps {
            assert!(stamp < Cursor(0).encode().as_str());
        }
    }

    #[test]
    fn cursors_are_url_safe() {
        let c = Cursor(u64::MAX).encode();
        assert!(c.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn since_accepts_cursor_timestamp_and_empty() {
        assert_eq!(Since::parse(None), Ok(Since::Start));
        assert_eq!(Since::parse(Some("")), Ok(Since::Start));
        assert_eq!(
            Since::parse(Some(&Cursor(7).encode())),
            Ok(Since::After(Cursor(7)))
        );
        assert!(matches!(
            Since::parse(Some("1970-01-01T00:00:00.000Z")),
            Ok(Since::Timestamp(_))
        ));
    }

    #[test]
    fn since_rejects_garbage() {
        for raw in [
            "garbage",
            "s123",
            "sZZZZZZZZZZZZZZZZ",
            "S000000000000000a",
            "-1",
            "2026-13-45",
        ] {
            assert_eq!(Since::parse(Some(raw)), Err(CursorError), "{raw}");
        }
    }
}
