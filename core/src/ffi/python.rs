//! pyo3 (Python): how the library's own value types cross into Python, and
//! the type hints the generated stub gives them.
//!
//! Ids are `str`; a [`Timestamp`] is an aware `datetime.datetime` in UTC
//! (a naive one is refused: its meaning would depend on the machine's
//! zone); a [`Secret`] reads as [`Secret::MASK`] and writes as its text; a
//! [`BearerToken`] reads as its text. Enums without data are their
//! snake_case names as `str` (hinted as `typing.Literal[...]`), exactly as
//! in JSON and the other languages.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDateTime, PyString, PyTzInfo};
use pyo3_stub_gen::{PyStubType, TypeInfo};

use crate::error::ErrorCode;
use crate::lifecycle::{Direction, MailboxEventKind};
use crate::model::{
    AlertLevel, ApplicationType, ApprovalStatus, BearerToken, IncomingDelivery, IncomingFilter,
    IncomingProtocol, MailboxId, OutgoingDelivery, ProfileId, PublishingStatus, Secret, Security,
    ServerType, TestOutcome, Timestamp, UserType,
};
use crate::sync::{DeliveryOutcome, IncomingMessage, MailAddress, OutgoingState, RawMessage};

fn hint(name: &str, module: &str) -> TypeInfo {
    TypeInfo {
        name: name.to_owned(),
        source_module: None,
        import: [module.into()].into_iter().collect(),
        type_refs: Default::default(),
    }
}

/// Implements the conversions of a type that crosses as `str`.
macro_rules! string_like {
    ($ty:ty, |$out:ident| $to:expr, |$in:ident| $from:expr) => {
        impl<'py> IntoPyObject<'py> for $ty {
            type Target = PyString;
            type Output = Bound<'py, PyString>;
            type Error = PyErr;

            fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
                (&self).into_pyobject(py)
            }
        }

        impl<'a, 'py> IntoPyObject<'py> for &'a $ty {
            type Target = PyString;
            type Output = Bound<'py, PyString>;
            type Error = PyErr;

            fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
                let $out = self;
                let text: String = $to;
                Ok(PyString::new(py, &text))
            }
        }

        impl<'a, 'py> FromPyObject<'a, 'py> for $ty {
            type Error = PyErr;

            fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
                let $in: String = obj.extract()?;
                Ok($from)
            }
        }

        impl PyStubType for $ty {
            fn type_output() -> TypeInfo {
                hint("builtins.str", "builtins")
            }
        }
    };
}

string_like!(MailboxId, |id| id.as_str().to_owned(), |s| {
    MailboxId::from_host(s)
});
string_like!(ProfileId, |id| id.as_str().to_owned(), |s| {
    ProfileId::from_host(s)
});
string_like!(Secret, |_secret| Secret::MASK.to_owned(), |s| Secret::new(
    s
));
string_like!(
    BearerToken,
    |t| t.expose().to_owned(),
    |s| BearerToken::new(Secret::new(s))
);

impl<'py> IntoPyObject<'py> for Timestamp {
    type Target = PyDateTime;
    type Output = Bound<'py, PyDateTime>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        (&self).into_pyobject(py)
    }
}

impl<'py> IntoPyObject<'py> for &Timestamp {
    type Target = PyDateTime;
    type Output = Bound<'py, PyDateTime>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        let utc = PyTzInfo::utc(py)?.to_owned();
        PyDateTime::from_timestamp(py, self.unix_millis() as f64 / 1000.0, Some(&utc))
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for Timestamp {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let datetime = obj.cast::<PyDateTime>()?;
        if datetime.getattr("tzinfo")?.is_none() {
            return Err(PyValueError::new_err(
                "the datetime has no time zone; give an aware datetime (e.g. datetime.now(timezone.utc))",
            ));
        }
        let seconds: f64 = datetime.call_method0("timestamp")?.extract()?;
        Ok(Timestamp::from_unix_millis(
            (seconds * 1000.0).round() as i64
        ))
    }
}

impl PyStubType for Timestamp {
    fn type_output() -> TypeInfo {
        hint("datetime.datetime", "datetime")
    }
}

/// The raw bytes of a message cross as `bytes` (one copy, no list of ints).
impl<'py> IntoPyObject<'py> for RawMessage {
    type Target = PyBytes;
    type Output = Bound<'py, PyBytes>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        Ok(PyBytes::new(py, &self.0))
    }
}

impl<'py> IntoPyObject<'py> for &RawMessage {
    type Target = PyBytes;
    type Output = Bound<'py, PyBytes>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        Ok(PyBytes::new(py, &self.0))
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for RawMessage {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(RawMessage(obj.cast::<PyBytes>()?.as_bytes().to_vec()))
    }
}

