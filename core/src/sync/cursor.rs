//! Where a mailbox's incoming sync stands: its cursor (IMAP UIDVALIDITY,
//! last UID and HIGHEST MODSEQ; POP3 uses the recorded UIDLs), counters and
//! schedule. Written by the store in one transaction with the outcomes of
//! the batch that moved it.

use crate::model::{MailboxId, Timestamp};

/// The IMAP position in INBOX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(module = "mailsync", get_all, eq, from_py_object)
)]
pub struct ImapCursor {
    /// The UIDVALIDITY the UIDs belong to.
    pub uid_validity: u32,
    /// Every message up to this UID is done.
    pub last_uid: u32,
    /// HIGHESTMODSEQ at the last cycle (servers with CONDSTORE).
    pub highest_modseq: Option<i64>,
}

/// A mailbox's incoming sync position, counters and schedule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(module = "mailsync", get_all, eq, from_py_object)
)]
pub struct SyncCursor {
    /// The mailbox.
    pub mailbox_id: MailboxId,
    /// The IMAP position (none before the first IMAP cycle).
    pub imap: Option<ImapCursor>,
    /// Messages stored by the sink so far.
    pub delivered: i64,
    /// Messages skipped (by the sink, the incoming filter, or as oversized).
    pub skipped: i64,
    /// When the last cycle ended.
    pub last_cycle_at: Option<Timestamp>,
    /// When the next cycle is due (before backoff).
    pub next_due: Option<Timestamp>,
    /// Write version; set by the store, only grows.
    pub version: i64,
}

impl SyncCursor {
    /// The state before the first cycle.
    pub fn new(mailbox_id: MailboxId) -> Self {
        SyncCursor {
            mailbox_id,
            imap: None,
            delivered: 0,
            skipped: 0,
            last_cycle_at: None,
            next_due: None,
            version: 0,
        }
    }
}

/// Why a message's outcome was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(feature = "napi", napi_derive::napi(string_enum = "snake_case"))]
pub enum RecordedOutcome {
    /// The sink stored it.
    Stored,
    /// The sink skipped it.
    Skipped,
    /// The incoming filter left it out (its body was not downloaded).
    Filtered,
    /// Larger than the size limit: not downloaded, alert raised.
    Oversized,
}

/// One message's recorded outcome: keyed by its idempotency key, with the
/// ids that locate it on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// [`super::IncomingMessage::key`].
    pub key: String,
    /// IMAP UID, if any.
    pub uid: Option<u32>,
    /// POP3 UIDL, if any.
    pub uidl: Option<String>,
    /// What happened.
    pub outcome: RecordedOutcome,
}
