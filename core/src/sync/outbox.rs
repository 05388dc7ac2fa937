//! The host's side of outgoing sync: the mail the CRM wants sent (its
//! "Pending Send" email) and what became of each message. Each binding
//! adapts this trait once (Python callables or coroutines, JavaScript
//! functions, a Kotlin/Swift interface).
//!
//! The engine keeps its own record of every message it was given
//! ([`OutgoingRecord`], in the store), keyed by the host's id, so a message
//! is sent once even when the host hands it over again: see
//! [`Outbox`] for the contract and docs/sync.md for the guarantees.

use async_trait::async_trait;

use crate::error::{ErrorCode, Result};
use crate::model::{MailboxId, Timestamp};

use super::{MailAddress, RawMessage};

/// One message the host wants sent from a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(
        module = "mailsync",
        get_all,
        set_all,
        eq,
        from_py_object,
        new = "from_fields"
    )
)]
pub struct OutgoingMessage {
    /// The host's stable id of the message (e.g. the CRM's email activity
    /// id). The engine keys its record by the mailbox and this id: hand the
    /// same message over with the same id every time.
    pub id: String,
    /// What to send.
    pub content: OutgoingContent,
}

/// A message's content: RFC 5322 bytes as they are, or the parts of a
/// message the engine composes (with lettre's builder).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(
    feature = "napi",
    napi_derive::napi(discriminant = "kind", discriminant_case = "snake_case")
)]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass_complex_enum,
    pyo3::pyclass(module = "mailsync", eq, from_py_object)
)]
// Crosses every binding as a plain tagged value: no boxing.
#[allow(clippy::large_enum_variant)]
pub enum OutgoingContent {
    /// A complete message. Bare CR and bare LF are sent as CRLF; a line
    /// longer than 998 octets is refused (`validation`); its `Message-ID`
    /// is kept, or one is added; a `Bcc` header is not sent.
    Raw {
        /// The message.
        raw: RawMessage,
        /// The envelope recipients; empty: the addresses of its `To`,
        /// `Cc` and `Bcc` headers.
        recipients: Vec<String>,
    },
    /// A message to compose.
    Composed {
        /// Its parts.
        message: ComposedMessage,
    },
}

/// The parts of a message the engine composes: headers, a text and/or
/// HTML body, attachments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(module = "mailsync", get_all, set_all, eq, from_py_object)
)]
// Python: its constructor is in ffi/python.rs (`from` is a Python keyword).
pub struct ComposedMessage {
    /// `From`: the mailbox's own address (a display name may be given);
    /// `None`: the mailbox's address. Any other address is refused before
    /// connecting (`sender_not_allowed`).
    pub from: Option<MailAddress>,
    /// `To`.
    pub to: Vec<MailAddress>,
    /// `Cc`.
    pub cc: Vec<MailAddress>,
    /// Blind copies: in the envelope, never in the headers.
    pub bcc: Vec<MailAddress>,
    /// `Subject`.
    pub subject: String,
    /// The plain-text body.
    pub text: Option<String>,
    /// The HTML body (with `text`: `multipart/alternative`).
    pub html: Option<String>,
    /// Attachments (`multipart/mixed`).
    pub attachments: Vec<OutgoingAttachment>,
    /// `In-Reply-To`: the Message-ID replied to, without angle brackets.
    pub in_reply_to: Option<String>,
    /// `References`: Message-IDs without angle brackets, oldest first.
    pub references: Vec<String>,
}

/// A file attached to a [`ComposedMessage`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(
        module = "mailsync",
        get_all,
        set_all,
        eq,
        from_py_object,
        new = "from_fields"
    )
)]
pub struct OutgoingAttachment {
    /// The file name.
    pub name: String,
    /// Its MIME type, e.g. `application/pdf`.
    pub content_type: String,
    /// Its bytes (they cross the bindings as bytes, like a [`RawMessage`]).
    pub content: RawMessage,
}