impl PyStubType for RawMessage {
    fn type_output() -> TypeInfo {
        hint("builtins.bytes", "builtins")
    }
}

/// Implements the conversions of an enum without data that crosses as its
/// snake_case name; the variant list is checked to be complete.
macro_rules! str_enum {
    ($ty:ident { $($variant:ident),+ $(,)? }) => {
        impl $ty {
            const PY_VARIANTS: &'static [$ty] = &[$($ty::$variant),+];

            /// Each variant with its name, computed once (a sink returns
            /// one value per message: no serde round trip per value).
            fn py_names() -> &'static [($ty, String)] {
                static NAMES: std::sync::OnceLock<Vec<($ty, String)>> = std::sync::OnceLock::new();
                NAMES.get_or_init(|| $ty::PY_VARIANTS.iter().map(|v| (*v, enum_name(v))).collect())
            }
        }

        const _: fn($ty) = |v| match v {
            $($ty::$variant)|+ => (),
        };

        impl<'py> IntoPyObject<'py> for $ty {
            type Target = PyString;
            type Output = Bound<'py, PyString>;
            type Error = PyErr;

            fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
                (&self).into_pyobject(py)
            }
        }

        impl<'a, 'py> IntoPyObject<'py> for &'a $ty {
            type Target = PyString;
            type Output = Bound<'py, PyString>;
            type Error = PyErr;

            fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
                let name = $ty::py_names().iter().find(|(v, _)| v == self).map_or("", |(_, n)| n);
                Ok(PyString::new(py, name))
            }
        }

        impl<'a, 'py> FromPyObject<'a, 'py> for $ty {
            type Error = PyErr;

            fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
                let text = obj.cast::<PyString>()?;
                let text = text.to_cow()?;
                $ty::py_names()
                    .iter()
                    .find(|(_, name)| *name == text)
                    .map(|(v, _)| *v)
                    .ok_or_else(|| {
                        let allowed: Vec<&str> =
                            $ty::py_names().iter().map(|(_, n)| n.as_str()).collect();
                        PyValueError::new_err(format!(
                            "'{text}' is not a {}; use one of: {}",
                            stringify!($ty),
                            allowed.join(", ")
                        ))
                    })
            }
        }

        impl PyStubType for $ty {
            fn type_output() -> TypeInfo {
                let names: Vec<String> = $ty::PY_VARIANTS
                    .iter()
                    .map(|v| format!("{:?}", enum_name(v)))
                    .collect();
                hint(&format!("typing.Literal[{}]", names.join(", ")), "typing")
            }
        }
    };
}

/// The serde (snake_case) name of a unit variant.
fn enum_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

str_enum!(ServerType {
    Gmail,
    ImapSmtp,
    Pop3Smtp
});
str_enum!(Security {
    Tls,
    StartTls,
    Plaintext
});
str_enum!(IncomingProtocol { Imap, Pop3 });
str_enum!(ApplicationType { Web });
str_enum!(UserType { Internal, External });
str_enum!(PublishingStatus {
    Testing,
    Production
});
str_enum!(IncomingDelivery {
    None,
    ServerSideSync,
    EmailRouter,
    ForwardMailbox
});
str_enum!(IncomingFilter {
    All,
    RepliesToTrackedEmail,
    FromKnownRecords,
    None
});
str_enum!(OutgoingDelivery {
    None,
    ServerSideSync,
    EmailRouter
});
str_enum!(ApprovalStatus {
    Empty,
    Approved,
    PendingApproval,
    Rejected
});
str_enum!(AlertLevel {
    Info,
    Warning,
    Error
});
str_enum!(TestOutcome {
    Success,
    Failure,
    Warning
});
str_enum!(Direction { Incoming, Outgoing });
str_enum!(OutgoingState {
    Pending,
    Sending,
    Sent,
    Failed,
    Deferred,
    Unknown
});
str_enum!(DeliveryOutcome {
    Stored,
    Skip,
    RetryLater
});
str_enum!(MailboxEventKind {
    Snapshot,
    Connected,
    ConsentFailed,
    Refreshed,
    NeedsReconsent,
    Disconnected,
    DirectionEnabled,
    DirectionRetrying,
    DirectionDisabled
});

impl<'py> IntoPyObject<'py> for ErrorCode {
    type Target = PyString;
    type Output = Bound<'py, PyString>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        Ok(PyString::new(py, self.as_str()))
    }
}

impl<'py> IntoPyObject<'py> for &ErrorCode {
    type Target = PyString;
    type Output = Bound<'py, PyString>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        (*self).into_pyobject(py)
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for ErrorCode {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let text: String = obj.extract()?;
        ErrorCode::parse(&text)
            .ok_or_else(|| PyValueError::new_err(format!("'{text}' is not an error code")))
    }
}

