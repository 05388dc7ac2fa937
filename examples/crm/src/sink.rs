//! The engine's sink: incoming mail goes into the CRM's `messages` table,
//! keyed by mailbox and `IncomingMessage::key` (delivery is at least once:
//! a repeated batch changes nothing), and the CRM's email — what it stored
//! and what its outbox sent — is its tracked email for the default
//! incoming filter (replies to tracked email).

use async_trait::async_trait;
use mailsync::model::MailboxId;
use mailsync::sync::{DeliveryOutcome, IncomingMessage, MessageSink};

use crate::store::CrmDb;

/// Stores delivered mail in the CRM's database.
#[derive(Debug, Clone)]
pub struct CrmSink {
    db: CrmDb,
}

impl CrmSink {
    /// A sink over the CRM's database.
    pub fn new(db: CrmDb) -> Self {
        CrmSink { db }
    }
}

#[async_trait]
impl MessageSink for CrmSink {
    async fn deliver(
        &self,
        messages: Vec<IncomingMessage>,
    ) -> mailsync::Result<Vec<DeliveryOutcome>> {
        let mut outcomes = Vec::with_capacity(messages.len());
        for message in &messages {
            // New or already held: both are "stored" (idempotent by key).
            self.db.store_message(message).await?;
            outcomes.push(DeliveryOutcome::Stored);
        }
        Ok(outcomes)
    }

    async fn tracked(
        &self,
        _mailbox: &MailboxId,
        message_ids: Vec<String>,
    ) -> mailsync::Result<Vec<bool>> {
        self.db.tracked(&message_ids).await
    }
}
