//! The store conformance suite, run against every store the library ships.

use std::sync::Arc;

use mailsync::Store;

mod memory {
    use super::*;

    mailsync::store_conformance_tests!(async {
        Arc::new(mailsync::MemoryStore::new()) as Arc<dyn Store>
    });
}

mod sqlite {
    use super::*;

    async fn fresh() -> Arc<dyn Store> {
        // Kept for the test's lifetime: the process exits right after.
        let dir = tempfile::tempdir().unwrap().keep();
        let key = mailsync::SealKey::generate().unwrap();
        Arc::new(
            mailsync::SqliteStore::open(dir.join("conformance.db"), key)
                .await
                .unwrap(),
        )
    }

    mailsync::store_conformance_tests!(fresh());
}

/// Against the test stack's PostgreSQL (`tests/stack`, started if it is not
/// running), or the server `MAILSYNC_TEST_POSTGRES_URL` names. Each test
/// gets a schema of its own (set as the connections' `search_path`), so the
/// tests run in parallel; the schema is dropped when the test's store is.
mod postgres {
    use super::*;

    use async_trait::async_trait;
    use mailsync::Result;
    use mailsync::lifecycle::MailboxState;
    use mailsync::model::{
        Alert, LastTestResult, Mailbox, MailboxId, ProfileId, Secret, ServerProfile, Timestamp,
    };
    use mailsync::store::{
        Commit, CommitOutcome, DirectoryStore, Grant, GrantStore, LeaseKind, LeaseRecord,
        LeaseStore, OutboxStore, PendingAuthorization, PendingRevocation, RevocationStore,
        StateStore, SyncStore,
    };
    use mailsync::sync::{MessageRecord, OutboxCursor, OutgoingRecord, SyncCursor};
    use mailsync::{PostgresConfig, PostgresStore};
    use sqlx::Connection;
    use std::collections::HashSet;
    use std::sync::OnceLock;