/// A recipient the server refused (its reply to `RCPT TO`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(module = "mailsync", get_all, eq, from_py_object)
)]
pub struct RecipientRefusal {
    /// The address.
    pub address: String,
    /// The SMTP reply code (4xx: for now, 5xx: for good).
    pub smtp_code: u16,
    /// The server's reply, e.g. `554 5.7.1 <x@example.org>: Relay access denied`.
    pub reply: String,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(
    feature = "napi",
    napi_derive::napi(discriminant = "outcome", discriminant_case = "snake_case")
)]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass_complex_enum,
    pyo3::pyclass(module = "mailsync", eq, from_py_object)
)]
pub enum SendOutcome {
    /// The server accepted it (its `250` to the end of the data). Never
    /// sent again.
    Sent {
        /// The server's reply, e.g. `250 2.0.0 Ok: queued as 4Xc1`.
        reply: String,
        /// Recipients refused while the others got it (only when the
        /// engine allows partial sends).
        refused: Vec<RecipientRefusal>,
    },
    /// Refused for good: not sent, not tried again.
    Failed {
        /// Why: `send_rejected` (the server's 5xx), `sender_not_allowed`,
        /// `validation` (e.g. a line over 998 octets, no recipient),
        /// `message_too_large`.
        code: ErrorCode,
        /// The server's reply code, if the server refused it.
        smtp_code: Option<u16>,
        /// The server's reply, or why the engine refused it.
        reply: String,
        /// The refused recipients, one by one.
        refused: Vec<RecipientRefusal>,
    },
    /// Not sent now (the server's 4xx, the network, a timeout); tried
    /// again from `next_attempt` on, with the same Message-ID.
    Deferred {
        /// `send_deferred`, `network`, `timeout`, `server_unavailable`, …
        code: ErrorCode,
        /// The server's reply code, if it answered.
        smtp_code: Option<u16>,
        /// The server's reply, or what failed.
        reply: String,
        /// When it is tried again.
        next_attempt: Timestamp,
    },
    /// The engine cannot know whether the server accepted it: a crash (or
    /// a lost connection) after the data went out and before the server's
    /// answer was recorded. Reported only when
    /// [`EngineOptions::unknown_after_crash`](super::EngineOptions::unknown_after_crash)
    /// is set (otherwise the message is sent again with the same
    /// Message-ID). Not sent again until the host calls
    /// [`Engine::resend`](super::Engine::resend).
    Unknown {
        /// What happened.
        reason: String,
    },
}

/// One message's outcome, for [`Outbox::report`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(module = "mailsync", get_all, eq)
)]
pub struct SendReport {
    /// The mailbox it was sent from.
    pub mailbox_id: MailboxId,
    /// The host's id ([`OutgoingMessage::id`]).
    pub id: String,
    /// Its Message-ID, without angle brackets: assigned before the first
    /// attempt and the same in every attempt.
    pub message_id: String,
    /// Attempts so far (attempts that reached the server or failed on
    /// the way; refusals before connecting count none).
    pub attempts: u32,
    /// What became of it.
    pub outcome: SendOutcome,
}

/// Where outgoing mail comes from: the host's queue of messages to send.
///
/// `pending` returns up to `limit` messages of the mailbox waiting to be
/// sent, oldest first. `report` is called once for each outcome, after the
/// engine has recorded it: keep returning a message from `pending` until
/// its report is `sent` or `failed` (or, for `unknown`, until you decide),
/// and the engine does the rest: a message it has sent or refused is never
/// sent again; it is reported again instead, so a lost report (a crash, a
/// failing `report`) is made up for in the next cycle. Deferred messages
/// may be returned at any time; they are tried again when their
/// `next_attempt` has passed.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Up to `limit` messages of `mailbox` to send, oldest first.
    async fn pending(&self, mailbox: &MailboxId, limit: u32) -> Result<Vec<OutgoingMessage>>;

    /// One message's outcome (see [`SendOutcome`]).
    async fn report(&self, report: SendReport) -> Result<()>;
}

/// Where a message stands in the engine's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(feature = "napi", napi_derive::napi(string_enum = "snake_case"))]
pub enum OutgoingState {
    /// Known, not attempted yet.
    Pending,
    /// On the wire (or the process died while it was).
    Sending,
    /// Accepted by the server.
    Sent,
    /// Refused for good.
    Failed,
    /// To be tried again at `next_attempt`.
    Deferred,
    /// Its fate is unknown; waiting for the host ([`super::Engine::resend`]).
    Unknown,
}

