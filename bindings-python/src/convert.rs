//! Conversions shared by every class: enum strings, JSON, datetimes, ids and
//! integer ranges. Every failure here is a core `validation` error so it maps
//! through the one error-mapping function like any other.

use mailsync::Error;
use mailsync::model::{MailboxId, ProfileId};
use pyo3::prelude::*;
use pyo3::types::PyAny;
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The serde snake_case string of a unit enum variant (e.g. `"start_tls"`).
pub fn enum_str<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

/// Parses a serde snake_case string into a unit enum; `validation` naming `field`.
pub fn parse_enum<T: DeserializeOwned>(field: &str, value: &str) -> Result<T, Error> {
    serde_json::from_value(serde_json::Value::String(value.to_owned()))
        .map_err(|e| Error::validation(field, format!("{value:?} is not allowed: {e}")))
}

/// An integer from Python checked against a range; `validation` naming `field`.
pub fn int_in<T: TryFrom<i64>>(field: &str, value: i64, min: i64, max: i64) -> Result<T, Error> {
    if value < min || value > max {
        return Err(Error::validation(
            field,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    T::try_from(value).map_err(|_| Error::validation(field, format!("{value} is out of range")))
}

/// A profile id given as text; `validation` naming `profile_id`.
pub fn profile_id(value: &str) -> Result<ProfileId, Error> {
    ProfileId::parse(value)
        .map_err(|_| Error::validation("profile_id", format!("{value:?} is not a valid id")))
}

/// A mailbox id given as text; `validation` naming `mailbox_id`.
pub fn mailbox_id(value: &str) -> Result<MailboxId, Error> {
    MailboxId::parse(value)
        .map_err(|_| Error::validation("mailbox_id", format!("{value:?} is not a valid id")))
}

/// The core's serde JSON of a record (secrets are skipped by the core).
pub fn to_json<T: Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| {
        Error::new(
            mailsync::ErrorCode::Internal,
            format!("cannot encode record: {e}"),
        )
    })
}

/// The core's serde JSON of a record as Python dicts and lists.
pub fn to_dict<'py, T: Serialize>(py: Python<'py>, value: &T) -> PyResult<Bound<'py, PyAny>> {
    let text = to_json(value).map_err(crate::errors::to_py_err)?;
    py.import("json")?.call_method1("loads", (text,))
}

/// An aware `datetime.datetime` (UTC) from an `OffsetDateTime`.
pub fn to_datetime<'py>(py: Python<'py>, value: &OffsetDateTime) -> PyResult<Bound<'py, PyAny>> {
    let text = value.format(&Rfc3339).map_err(|e| {
        crate::errors::to_py_err(Error::new(mailsync::ErrorCode::Internal, e.to_string()))
    })?;
    // Python 3.10's fromisoformat does not accept a trailing "Z".
    let text = match text.strip_suffix('Z') {
        Some(rest) => format!("{rest}+00:00"),
        None => text,
    };
    py.import("datetime")?
        .getattr("datetime")?
        .call_method1("fromisoformat", (text,))
}

/// An `OffsetDateTime` from an aware `datetime.datetime`; naive values are refused.
pub fn from_datetime(field: &str, value: &Bound<'_, PyAny>) -> PyResult<OffsetDateTime> {
    let datetime = value.py().import("datetime")?.getattr("datetime")?;
    if !value.is_instance(&datetime)? {
        return Err(crate::errors::to_py_err(Error::validation(
            field,
            "must be a datetime.datetime",
        )));
    }
    if value.getattr("tzinfo")?.is_none() || value.call_method0("utcoffset")?.is_none() {
        return Err(crate::errors::to_py_err(Error::validation(
            field,
            "must be timezone-aware (e.g. datetime.now(timezone.utc))",
        )));
    }
    let text: String = value.call_method0("isoformat")?.extract()?;
    OffsetDateTime::parse(&text, &Rfc3339).map_err(|e| {
        crate::errors::to_py_err(Error::validation(
            field,
            format!("cannot read {text:?}: {e}"),
        ))
    })
}

/// Python `repr()` of a string (quotes and escapes as Python would).
pub fn py_str_repr(value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
    format!("'{escaped}'")
}