    fn server_url() -> &'static str {
        static URL: OnceLock<String> = OnceLock::new();
        URL.get_or_init(|| match std::env::var("MAILSYNC_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => mailsync_e2e::Stack::get().postgres.url,
        })
    }

    fn with_search_path(url: &str, schema: &str) -> String {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options[search_path]={schema}")
    }

    /// A [`PostgresStore`] in a schema of its own, dropped with it.
    struct Scratch {
        store: PostgresStore,
        schema: String,
    }

    async fn fresh() -> Arc<dyn Store> {
        let url = server_url();
        let schema = format!("conformance_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        let key = mailsync::SealKey::generate().unwrap();
        let config = PostgresConfig::new(with_search_path(url, &schema), key).pool_size(4);
        let store = PostgresStore::open_with(config).await.unwrap();
        Arc::new(Scratch { store, schema })
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let store = self.store.clone();
            let schema = std::mem::take(&mut self.schema);
            let drop_schema = async move {
                // Closing waits for every connection (and any rollback).
                store.close().await;
                let mut admin = sqlx::PgConnection::connect(server_url()).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                )))
                .execute(&mut admin)
                .await?;
                admin.close().await
            };
            // The suite's tests run on a multi-threaded runtime.
            let done = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(drop_schema)
            });
            if let Err(e) = done {
                eprintln!("could not drop a conformance schema: {e}");
            }
        }
    }

    #[async_trait]
    impl DirectoryStore for Scratch {
        async fn insert_profile(&self, profile: &ServerProfile) -> Result<ServerProfile> {
            self.store.insert_profile(profile).await
        }
        async fn update_profile(&self, profile: &ServerProfile) -> Result<ServerProfile> {
            self.store.update_profile(profile).await
        }
        async fn get_profile(&self, id: &ProfileId) -> Result<Option<ServerProfile>> {
            self.store.get_profile(id).await
        }
        async fn list_profiles(&self) -> Result<Vec<ServerProfile>> {
            self.store.list_profiles().await
        }
        async fn delete_profile(&self, id: &ProfileId) -> Result<()> {
            self.store.delete_profile(id).await
        }
        async fn insert_mailbox(
            &self,
            mailbox: &Mailbox,
            capacity: Option<u32>,
        ) -> Result<Mailbox> {
            self.store.insert_mailbox(mailbox, capacity).await
        }
        async fn update_mailbox(
            &self,
            mailbox: &Mailbox,
            capacity: Option<u32>,
        ) -> Result<Mailbox> {
            self.store.update_mailbox(mailbox, capacity).await
        }
        async fn get_mailbox(&self, id: &MailboxId) -> Result<Option<Mailbox>> {
            self.store.get_mailbox(id).await
        }
        async fn find_mailbox_by_email(&self, email: &str) -> Result<Option<Mailbox>> {
            self.store.find_mailbox_by_email(email).await
        }
        async fn list_mailboxes(&self, profile: Option<&ProfileId>) -> Result<Vec<Mailbox>> {
            self.store.list_mailboxes(profile).await
        }
        async fn count_mailboxes(&self, profile: &ProfileId) -> Result<u32> {
            self.store.count_mailboxes(profile).await
        }
        async fn delete_mailbox(&self, id: &MailboxId) -> Result<()> {
            self.store.delete_mailbox(id).await
        }
    }

    #[async_trait]
    impl StateStore for Scratch {
        async fn get_state(&self, mailbox: &MailboxId) -> Result<Option<MailboxState>> {
            self.store.get_state(mailbox).await
        }
        async fn commit(&self, commit: &Commit<'_>) -> Result<CommitOutcome> {
            self.store.commit(commit).await
        }
        async fn alerts(&self, mailbox: &MailboxId, limit: usize) -> Result<Vec<Alert>> {
            self.store.alerts(mailbox, limit).await
        }
        async fn put_profile_test(
            &self,
            profile: &ProfileId,
            result: &LastTestResult,
        ) -> Result<()> {
            self.store.put_profile_test(profile, result).await
        }
        async fn get_profile_test(&self, profile: &ProfileId) -> Result<Option<LastTestResult>> {
            self.store.get_profile_test(profile).await
        }
    }

    #[async_trait]
    impl GrantStore for Scratch {
        async fn take_pending(&self, state: &Secret) -> Result<Option<PendingAuthorization>> {
            self.store.take_pending(state).await
        }
        async fn get_grant(&self, mailbox: &MailboxId) -> Result<Option<Grant>> {
            self.store.get_grant(mailbox).await
        }
        async fn put_grant(
            &self,
            grant: &Grant,
            expected: i64,
            fence: Option<&LeaseRecord>,
        ) -> Result<Option<i64>> {
            self.store.put_grant(grant, expected, fence).await
        }
        async fn grant_held(&self, issuer: &str, client_id: &str, account: &str) -> Result<bool> {
            self.store.grant_held(issuer, client_id, account).await
        }
    }

    #[async_trait]
    impl LeaseStore for Scratch {
        async fn acquire_lease(
            &self,
            mailbox: &MailboxId,
            kind: LeaseKind,
            owner: &str,
            now: Timestamp,
            until: Timestamp,
        ) -> Result<Option<LeaseRecord>> {
            self.store
                .acquire_lease(mailbox, kind, owner, now, until)
                .await
        }
        async fn renew_lease(
            &self,
            lease: &LeaseRecord,
            until: Timestamp,
        ) -> Result<Option<LeaseRecord>> {
            self.store.renew_lease(lease, until).await
        }
        async fn release_lease(&self, lease: &LeaseRecord) -> Result<()> {
            self.store.release_lease(lease).await
        }
        async fn list_leases(&self) -> Result<Vec<LeaseRecord>> {
            self.store.list_leases().await
        }
        async fn claim_due(
            &self,
            owner: &str,
            now: Timestamp,
            until: Timestamp,
            limit: usize,
            skip: &[MailboxId],
        ) -> Result<Vec<LeaseRecord>> {
            self.store.claim_due(owner, now, until, limit, skip).await
        }
        async fn next_due(&self) -> Result<Option<Timestamp>> {
            self.store.next_due().await
        }
    }

    #[async_trait]
    impl SyncStore for Scratch {
        async fn get_cursor(&self, mailbox: &MailboxId) -> Result<Option<SyncCursor>> {
            self.store.get_cursor(mailbox).await
        }
        async fn list_cursors(&self) -> Result<Vec<SyncCursor>> {
            self.store.list_cursors().await
        }
        async fn commit_sync(
            &self,
            cursor: &SyncCursor,
            expected: i64,
            messages: &[MessageRecord],
            fence: &LeaseRecord,
        ) -> Result<Option<i64>> {
            self.store
                .commit_sync(cursor, expected, messages, fence)
                .await
        }
        async fn recorded_keys(
            &self,
            mailbox: &MailboxId,
            keys: &[String],
        ) -> Result<HashSet<String>> {
            self.store.recorded_keys(mailbox, keys).await
        }
        async fn recorded_uidls(&self, mailbox: &MailboxId) -> Result<HashSet<String>> {
            self.store.recorded_uidls(mailbox).await
        }
    }

    #[async_trait]
    impl OutboxStore for Scratch {
        async fn get_outgoing(
            &self,
            mailbox: &MailboxId,
            ids: &[String],
        ) -> Result<Vec<OutgoingRecord>> {
            self.store.get_outgoing(mailbox, ids).await
        }
        async fn list_outgoing(&self, mailbox: &MailboxId) -> Result<Vec<OutgoingRecord>> {
            self.store.list_outgoing(mailbox).await
        }
        async fn put_outgoing(
            &self,
            record: &OutgoingRecord,
            expected: i64,
            fence: &LeaseRecord,
        ) -> Result<Option<i64>> {
            self.store.put_outgoing(record, expected, fence).await
        }
        async fn get_outbox_cursor(&self, mailbox: &MailboxId) -> Result<Option<OutboxCursor>> {
            self.store.get_outbox_cursor(mailbox).await
        }
        async fn list_outbox_cursors(&self) -> Result<Vec<OutboxCursor>> {
            self.store.list_outbox_cursors().await
        }
        async fn put_outbox_cursor(
            &self,
            cursor: &OutboxCursor,
            expected: i64,
            fence: &LeaseRecord,
        ) -> Result<Option<i64>> {
            self.store.put_outbox_cursor(cursor, expected, fence).await
        }
    }

    #[async_trait]
    impl RevocationStore for Scratch {
        async fn queue_revocation(&self, revocation: &PendingRevocation) -> Result<()> {
            self.store.queue_revocation(revocation).await
        }
        async fn claim_revocations(
            &self,
            now: Timestamp,
            until: Timestamp,
            limit: usize,
        ) -> Result<Vec<PendingRevocation>> {
            self.store.claim_revocations(now, until, limit).await
        }
        async fn reschedule_revocation(
            &self,
            id: &str,
            attempts: u32,
            last_error: &str,
            next_attempt_at: Timestamp,
        ) -> Result<()> {
            self.store
                .reschedule_revocation(id, attempts, last_error, next_attempt_at)
                .await
        }
        async fn delete_revocation(&self, id: &str) -> Result<()> {
            self.store.delete_revocation(id).await
        }
        async fn list_revocations(&self) -> Result<Vec<PendingRevocation>> {
            self.store.list_revocations().await
        }
    }

    #[async_trait]
    impl Store for Scratch {
        async fn close(&self) {
            self.store.close().await
        }
        async fn rotate_key(
            &self,
            new_key: &mailsync::SealKey,
        ) -> Result<mailsync::store::KeyRotation> {
            self.store.rotate_key(new_key).await
        }
    }

    mailsync::store_conformance_tests!(fresh());
}
