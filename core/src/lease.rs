//! One lease type for all exclusive work on a mailbox: refreshing its token
//! now, syncing it next.
//!
//! A [`Lease`] names its holder, carries a fencing token that only grows
//! (a later holder always has a larger one) and an expiry. The holder
//! renews it before each step that may take long; a store write made under
//! the lease passes the lease along, and the store refuses it once the
//! lease was taken over, so a holder that was paused past its expiry cannot
//! overwrite its successor's work. Dropping a lease (or cancelling its
//! holder) releases it in the background; if the process dies, it expires.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::error::{Error, ErrorCode, Result};
use crate::model::MailboxId;
use crate::store::{LeaseKind, LeaseRecord, Store};

/// A held lease. See the module docs.
pub struct Lease {
    record: LeaseRecord,
    ttl: Duration,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    released: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("record", &self.record)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Takes the lease if it is free or expired; `None` when another holder
    /// has it.
    pub async fn acquire(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        mailbox: &MailboxId,
        kind: LeaseKind,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let now = clock.now();
        let record = store
            .acquire_lease(mailbox, kind, owner, now, now.plus(ttl))
            .await?;
        Ok(record.map(|record| Lease {
            record,
            ttl,
            store,
            clock,
            released: false,
        }))
    }

    /// A lease the store already granted (e.g. by
    /// [`crate::store::LeaseStore::claim_due`]), renewed by `ttl`.
    pub(crate) fn claimed(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        record: LeaseRecord,
        ttl: Duration,
    ) -> Lease {
        Lease {
            record,
            ttl,
            store,
            clock,
            released: false,
        }
    }

    /// The stored record (holder, fencing token, expiry).
    pub fn record(&self) -> &LeaseRecord {
        &self.record
    }

    /// The fencing token.
    pub fn fence(&self) -> i64 {
        self.record.fence
    }

    /// Extends the lease by its time-to-live from now. `conflict` when it
    /// was lost (expired and taken over): the holder must stop.
    pub async fn renew(&mut self) -> Result<()> {
        let until = self.clock.now().plus(self.ttl);
        match self.store.renew_lease(&self.record, until).await? {
            Some(record) => {
                self.record = record;
                Ok(())
            }
            None => Err(Error::new(
                ErrorCode::Conflict,
                format!(
                    "the {} lease of mailbox {} was taken over by another holder",
                    self.record.kind.as_str(),
                    self.record.mailbox_id
                ),
            )),
        }
    }

    /// Releases the lease now.
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        self.store.release_lease(&self.record).await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Dropped without release (an error path, or the holder was
        // cancelled): release in the background when a runtime is around;
        // otherwise the lease simply expires.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            let record = self.record.clone();
            handle.spawn(async move {
                if let Err(e) = store.release_lease(&record).await {
                    tracing::debug!(code = %e.code(), "lease not released; it will expire");
                }
            });
        }
    }
}
