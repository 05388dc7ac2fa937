//! The engine's outbox: the mail users composed on a mailbox page (the
//! CRM's "Pending Send" email, table `outbox` in `crm.db`) goes out over
//! SMTP from that mailbox in the engine's cycles.
//!
//! `pending` hands the engine each message not reported sent or failed
//! yet, under its stable CRM id; the engine assigns its Message-ID, keeps
//! its own record of every attempt (state, attempts, last error: shown on
//! the mailbox page from `OutboxStore::get_outgoing`) and never sends a
//! message twice, and `report` marks the row done once it is sent or
//! failed. Deferred (and unknown) messages stay pending: the engine tries
//! them again with the same Message-ID when they are due.

use async_trait::async_trait;
use mailsync::model::MailboxId;
use mailsync::sync::{
    ComposedMessage, MailAddress, Outbox, OutgoingContent, OutgoingMessage, SendOutcome, SendReport,
};

use crate::store::{CrmDb, QueuedEmail};

/// The CRM's queue of composed mail.
#[derive(Debug, Clone)]
pub struct CrmOutbox {
    db: CrmDb,
}

impl CrmOutbox {
    /// An outbox over the CRM's database.
    pub fn new(db: CrmDb) -> Self {
        CrmOutbox { db }
    }
}

fn message(email: QueuedEmail) -> OutgoingMessage {
    OutgoingMessage {
        id: email.id,
        content: OutgoingContent::Composed {
            message: ComposedMessage {
                to: email
                    .to
                    .into_iter()
                    .map(|address| MailAddress {
                        name: None,
                        address,
                    })
                    .collect(),
                subject: email.subject,
                text: Some(email.body),
                // `from: None`: the mailbox's own address.
                ..ComposedMessage::default()
            },
        },
    }
}

#[async_trait]
impl Outbox for CrmOutbox {
    async fn pending(
        &self,
        mailbox: &MailboxId,
        limit: u32,
    ) -> mailsync::Result<Vec<OutgoingMessage>> {
        Ok(self
            .db
            .pending_emails(mailbox, limit)
            .await?
            .into_iter()
            .map(message)
            .collect())
    }

    async fn report(&self, report: SendReport) -> mailsync::Result<()> {
        let (outcome, done) = match &report.outcome {
            SendOutcome::Sent { .. } => ("sent", true),
            SendOutcome::Failed { .. } => ("failed", true),
            SendOutcome::Deferred { .. } => ("deferred", false),
            SendOutcome::Unknown { .. } => ("unknown", false),
        };
        self.db
            .email_outcome(
                &report.mailbox_id,
                &report.id,
                outcome,
                done,
                &report.message_id,
            )
            .await
    }
}