impl OutgoingState {
    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            OutgoingState::Pending => "pending",
            OutgoingState::Sending => "sending",
            OutgoingState::Sent => "sent",
            OutgoingState::Failed => "failed",
            OutgoingState::Deferred => "deferred",
            OutgoingState::Unknown => "unknown",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(text: &str) -> Option<OutgoingState> {
        [
            OutgoingState::Pending,
            OutgoingState::Sending,
            OutgoingState::Sent,
            OutgoingState::Failed,
            OutgoingState::Deferred,
            OutgoingState::Unknown,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// The engine's record of one outgoing message, kept in the store
/// ([`crate::store::OutboxStore`]) and written under the mailbox's send
/// lease, compare-and-swap on its version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(module = "mailsync", get_all, eq, from_py_object)
)]
pub struct OutgoingRecord {
    /// The mailbox.
    pub mailbox_id: MailboxId,
    /// The host's id.
    pub id: String,
    /// The Message-ID, without angle brackets (kept for every attempt).
    pub message_id: String,
    /// Where it stands.
    pub state: OutgoingState,
    /// Attempts so far.
    pub attempts: u32,
    /// For `deferred`: when it is tried again.
    pub next_attempt: Option<Timestamp>,
    /// The last failure's code (`failed`, `deferred`).
    pub code: Option<ErrorCode>,
    /// The server's last reply code, if any.
    pub smtp_code: Option<u16>,
    /// The server's last reply (`sent`: its `250`), or what failed.
    pub reply: Option<String>,
    /// Recipients the server refused.
    pub refused: Vec<RecipientRefusal>,
    /// When the engine first saw it.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// Write version; set by the store, only grows (0: not stored yet).
    pub version: i64,
}

/// A mailbox's outgoing counters and schedule (the outgoing side's
/// counterpart of [`super::SyncCursor`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(module = "mailsync", get_all, eq, from_py_object)
)]
pub struct OutboxCursor {
    /// The mailbox.
    pub mailbox_id: MailboxId,
    /// Messages sent so far.
    pub sent: i64,
    /// Messages refused for good so far.
    pub failed: i64,
    /// When the last outgoing cycle ended.
    pub last_cycle_at: Option<Timestamp>,
    /// When the next outgoing cycle is due (before backoff).
    pub next_due: Option<Timestamp>,
    /// Write version; set by the store, only grows (0: not stored yet).
    pub version: i64,
}

impl OutboxCursor {
    /// The state before the first outgoing cycle.
    pub fn new(mailbox_id: MailboxId) -> Self {
        OutboxCursor {
            mailbox_id,
            sent: 0,
            failed: 0,
            last_cycle_at: None,
            next_due: None,
            version: 0,
        }
    }
}

impl OutgoingRecord {
    /// The report for the record's final state (`sent`, `failed`,
    /// `unknown`, `deferred`); `None` while it is pending or sending.
    pub(crate) fn report(&self) -> Option<SendReport> {
        let outcome = match self.state {
            OutgoingState::Sent => SendOutcome::Sent {
                reply: self.reply.clone().unwrap_or_default(),
                refused: self.refused.clone(),
            },
            OutgoingState::Failed => SendOutcome::Failed {
                code: self.code.unwrap_or(ErrorCode::SendRejected),
                smtp_code: self.smtp_code,
                reply: self.reply.clone().unwrap_or_default(),
                refused: self.refused.clone(),
            },
            OutgoingState::Deferred => SendOutcome::Deferred {
                code: self.code.unwrap_or(ErrorCode::SendDeferred),
                smtp_code: self.smtp_code,
                reply: self.reply.clone().unwrap_or_default(),
                next_attempt: self.next_attempt.unwrap_or(self.updated_at),
            },
            OutgoingState::Unknown => SendOutcome::Unknown {
                reason: self.reply.clone().unwrap_or_default(),
            },
            OutgoingState::Pending | OutgoingState::Sending => return None,
        };
        Some(SendReport {
            mailbox_id: self.mailbox_id.clone(),
            id: self.id.clone(),
            message_id: self.message_id.clone(),
            attempts: self.attempts,
            outcome,
        })
    }
}