impl PyStubType for ErrorCode {
    fn type_output() -> TypeInfo {
        let names: Vec<String> = ErrorCode::ALL
            .iter()
            .map(|c| format!("{:?}", c.as_str()))
            .collect();
        hint(&format!("typing.Literal[{}]", names.join(", ")), "typing")
    }
}

/// `repr()` of the records and data enums: their `Debug` form, in which
/// every secret is redacted (`Secret([REDACTED])`).
macro_rules! debug_repr {
    ($($ty:ty),* $(,)?) => {$(
        #[pymethods]
        impl $ty {
            fn __repr__(&self) -> String {
                format!("{self:?}")
            }
        }
    )*};
}

debug_repr!(
    crate::model::OAuthApp,
    crate::model::ConsentScreen,
    crate::model::Warning,
    crate::model::Endpoint,
    crate::model::IncomingEndpoint,
    crate::model::Authentication,
    crate::model::ProcessingOptions,
    crate::model::LastTestResult,
    crate::model::ServerProfile,
    crate::model::Owner,
    crate::model::MailboxCredentials,
    crate::model::Alert,
    crate::model::Mailbox,
    crate::model::MailboxSpec,
    crate::lifecycle::PendingConsent,
    crate::lifecycle::GrantStatus,
    crate::lifecycle::TestStatus,
    crate::lifecycle::DirectionStatus,
    crate::lifecycle::DirectionState,
    crate::lifecycle::MailboxState,
    crate::lifecycle::FailurePolicy,
    crate::directory::MailboxStatus,
    crate::connections::ConsentRequest,
    crate::connections::AccessToken,
    crate::connections::GrantInfo,
    crate::store::KeyRotation,
    crate::checks::TestOptions,
    crate::checks::StepResult,
    crate::checks::Diagnosis,
    crate::checks::DirectionReport,
    crate::checks::TestReport,
    crate::events::MailboxEvent,
    crate::options::RetryPolicy,
    crate::options::Options,
    crate::sync::EngineOptions,
    crate::sync::MailAddress,
    crate::sync::CycleReport,
    crate::sync::SyncProgress,
    crate::sync::SyncStatus,
    crate::sync::ImapCursor,
    crate::sync::SyncCursor,
    crate::sync::OutgoingMessage,
    crate::sync::OutgoingContent,
    crate::sync::OutgoingAttachment,
    crate::sync::RecipientRefusal,
    crate::sync::SendOutcome,
    crate::sync::SendReport,
    crate::sync::OutgoingRecord,
    crate::sync::OutboxCursor,
);

/// A composed message: `from` is a Python keyword, so the field also reads
/// and writes as `from_` (see `IncomingMessage.from_`), and the constructor
/// (written here, not `new = "from_fields"`, whose text signature would name
/// a parameter `from`) takes it as `from_`, with defaults for every part.
#[pyo3_stub_gen::derive::gen_stub_pymethods]
#[pymethods]
impl crate::sync::ComposedMessage {
    /// A message to compose; every part may be left out. `from_`: the
    /// mailbox's own address (with a display name), None: the mailbox's.
    #[new]
    #[pyo3(signature = (to=Vec::new(), cc=Vec::new(), bcc=Vec::new(), subject=String::new(), text=None, html=None, attachments=Vec::new(), in_reply_to=None, references=Vec::new(), from_=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        to: Vec<MailAddress>,
        cc: Vec<MailAddress>,
        bcc: Vec<MailAddress>,
        subject: String,
        text: Option<String>,
        html: Option<String>,
        attachments: Vec<crate::sync::OutgoingAttachment>,
        in_reply_to: Option<String>,
        references: Vec<String>,
        from_: Option<MailAddress>,
    ) -> Self {
        crate::sync::ComposedMessage {
            from: from_,
            to,
            cc,
            bcc,
            subject,
            text,
            html,
            attachments,
            in_reply_to,
            references,
        }
    }

    /// `From`: the mailbox's own address (a display name may be given);
    /// None: the mailbox's address. Any other address is refused before
    /// connecting (`sender_not_allowed`).
    #[getter]
    fn from_(&self) -> Option<MailAddress> {
        self.from.clone()
    }

    #[setter(from_)]
    fn set_from_(&mut self, value: Option<MailAddress>) {
        self.from = value;
    }

    fn __repr__(&self) -> String {
        format!("{self:?}")
    }
}

/// `from` is a Python keyword: the field reads as `from_` (pyo3 cannot
/// rename a field whose `#[pyo3(...)]` sits in a `cfg_attr`, PyO3 #5125).
#[pyo3_stub_gen::derive::gen_stub_pymethods]
#[pymethods]
impl IncomingMessage {
    /// `From`.
    #[getter]
    fn from_(&self) -> Vec<MailAddress> {
        self.from.clone()
    }

    fn __repr__(&self) -> String {
        format!("{self:?}")
    }
}
