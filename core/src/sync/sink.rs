//! The host's side of incoming sync: where messages go, and the questions
//! the incoming filter asks. Each binding adapts this trait once (Python
//! callables or coroutines, JavaScript functions, a Kotlin/Swift interface).

use async_trait::async_trait;

use crate::error::Result;
use crate::model::MailboxId;

use super::IncomingMessage;

/// What the host did with one delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(feature = "napi", napi_derive::napi(string_enum = "snake_case"))]
pub enum DeliveryOutcome {
    /// Stored (or already had it, by key): done.
    Stored,
    /// Deliberately not stored: done, and counted as skipped.
    Skip,
    /// Not now: the cursor stops before this message, which comes again
    /// in the next cycle.
    RetryLater,
}

/// Where incoming mail goes: the host's store.
///
/// `deliver` gets a batch in server order and returns one outcome per
/// message, in the same order. The engine records the outcomes and moves
/// the mailbox's cursor in one store transaction, only after `deliver`
/// returned; when it fails (or times out) the cursor does not move and the
/// batch comes again. Delivery is at least once: a crash between
/// `deliver` and that write repeats the batch, so store by
/// [`IncomingMessage::key`].
#[async_trait]
pub trait MessageSink: Send + Sync {
    /// Stores a batch; one outcome per message, in order.
    async fn deliver(&self, messages: Vec<IncomingMessage>) -> Result<Vec<DeliveryOutcome>>;

    /// For the "responses to tracked email" filter: which of these
    /// Message-IDs (without angle brackets) belong to email the CRM tracks.
    /// One answer per id, in order. The default tracks nothing.
    async fn tracked(&self, mailbox: &MailboxId, message_ids: Vec<String>) -> Result<Vec<bool>> {
        let _ = mailbox;
        Ok(vec![false; message_ids.len()])
    }

    /// For the "from known records" filter: which of these sender
    /// addresses (lower-cased) belong to records the CRM knows (leads,
    /// contacts, accounts, email-enabled records). One answer per address,
    /// in order. The default knows nobody.
    async fn known_senders(
        &self,
        mailbox: &MailboxId,
        addresses: Vec<String>,
    ) -> Result<Vec<bool>> {
        let _ = mailbox;
        Ok(vec![false; addresses.len()])
    }
}
