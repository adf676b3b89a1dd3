//! Timestamps as instants: parsing the ISO-8601 forms clients send, and the clock-skew
//! rule applied to field timestamps.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeDelta, Utc};

/// How far ahead of the server clock a client timestamp may be before it is clamped.
pub const MAX_FUTURE_SKEW: TimeDelta = TimeDelta::minutes(5);

/// Parses an ISO-8601 instant: RFC 3339 (`T`, `t` or space separator, `Z` or any
/// offset, any fraction), an offset without colon (`+0200`), a date-time without
/// offset (taken as UTC) or a bare date (midnight UTC). Comparison is by instant, so
/// `10:00:00+02:00` equals `08:00:00Z`.
pub fn parse_instant(raw: &str) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    // Every ISO-8601 calendar form starts with a 4-digit year; this also keeps
    // chrono from accepting oddities such as signed years.
    if raw.len() < 10 || !raw.as_bytes()[..4].iter().all(u8::is_ascii_digit) {
        return None;
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::parse_from_str(raw, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(raw, fmt) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// Truncates to microseconds, the precision PostgreSQL keeps, so an instant compares
/// the same in Rust, in the stored event and in the database.
pub fn truncate_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// The clock-skew rule: a timestamp more than [`MAX_FUTURE_SKEW`] ahead of the moment
/// the server received it is replaced by that moment, so one client with a wrong clock
/// cannot win every future conflict.
pub fn clamp_to_receipt(at: DateTime<Utc>, received_at: DateTime<Utc>) -> DateTime<Utc> {
    if at > received_at + MAX_FUTURE_SKEW {
        received_at
    } else {
        at
    }
}

/// Canonical text form of an instant: fixed-width microseconds and `Z`, so string order
/// equals time order for years 0000–9999.
pub fn canonical(t: DateTime<Utc>) -> String {
    if (0..=9999).contains(&t.year()) {
        // The same text as the format below, several times faster to write (the
        // projector writes it for every field of every change).
        t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    } else {
        t.format(CANONICAL_FORMAT).to_string()
    }
}

const CANONICAL_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_text_is_the_fixed_width_format() {
        for raw in [
            "2026-05-01T10:00:00Z",
            "2026-05-01T10:00:00.5+02:00",
            "0001-01-01T00:00:00.000001Z",
            "9999-12-31T23:59:59.999999Z",
            "1970-01-01T00:00:00.123456789Z",
        ] {
            let t = at(raw);
            assert_eq!(
                canonical(t),
                t.format(CANONICAL_FORMAT).to_string(),
                "{raw}"
            );
        }
    }

    fn at(raw: &str) -> DateTime<Utc> {
        parse_instant(raw).unwrap_or_else(|| panic!("{raw} did not parse"))
    }

    #[test]
    fn equal_instants_in_different_forms_compare_equal() {
        let base = at("2026-05-01T08:00:00Z");
        for form in [
            "2026-05-01T10:00:00+02:00",
            "2026-05-01T10:00:00.000+0200",
            "2026-05-01 08:00:00Z",
            "2026-05-01t08:00:00.000000z",
            "2026-05-01T08:00:00",
            "2026-05-01T08:00:00.000",
        ] {
            assert_eq!(at(form), base, "{form}");
        }
        assert_eq!(at("2026-05-01"), at("2026-05-01T00:00:00Z"));
    }

    #[test]
    fn string_order_differs_from_instant_order() {
        // As strings "…09:00:00+02:00" > "…08:30:00Z", as instants it is earlier.
        assert!(at("2026-05-01T09:00:00+02:00") < at("2026-05-01T08:30:00Z"));
    }

    #[test]
    fn garbage_is_rejected() {
        for raw in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "12345",
            "2026-05-01Tnoon",
            "+2026-05-01",
        ] {
            assert_eq!(parse_instant(raw), None, "{raw}");
        }
    }

    #[test]
    fn future_timestamps_are_clamped_to_receipt() {
        let received = at("2026-05-01T12:00:00Z");
        assert_eq!(
            clamp_to_receipt(at("2026-05-01T12:04:59Z"), received),
            at("2026-05-01T12:04:59Z")
        );
        assert_eq!(
            clamp_to_receipt(at("2026-05-01T12:05:00Z"), received),
            at("2026-05-01T12:05:00Z")
        );
        assert_eq!(
            clamp_to_receipt(at("2026-05-01T12:05:01Z"), received),
            received
        );
        assert_eq!(
            clamp_to_receipt(at("2099-01-01T00:00:00Z"), received),
            received
        );
        assert_eq!(
            clamp_to_receipt(at("2001-01-01T00:00:00Z"), received),
            at("2001-01-01T00:00:00Z")
        );
    }

    #[test]
    fn canonical_form_sorts_like_time() {
        let a = canonical(at("2026-05-01T10:00:00.5Z"));
        let b = canonical(at("2026-05-01T10:00:00.45Z"));
        assert_eq!(a, "2026-05-01T10:00:00.500000Z");
        assert!(b < a);
    }
}
