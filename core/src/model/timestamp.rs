//! An instant in UTC, the one time type of the public API.
//!
//! A newtype over [`time::OffsetDateTime`], so that every binding maps one
//! type once (a Python `datetime`, a JS `Date`, a Kotlin `Instant`) rather
//! than each field on its own. It serializes as RFC 3339.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

/// An instant in UTC.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(OffsetDateTime::UNIX_EPOCH);

    /// From an `OffsetDateTime` (converted to UTC).
    pub fn from_datetime(at: OffsetDateTime) -> Timestamp {
        Timestamp(at.to_offset(time::UtcOffset::UTC))
    }

    /// The current system time. Library code reads time through
    /// [`crate::Clock`] instead, so tests can control it.
    pub fn now_utc() -> Timestamp {
        Timestamp(OffsetDateTime::now_utc())
    }

    /// From milliseconds since the Unix epoch; out-of-range values clamp to
    /// the representable range.
    pub fn from_unix_millis(millis: i64) -> Timestamp {
        let nanos = i128::from(millis) * 1_000_000;
        OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .map(Timestamp)
            .unwrap_or(if millis < 0 {
                Timestamp(time::PrimitiveDateTime::MIN.assume_utc())
            } else {
                Timestamp(time::PrimitiveDateTime::MAX.assume_utc())
            })
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(self) -> i64 {
        (self.0.unix_timestamp_nanos() / 1_000_000) as i64
    }

    /// The underlying `OffsetDateTime` (UTC).
    pub fn to_datetime(self) -> OffsetDateTime {
        self.0
    }

    /// This instant plus `d`, saturating at the end of representable time.
    pub fn plus(self, d: Duration) -> Timestamp {
        let d = time::Duration::try_from(d).unwrap_or(time::Duration::MAX);
        self.0
            .checked_add(d)
            .map(Timestamp)
            .unwrap_or(Timestamp(time::PrimitiveDateTime::MAX.assume_utc()))
    }

    /// This instant minus `d`, saturating at the start of representable time.
    pub fn minus(self, d: Duration) -> Timestamp {
        let d = time::Duration::try_from(d).unwrap_or(time::Duration::MAX);
        self.0
            .checked_sub(d)
            .map(Timestamp)
            .unwrap_or(Timestamp(time::PrimitiveDateTime::MIN.assume_utc()))
    }

    /// How long after `earlier` this instant is (zero if it is not after).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::try_from(self.0 - earlier.0).unwrap_or(Duration::ZERO)
    }

    /// RFC 3339 to the second, e.g. `2026-12-02T04:41:22Z`.
    pub fn to_rfc3339_seconds(self) -> String {
        let at = self.0.replace_nanosecond(0).unwrap_or(self.0);
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| at.to_string())
    }
}

impl From<OffsetDateTime> for Timestamp {
    fn from(at: OffsetDateTime) -> Self {
        Timestamp::from_datetime(at)
    }
}

impl From<Timestamp> for OffsetDateTime {
    fn from(at: Timestamp) -> Self {
        at.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339_seconds())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self
            .0
            .format(&time::format_description::well_known::Rfc3339)
        {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{:?}", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        time::serde::rfc3339::serialize(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        time::serde::rfc3339::deserialize(deserializer).map(Timestamp::from_datetime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_round_trips() {
        let t = Timestamp::from_unix_millis(1_700_000_000_123);
        assert_eq!(t.unix_millis(), 1_700_000_000_123);
        assert_eq!(
            t.plus(Duration::from_secs(1)).since(t),
            Duration::from_secs(1)
        );
        assert_eq!(t.since(t.plus(Duration::from_secs(1))), Duration::ZERO);
        let far = t.plus(Duration::from_secs(u64::MAX));
        assert!(far > t);
        assert_eq!(
            Timestamp::from_unix_millis(i64::MAX).plus(Duration::MAX),
            far
        );
        // The ends of time: saturate, never panic or wrap.
        let start = t.minus(Duration::MAX);
        assert!(start < t);
        assert_eq!(start.minus(Duration::from_secs(1)), start);
        assert_eq!(far.plus(Duration::from_secs(1)), far);
        assert_eq!(start.since(far), Duration::ZERO);
        assert!(far.since(start) > Duration::from_secs(365 * 24 * 3600 * 9000));
        for secs in [1_000_000_000_000, u64::MAX] {
            let d = Duration::from_secs(secs);
            assert_eq!(t.plus(d), far);
            assert_eq!(t.minus(d), start);
            assert!(far.minus(d) <= far && start.plus(d) >= start);
        }
        assert_eq!(Timestamp::from_unix_millis(i64::MIN), start);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2023-11-14T22:13:20.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        assert_eq!(t.to_string(), "2023-11-14T22:13:20Z");
    }
}
