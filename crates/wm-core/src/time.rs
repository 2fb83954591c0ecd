//! A UTC timestamp small enough to sit in every entity (8 bytes), with RFC 3339 text.

use std::cmp::Ordering;
use std::fmt;
use std::num::NonZeroI64;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Nanoseconds since the Unix epoch, UTC: years 1678 to 2262.
///
/// Runtimes report times as RFC 3339 text (docker, kubelet) or protobuf timestamps (containerd);
/// both convert losslessly into this.
///
/// Stored with its sign bit flipped (`nanos ^ i64::MIN`) in a `NonZeroI64`, so that an
/// `Option<Timestamp>` (how every entity holds its times) uses the zero for `None` and is 8 bytes
/// too. The one instant this cannot hold, `i64::MIN` nanoseconds, is stored as the next one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timestamp(NonZeroI64);

/// The stored form of the earliest timestamp held: `i64::MIN + 1` nanoseconds, flipped, is 1.
const EARLIEST: NonZeroI64 = match NonZeroI64::new(1) {
    Some(one) => one,
    None => NonZeroI64::MAX,
};

impl Ord for Timestamp {
    fn cmp(&self, other: &Self) -> Ordering {
        self.unix_nanos().cmp(&other.unix_nanos())
    }
}

impl PartialOrd for Timestamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Timestamp").field(&self.unix_nanos()).finish()
    }
}

/// Text that is not an RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid RFC 3339 timestamp {text:?}")]
pub struct TimestampError {
    /// The rejected text.
    pub text: String,
}

const NANOS_PER_SEC: i64 = 1_000_000_000;

impl Timestamp {
    /// Returns the system clock's time now (the epoch if the clock is before it).
    pub fn now() -> Self {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Self::from_unix_nanos(i64::try_from(since.as_nanos()).unwrap_or(i64::MAX))
    }

    /// Creates a timestamp from nanoseconds since the Unix epoch; `i64::MIN`, the one value it
    /// cannot hold, becomes `i64::MIN + 1`.
    pub const fn from_unix_nanos(nanos: i64) -> Self {
        match NonZeroI64::new(nanos ^ i64::MIN) {
            Some(stored) => Self(stored),
            None => Self(EARLIEST),
        }
    }

    /// Creates a timestamp from seconds and nanoseconds since the Unix epoch (a protobuf
    /// `Timestamp`), clamped to the range it can hold.
    pub fn from_unix(secs: i64, nanos: i32) -> Self {
        Self::from_unix_nanos(secs.saturating_mul(NANOS_PER_SEC).saturating_add(i64::from(nanos)))
    }

    /// Returns the nanoseconds since the Unix epoch.
    pub const fn unix_nanos(self) -> i64 {
        self.0.get() ^ i64::MIN
    }

    /// Returns the whole seconds since the Unix epoch, rounded down (toward the past).
    pub const fn unix_seconds(self) -> i64 {
        self.unix_nanos().div_euclid(NANOS_PER_SEC)
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, keeping at most nanosecond precision.
    ///
    /// # Errors
    ///
    /// Returns [`TimestampError`] when `text` is not in that form, or names an instant outside
    /// the range a timestamp holds (Docker's "zero time", `0001-01-01T00:00:00Z`, is one).
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimestampError> {
        parse(text.as_bytes()).ok_or_else(|| TimestampError { text: text.to_owned() })
    }
}

fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
}

fn parse(b: &[u8]) -> Option<Timestamp> {
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (hour, minute, second) = (digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // A day the month does not have (`02-31`) is refused, as Go's parser does, rather than
    // rolled over into the next month.
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if day > month_days[usize::try_from(month - 1).ok()?] {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos = 0i64;
    if let Some(frac) = rest.strip_prefix(b".") {
        let len = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        // Keep nanosecond precision; finer digits are dropped.
        for (i, d) in frac[..len].iter().enumerate() {
            if i < 9 {
                nanos = nanos * 10 + i64::from(d - b'0');
            }
        }
        for _ in len..9 {
            nanos *= 10;
        }
        rest = &frac[len..];
    }
    let offset_secs = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let secs = digits(&[*h1, *h2])? * 3600 + digits(&[*m1, *m2])? * 60;
            if *sign == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(Timestamp::from_unix_nanos(secs.checked_mul(NANOS_PER_SEC)?.checked_add(nanos)?))
}

// Howard Hinnant's days-from-civil and its inverse: exact for the proleptic Gregorian calendar.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl fmt::Display for Timestamp {
    /// Writes RFC 3339 in UTC; the fraction only when there is one, without trailing zeros.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.unix_nanos().div_euclid(NANOS_PER_SEC);
        let nanos = self.unix_nanos().rem_euclid(NANOS_PER_SEC);
        let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        write!(f, "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}", sod / 3600, sod % 3600 / 60, sod % 60)?;
        if nanos != 0 {
            let frac = format!("{nanos:09}");
            write!(f, ".{}", frac.trim_end_matches('0'))?;
        }
        f.write_str("Z")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_text_round_trips() {
        for text in
            ["2026-01-01T00:05:00Z", "1970-01-01T00:00:00Z", "2024-02-29T23:59:59.123456789Z", "1969-12-31T23:59:59.5Z"]
        {
            let ts = Timestamp::parse_rfc3339(text).unwrap();
            assert_eq!(ts.to_string(), text);
        }
    }

    #[test]
    fn an_optional_timestamp_is_eight_bytes_and_order_follows_time() {
        assert_eq!(std::mem::size_of::<Option<Timestamp>>(), 8);
        let times = [i64::MIN + 1, -1, 0, 1, i64::MAX].map(Timestamp::from_unix_nanos);
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
        for (t, nanos) in times.iter().zip([i64::MIN + 1, -1, 0, 1, i64::MAX]) {
            assert_eq!(t.unix_nanos(), nanos);
        }
        // The one value not held reads as the next.
        assert_eq!(Timestamp::from_unix_nanos(i64::MIN).unix_nanos(), i64::MIN + 1);
    }

    #[test]
    fn offsets_are_folded_into_utc() {
        let a = Timestamp::parse_rfc3339("2026-01-01T02:00:00+02:00").unwrap();
        let b = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(a, b);
        assert_eq!(b.unix_seconds(), 1_767_225_600);
    }

    #[test]
    fn out_of_range_years_are_errors_and_long_fractions_are_cut_to_nanos() {
        // Docker's "zero time" for a container that never finished: outside 1678..2262.
        assert!(Timestamp::parse_rfc3339("0001-01-01T00:00:00Z").is_err());
        let ts = Timestamp::parse_rfc3339("2026-03-04T05:06:07.1234567891Z").unwrap();
        assert_eq!(ts.unix_nanos() % NANOS_PER_SEC, 123_456_789);
    }

    #[test]
    fn malformed_text_is_an_error_not_a_panic() {
        for text in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-01-01 00:00:00",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00+2",
            "twenty",
            "2026-02-31T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
        ] {
            assert!(Timestamp::parse_rfc3339(text).is_err(), "{text}");
        }
        for leap_day in ["2024-02-29T00:00:00Z", "2000-02-29T00:00:00Z"] {
            assert!(Timestamp::parse_rfc3339(leap_day).is_ok(), "{leap_day}");
        }
    }
}
