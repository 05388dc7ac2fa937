//! One conformance suite for every [`Store`] implementation (feature
//! `test-support`).
//!
//! Each check takes a fresh, empty store and asserts what the library and
//! its users depend on: every method of the four traits, the invariants
//! kept inside one transaction, compare-and-swap on versions that only
//! grow, fencing, and no lost update under concurrency. Run them all for a
//! store with [`store_conformance_tests!`](crate::store_conformance_tests):
//!
//! ```ignore
//! mailsync::store_conformance_tests!(async { std::sync::Arc::new(mailsync::MemoryStore::new()) });
//! ```

use std::sync::Arc;
use std::time::Duration;

use super::{
    Commit, CommitOutcome, Grant, GrantChange, LeaseKind, LeaseRecord, PendingAuthorization,
    PendingChange, PendingRevocation, Store,
};
use crate::error::ErrorCode;
use crate::lifecycle::{DirectionStatus, GrantStatus, MailboxState};
use crate::model::{
    Alert, AlertLevel, IncomingDelivery, LastTestResult, Mailbox, MailboxId, MailboxSpec, OAuthApp,
    ProfileId, Secret, ServerProfile, TestOutcome, Timestamp,
};
use crate::sync::{OutboxCursor, OutgoingRecord, OutgoingState, RecipientRefusal, SyncCursor};

/// Generates one `#[tokio::test]` per check for a store made by `$make`
/// (an expression evaluating to a future of `Arc<dyn Store>`-compatible).
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@each $make;
            profiles_round_trip_in_name_order,
            profile_names_are_unique_ignoring_case_and_spaces,
            one_default_profile_at_a_time,
            profile_updates_compare_and_swap,
            profile_capacity_cannot_drop_below_its_mailboxes,
            profiles_in_use_cannot_be_deleted,
            mailboxes_round_trip_and_are_unique_by_address,
            mailbox_capacity_is_checked_on_insert_and_move,
            mailbox_updates_compare_and_swap,
            deleting_a_mailbox_deletes_everything_of_it,
            a_new_mailbox_has_a_fresh_state,
            state_commits_compare_and_swap,
            commits_change_state_grant_pending_and_alerts_together,
            grant_conflicts_write_nothing,
            alerts_keep_the_latest_fifty,
            pending_consents_are_taken_once,
            grants_round_trip_with_secrets_intact,
            grant_writes_are_fenced_by_the_lease,
            grant_held_finds_an_account_on_a_client,
            leases_have_one_holder_and_growing_fences,
            due_mailboxes_are_claimed_oldest_first,
            the_due_time_follows_mailbox_state_and_cursor,
            the_due_time_follows_the_outgoing_direction,
            concurrent_claims_take_each_mailbox_once,
            versions_only_grow_even_after_a_delete,
            profile_test_results_round_trip,
            concurrent_writers_lose_no_update,
            // outgoing sync (OutboxStore)
            outgoing_records_round_trip_by_mailbox_and_id,
            outgoing_writes_compare_and_swap,
            concurrent_outgoing_writers_lose_no_update,
            outgoing_writes_are_fenced_by_the_send_lease,
            outbox_cursors_round_trip_compare_and_swap_and_are_fenced,
            outgoing_records_go_with_their_mailbox,
            send_leases_are_apart_from_sync_leases,
            revocations_are_queued_claimed_rescheduled_and_deleted,
            concurrent_revocation_claims_take_each_once,
        );
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let store: std::sync::Arc<dyn $crate::Store> = $make.await;
                $crate::store::conformance::$name(store).await;
            }
        )*
    };
}

fn t(seconds: u64) -> Timestamp {
    Timestamp::from_unix_millis(1_800_000_000_000).plus(Duration::from_secs(seconds))
}

fn app() -> OAuthApp {
    OAuthApp::google("1234-abc.apps.googleusercontent.com", "client-secret")
        .for_environment("https://contoso.crm.example.com")
        .expect("valid environment")
}

fn profile(name: &str) -> ServerProfile {
    ServerProfile::gmail(name, app())
}

fn mailbox(email: &str, profile: Option<&ProfileId>) -> Mailbox {
    Mailbox::from_spec(MailboxSpec::user(email), profile.cloned(), t(0)).expect("valid mailbox")
}

async fn mailbox_on_new_profile(store: &dyn Store, email: &str) -> Mailbox {
    let p = store
        .insert_profile(&profile(&format!("P {email}")))
        .await
        .unwrap();
    store
        .insert_mailbox(&mailbox(email, Some(&p.id)), Some(100))
        .await
        .unwrap()
}

fn grant(mailbox: &MailboxId, access: &str) -> Grant {
    Grant {
        mailbox_id: mailbox.clone(),
        issuer: "https://accounts.google.com".into(),
        client_id: "1234-abc.apps.googleusercontent.com".into(),
        token_endpoint: "https://oauth2.googleapis.com/token".into(),
        account: "alice@example.com".into(),
        access_token: Secret::new(access),
        refresh_token: Some(Secret::new(format!("refresh-{access}"))),
        expires_at: Some(t(3600)),
        scopes: vec!["https://mail.google.com/".into(), "openid".into()],
        obtained_at: t(0),
        version: 0,
    }
}

fn pending(mailbox: &MailboxId, state: &str) -> PendingAuthorization {
    PendingAuthorization {
        state: Secret::new(state),
        mailbox_id: mailbox.clone(),
        pkce_verifier: Secret::new(format!("verifier-{state}")),
        redirect_uri: "https://contoso.crm.example.com/_grid/cmds/dlg_gmailoauth.aspx".into(),
        issuer: "https://accounts.google.com".into(),
        client_id: "1234-abc.apps.googleusercontent.com".into(),
        created_at: t(0),
        expires_at: t(600),
    }
}

fn alert(n: usize) -> Alert {
    Alert {
        level: AlertLevel::Info,
        code: format!("code_{n}"),
        message: format!("alert {n}"),
        at: t(n as u64),
    }
}

async fn commit_state(store: &dyn Store, next: &MailboxState, expected: i64) -> CommitOutcome {
    store
        .commit(&Commit {
            mailbox_id: &next.mailbox_id,
            expected_state_version: expected,
            state: Some(next),
            grant: GrantChange::Keep,
            pending: PendingChange::Keep,
            alerts: &[],
        })
        .await
        .unwrap()
}

fn committed_version(outcome: CommitOutcome) -> i64 {
    match outcome {
        CommitOutcome::Committed { state_version, .. } => state_version,
        other => panic!("expected a commit, got {other:?}"),
    }
}

/// Inserted profiles come back whole (secret included) and listed by name.
pub async fn profiles_round_trip_in_name_order(store: Arc<dyn Store>) {
    let b = store.insert_profile(&profile("beta")).await.unwrap();
    let a = store.insert_profile(&profile("Alpha")).await.unwrap();
    assert!(a.version > 0 && b.version > 0);
    let back = store.get_profile(&b.id).await.unwrap().unwrap();
    assert_eq!(back, b);
    assert_eq!(
        back.oauth_app()
            .unwrap()
            .client_secret
            .as_ref()
            .unwrap()
            .expose(),
        "client-secret"
    );
    let names: Vec<String> = store
        .list_profiles()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["Alpha", "beta"]);
    assert!(
        store
            .get_profile(&ProfileId::new())
            .await
            .unwrap()
            .is_none()
    );
}

/// "V", " v " and "Ü"/"ü" clash.
pub async fn profile_names_are_unique_ignoring_case_and_spaces(store: Arc<dyn Store>) {
    store.insert_profile(&profile("V")).await.unwrap();
    let e = store.insert_profile(&profile(" v ")).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyExists);
    let mut w = store.insert_profile(&profile("Übersee")).await.unwrap();
    let e = store.insert_profile(&profile("ÜBERSEE")).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyExists);
    w.name = "v".into();
    let e = store.update_profile(&w).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyExists);
}

/// Making a profile the default clears the other one, in one step.
pub async fn one_default_profile_at_a_time(store: Arc<dyn Store>) {
    let first = store
        .insert_profile(&profile("first").default_for_new_mailboxes())
        .await
        .unwrap();
    let second = store
        .insert_profile(&profile("second").default_for_new_mailboxes())
        .await
        .unwrap();
    let defaults: Vec<ProfileId> = store
        .list_profiles()
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.default_for_new_mailboxes)
        .map(|p| p.id)
        .collect();
    assert_eq!(defaults, std::slice::from_ref(&second.id));
    let first_now = store.get_profile(&first.id).await.unwrap().unwrap();
    assert!(
        first_now.version > first.version,
        "clearing the flag is a change"
    );
}

/// An update based on a stale version changes nothing.
pub async fn profile_updates_compare_and_swap(store: Arc<dyn Store>) {
    let p = store.insert_profile(&profile("P")).await.unwrap();
    let mut mine = p.clone();
    mine.processing.connection_timeout_secs = 30;
    let mut theirs = p.clone();
    theirs.processing.connection_timeout_secs = 40;
    let updated = store.update_profile(&mine).await.unwrap();
    assert!(updated.version > p.version);
    let e = store.update_profile(&theirs).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict);
    let stored = store.get_profile(&p.id).await.unwrap().unwrap();
    assert_eq!(stored.processing.connection_timeout_secs, 30);
    let mut gone = profile("gone");
    gone.version = 1;
    assert_eq!(
        store.update_profile(&gone).await.unwrap_err().code(),
        ErrorCode::NotFound
    );
}

/// The capacity check counts inside the writing transaction.
pub async fn profile_capacity_cannot_drop_below_its_mailboxes(store: Arc<dyn Store>) {
    let p = store.insert_profile(&profile("P")).await.unwrap();
    for email in ["a@example.com", "b@example.com"] {
        store
            .insert_mailbox(&mailbox(email, Some(&p.id)), Some(100))
            .await
            .unwrap();
    }
    let mut smaller = p.clone();
    smaller.mailbox_capacity = 1;
    let e = store.update_profile(&smaller).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Validation);
    assert_eq!(e.field(), Some("mailbox_capacity"));
    smaller.mailbox_capacity = 2;
    store.update_profile(&smaller).await.unwrap();
}

/// `profile_in_use` while mailboxes reference it; deletable after.
pub async fn profiles_in_use_cannot_be_deleted(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let p = m.profile_id.clone().unwrap();
    let e = store.delete_profile(&p).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ProfileInUse);
    store.delete_mailbox(&m.id).await.unwrap();
    store.delete_profile(&p).await.unwrap();
    assert_eq!(
        store.delete_profile(&p).await.unwrap_err().code(),
        ErrorCode::NotFound
    );
}

/// Mailboxes round-trip, are found by address, listed in address order.
pub async fn mailboxes_round_trip_and_are_unique_by_address(store: Arc<dyn Store>) {
    let p = store.insert_profile(&profile("P")).await.unwrap();
    let b = store
        .insert_mailbox(&mailbox("b@example.com", Some(&p.id)), Some(100))
        .await
        .unwrap();
    let a = store
        .insert_mailbox(&mailbox("a@example.com", None), None)
        .await
        .unwrap();
    assert_eq!(store.get_mailbox(&b.id).await.unwrap().unwrap(), b);
    assert_eq!(
        store.find_mailbox_by_email("a@example.com").await.unwrap(),
        Some(a.clone())
    );
    let all: Vec<String> = store
        .list_mailboxes(None)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.email)
        .collect();
    assert_eq!(all, ["a@example.com", "b@example.com"]);
    assert_eq!(
        store.list_mailboxes(Some(&p.id)).await.unwrap(),
        std::slice::from_ref(&b)
    );
    assert_eq!(store.count_mailboxes(&p.id).await.unwrap(), 1);
    let e = store
        .insert_mailbox(&mailbox("a@example.com", None), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyExists);
    let e = store
        .insert_mailbox(&mailbox("c@example.com", Some(&ProfileId::new())), Some(1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
}

/// Capacity holds on insert and when a mailbox moves in.
pub async fn mailbox_capacity_is_checked_on_insert_and_move(store: Arc<dyn Store>) {
    let small = store.insert_profile(&profile("small")).await.unwrap();
    let other = store.insert_profile(&profile("other")).await.unwrap();
    store
        .insert_mailbox(&mailbox("a@example.com", Some(&small.id)), Some(1))
        .await
        .unwrap();
    let e = store
        .insert_mailbox(&mailbox("b@example.com", Some(&small.id)), Some(1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::CapacityExceeded);
    let mut b = store
        .insert_mailbox(&mailbox("b@example.com", Some(&other.id)), Some(1))
        .await
        .unwrap();
    b.profile_id = Some(small.id.clone());
    let e = store.update_mailbox(&b, Some(1)).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::CapacityExceeded);
    assert_eq!(store.count_mailboxes(&small.id).await.unwrap(), 1);
}

/// An update based on a stale version changes nothing.
pub async fn mailbox_updates_compare_and_swap(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let mut mine = m.clone();
    mine.name = "Mine".into();
    let mut theirs = m.clone();
    theirs.name = "Theirs".into();
    let updated = store.update_mailbox(&mine, None).await.unwrap();
    assert!(updated.version > m.version);
    let e = store.update_mailbox(&theirs, None).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Conflict);
    assert_eq!(
        store.get_mailbox(&m.id).await.unwrap().unwrap().name,
        "Mine"
    );
}

/// State, alerts, grant, pending consent and leases go with the mailbox.
pub async fn deleting_a_mailbox_deletes_everything_of_it(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let state = store.get_state(&m.id).await.unwrap().unwrap();
    let g = grant(&m.id, "access-1");
    let p = pending(&m.id, "state-1");
    committed_version(
        store
            .commit(&Commit {
                mailbox_id: &m.id,
                expected_state_version: state.version,
                state: None,
                grant: GrantChange::Put {
                    grant: &g,
                    expected: None,
                },
                pending: PendingChange::Put(&p),
                alerts: &[alert(1)],
            })
            .await
            .unwrap(),
    );
    store
        .acquire_lease(&m.id, LeaseKind::Refresh, "me", t(0), t(60))
        .await
        .unwrap()
        .unwrap();
    store.delete_mailbox(&m.id).await.unwrap();
    assert!(store.get_mailbox(&m.id).await.unwrap().is_none());
    assert!(store.get_state(&m.id).await.unwrap().is_none());
    assert!(store.get_grant(&m.id).await.unwrap().is_none());
    assert!(store.alerts(&m.id, 50).await.unwrap().is_empty());
    assert!(store.take_pending(&p.state).await.unwrap().is_none());
    assert!(store.list_leases().await.unwrap().is_empty());
    assert!(
        !store
            .grant_held(&g.issuer, &g.client_id, &g.account)
            .await
            .unwrap()
    );
    assert_eq!(
        store.delete_mailbox(&m.id).await.unwrap_err().code(),
        ErrorCode::NotFound
    );
}

/// A new mailbox's state: nothing pending, no grant, not tested.
pub async fn a_new_mailbox_has_a_fresh_state(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let state = store.get_state(&m.id).await.unwrap().unwrap();
    let mut expected = MailboxState::new(m.id.clone());
    expected.version = state.version;
    assert_eq!(state, expected);
    assert!(state.version > 0);
    assert!(store.get_state(&MailboxId::new()).await.unwrap().is_none());
}

/// A commit based on a stale state version writes nothing.
pub async fn state_commits_compare_and_swap(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let before = store.get_state(&m.id).await.unwrap().unwrap();
    let mut next = before.clone();
    next.incoming.status = DirectionStatus::Enabled { since: t(1) };
    let v = committed_version(commit_state(&*store, &next, before.version).await);
    assert!(v > before.version);
    let mut stale = before.clone();
    stale.outgoing.status = DirectionStatus::Enabled { since: t(2) };
    assert_eq!(
        commit_state(&*store, &stale, before.version).await,
        CommitOutcome::StateConflict
    );
    let stored = store.get_state(&m.id).await.unwrap().unwrap();
    assert_eq!(stored.version, v);
    assert_eq!(
        stored.incoming.status,
        DirectionStatus::Enabled { since: t(1) }
    );
    assert_eq!(stored.outgoing.status, DirectionStatus::NotTested {});
}

/// State, grant, pending consent and alerts change in one commit.
pub async fn commits_change_state_grant_pending_and_alerts_together(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let before = store.get_state(&m.id).await.unwrap().unwrap();
    let mut next = before.clone();
    next.grant = GrantStatus::Connected {
        account: "alice@example.com".into(),
        since: t(5),
    };
    let g = grant(&m.id, "access-1");
    let p = pending(&m.id, "state-1");
    let outcome = store
        .commit(&Commit {
            mailbox_id: &m.id,
            expected_state_version: before.version,
            state: Some(&next),
            grant: GrantChange::Put {
                grant: &g,
                expected: None,
            },
            pending: PendingChange::Put(&p),
            alerts: &[alert(1)],
        })
        .await
        .unwrap();
    let CommitOutcome::Committed {
        state_version,
        grant_version,
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    let stored = store.get_grant(&m.id).await.unwrap().unwrap();
    assert_eq!(Some(stored.version), grant_version);
    assert_eq!(
        store.get_state(&m.id).await.unwrap().unwrap().version,
        state_version
    );
    assert_eq!(store.alerts(&m.id, 10).await.unwrap(), [alert(1)]);
    // A second pending consent replaces the first.
    let p2 = pending(&m.id, "state-2");
    store
        .commit(&Commit {
            mailbox_id: &m.id,
            expected_state_version: state_version,
            state: None,
            grant: GrantChange::Delete {
                expected: grant_version,
            },
            pending: PendingChange::Put(&p2),
            alerts: &[],
        })
        .await
        .unwrap();
    assert!(store.get_grant(&m.id).await.unwrap().is_none());
    assert!(store.take_pending(&p.state).await.unwrap().is_none());
    assert!(store.take_pending(&p2.state).await.unwrap().is_some());
}

/// A grant change at the wrong version writes nothing at all.
pub async fn grant_conflicts_write_nothing(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let before = store.get_state(&m.id).await.unwrap().unwrap();
    let g = grant(&m.id, "access-1");
    let CommitOutcome::Committed {
        state_version,
        grant_version,
    } = store
        .commit(&Commit {
            mailbox_id: &m.id,
            expected_state_version: before.version,
            state: None,
            grant: GrantChange::Put {
                grant: &g,
                expected: None,
            },
            pending: PendingChange::Keep,
            alerts: &[],
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    let mut next = before.clone();
    next.incoming.status = DirectionStatus::Enabled { since: t(1) };
    for change in [
        GrantChange::Put {
            grant: &g,
            expected: None,
        },
        GrantChange::Delete {
            expected: grant_version.map(|v| v + 1000),
        },
    ] {
        let outcome = store
            .commit(&Commit {
                mailbox_id: &m.id,
                expected_state_version: state_version,
                state: Some(&next),
                grant: change,
                pending: PendingChange::Keep,
                alerts: &[alert(9)],
            })
            .await
            .unwrap();
        assert_eq!(outcome, CommitOutcome::GrantConflict);
    }
    let state = store.get_state(&m.id).await.unwrap().unwrap();
    assert_eq!(state.version, state_version, "nothing written");
    assert!(store.alerts(&m.id, 10).await.unwrap().is_empty());
    assert_eq!(
        store.get_grant(&m.id).await.unwrap().unwrap().version,
        grant_version.unwrap()
    );
}

/// Alerts come back oldest first; only the latest 50 are kept.
pub async fn alerts_keep_the_latest_fifty(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let alerts: Vec<Alert> = (0..60).map(alert).collect();
    let state = store.get_state(&m.id).await.unwrap().unwrap();
    store
        .commit(&Commit {
            mailbox_id: &m.id,
            expected_state_version: state.version,
            state: None,
            grant: GrantChange::Keep,
            pending: PendingChange::Keep,
            alerts: &alerts,
        })
        .await
        .unwrap();
    let kept = store.alerts(&m.id, 100).await.unwrap();
    assert_eq!(kept.len(), 50);
    assert_eq!(kept[0], alert(10));
    assert_eq!(kept[49], alert(59));
    assert_eq!(
        store.alerts(&m.id, 2).await.unwrap(),
        [alert(58), alert(59)]
    );
}

/// Of two concurrent takers of one state, exactly one gets it.
pub async fn pending_consents_are_taken_once(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let p = pending(&m.id, "state-1");
    let state = store.get_state(&m.id).await.unwrap().unwrap();
    store
        .commit(&Commit {
            mailbox_id: &m.id,
            expected_state_version: state.version,
            state: None,
            grant: GrantChange::Keep,
            pending: PendingChange::Put(&p),
            alerts: &[],
        })
        .await
        .unwrap();
    let takers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let secret = p.state.clone();
            tokio::spawn(async move { store.take_pending(&secret).await.unwrap() })
        })
        .collect();
    let mut taken = Vec::new();
    for task in takers {
        if let Some(p) = task.await.unwrap() {
            taken.push(p);
        }
    }
    assert_eq!(taken.len(), 1);
    let got = &taken[0];
    assert_eq!(got.mailbox_id, m.id);
    assert_eq!(got.pkce_verifier.expose(), "verifier-state-1");
    assert_eq!(got.issuer, p.issuer);
    assert_eq!(got.client_id, p.client_id);
    assert_eq!(got.expires_at, p.expires_at);
    assert!(
        store
            .take_pending(&Secret::new("unknown"))
            .await
            .unwrap()
            .is_none()
    );
}

/// Secrets and binding fields survive the round trip; put_grant is CAS.
pub async fn grants_round_trip_with_secrets_intact(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let state = store.get_state(&m.id).await.unwrap().unwrap();
    let g = grant(&m.id, "access-1");
    store
        .commit(&Commit {
            mailbox_id: &m.id,
            expected_state_version: state.version,
            state: None,
            grant: GrantChange::Put {
                grant: &g,
                expected: None,
            },
            pending: PendingChange::Keep,
            alerts: &[],
        })
        .await
        .unwrap();
    let back = store.get_grant(&m.id).await.unwrap().unwrap();
    assert_eq!(back.access_token.expose(), "access-1");
    assert_eq!(
        back.refresh_token.as_ref().unwrap().expose(),
        "refresh-access-1"
    );
    assert_eq!(
        (
            &back.issuer,
            &back.client_id,
            &back.token_endpoint,
            &back.account
        ),
        (&g.issuer, &g.client_id, &g.token_endpoint, &g.account)
    );
    assert_eq!(back.scopes, g.scopes);
    assert_eq!(back.expires_at, g.expires_at);
    let renewed = grant(&m.id, "access-2");
    let v = store
        .put_grant(&renewed, back.version, None)
        .await
        .unwrap()
        .unwrap();
    assert!(v > back.version);
    assert!(
        store
            .put_grant(&grant(&m.id, "access-3"), back.version, None)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .get_grant(&m.id)
            .await
            .unwrap()
            .unwrap()
            .access_token
            .expose(),
        "access-2"
    );
}

/// A grant write under a lease that was taken over is refused.
pub async fn grant_writes_are_fenced_by_the_lease(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let state = store.get_state(&m.id).await.unwrap().unwrap();
    let g = grant(&m.id, "access-1");
    let CommitOutcome::Committed { grant_version, .. } = store
        .commit(&Commit {
            mailbox_id: &m.id,
            expected_state_version: state.version,
            state: None,
            grant: GrantChange::Put {
                grant: &g,
                expected: None,
            },
            pending: PendingChange::Keep,
            alerts: &[],
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    let version = grant_version.unwrap();
    let old = store
        .acquire_lease(&m.id, LeaseKind::Refresh, "old", t(0), t(10))
        .await
        .unwrap()
        .unwrap();
    // The old holder pauses past its expiry; a new one takes over.
    let new = store
        .acquire_lease(&m.id, LeaseKind::Refresh, "new", t(11), t(30))
        .await
        .unwrap()
        .unwrap();
    assert!(new.fence > old.fence);
    assert!(
        store
            .put_grant(&grant(&m.id, "stale"), version, Some(&old))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .put_grant(&grant(&m.id, "fresh"), version, Some(&new))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        store
            .get_grant(&m.id)
            .await
            .unwrap()
            .unwrap()
            .access_token
            .expose(),
        "fresh"
    );
}

/// `grant_held` matches issuer, client and account (ignoring case).
pub async fn grant_held_finds_an_account_on_a_client(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let g = grant(&m.id, "access-1");
    assert!(
        !store
            .grant_held(&g.issuer, &g.client_id, &g.account)
            .await
            .unwrap()
    );
    let state = store.get_state(&m.id).await.unwrap().unwrap();
    store
        .commit(&Commit {
            mailbox_id: &m.id,
            expected_state_version: state.version,
            state: None,
            grant: GrantChange::Put {
                grant: &g,
                expected: None,
            },
            pending: PendingChange::Keep,
            alerts: &[],
        })
        .await
        .unwrap();
    assert!(
        store
            .grant_held(&g.issuer, &g.client_id, "Alice@Example.com")
            .await
            .unwrap()
    );
    assert!(
        !store
            .grant_held(&g.issuer, "other-client", &g.account)
            .await
            .unwrap()
    );
    assert!(
        !store
            .grant_held("https://login.example.com", &g.client_id, &g.account)
            .await
            .unwrap()
    );
    assert!(
        !store
            .grant_held(&g.issuer, &g.client_id, "bob@example.com")
            .await
            .unwrap()
    );
}

/// One holder at a time; an expired lease is taken over with a larger
/// fence; renewal and release work only for the current holder.
pub async fn leases_have_one_holder_and_growing_fences(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let first = store
        .acquire_lease(&m.id, LeaseKind::Refresh, "one", t(0), t(10))
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .acquire_lease(&m.id, LeaseKind::Refresh, "two", t(5), t(15))
            .await
            .unwrap()
            .is_none()
    );
    // Another kind is another lease.
    store
        .acquire_lease(&m.id, LeaseKind::Sync, "two", t(5), t(15))
        .await
        .unwrap()
        .unwrap();
    let renewed = store.renew_lease(&first, t(20)).await.unwrap().unwrap();
    assert_eq!((renewed.fence, renewed.expires_at), (first.fence, t(20)));
    assert!(
        store
            .acquire_lease(&m.id, LeaseKind::Refresh, "two", t(15), t(25))
            .await
            .unwrap()
            .is_none()
    );
    let second = store
        .acquire_lease(&m.id, LeaseKind::Refresh, "two", t(21), t(40))
        .await
        .unwrap()
        .unwrap();
    assert!(second.fence > first.fence);
    assert!(store.renew_lease(&first, t(50)).await.unwrap().is_none());
    store.release_lease(&first).await.unwrap();
    let held = store.list_leases().await.unwrap();
    assert!(
        held.contains(&second),
        "a stale release must not free the new lease"
    );
    store.release_lease(&second).await.unwrap();
    let again = store
        .acquire_lease(&m.id, LeaseKind::Refresh, "three", t(22), t(30))
        .await
        .unwrap()
        .unwrap();
    assert!(again.fence > second.fence);
    assert_eq!(
        store
            .acquire_lease(&MailboxId::new(), LeaseKind::Refresh, "x", t(0), t(1))
            .await
            .unwrap_err()
            .code(),
        ErrorCode::NotFound
    );
}

/// Sets a mailbox's incoming direction (a state commit).
async fn set_incoming(store: &dyn Store, mailbox: &MailboxId, status: DirectionStatus) {
    let state = store.get_state(mailbox).await.unwrap().unwrap();
    let mut next = state.clone();
    next.incoming.status = status;
    committed_version(commit_state(store, &next, state.version).await);
}

/// A mailbox whose incoming direction was enabled at `since`.
async fn enabled_mailbox(store: &dyn Store, email: &str, since: Timestamp) -> Mailbox {
    let m = mailbox_on_new_profile(store, email).await;
    set_incoming(store, &m.id, DirectionStatus::Enabled { since }).await;
    m
}

fn ids(leases: &[super::LeaseRecord]) -> Vec<MailboxId> {
    leases.iter().map(|l| l.mailbox_id.clone()).collect()
}

/// Due mailboxes are claimed oldest due first into sync leases with new,
/// growing fences; held ones, skipped ones and those not due are left out;
/// an expired claim is taken over and its holder's cursor writes refused.
pub async fn due_mailboxes_are_claimed_oldest_first(store: Arc<dyn Store>) {
    let b = enabled_mailbox(&*store, "b@example.com", t(2)).await;
    let a = enabled_mailbox(&*store, "a@example.com", t(1)).await;
    let c = mailbox_on_new_profile(&*store, "c@example.com").await;
    set_incoming(
        &*store,
        &c.id,
        DirectionStatus::Retrying {
            failures: 1,
            code: ErrorCode::Network,
            reason: "x".into(),
            next_attempt: t(5),
        },
    )
    .await;
    // Not tested: never due.
    let d = mailbox_on_new_profile(&*store, "d@example.com").await;
    assert_eq!(store.next_due().await.unwrap(), Some(t(1)));
    assert!(
        store
            .claim_due("w1", t(0), t(30), 10, &[])
            .await
            .unwrap()
            .is_empty(),
        "nothing is due yet"
    );
    let first = store.claim_due("w1", t(3), t(30), 10, &[]).await.unwrap();
    assert_eq!(ids(&first), vec![a.id.clone(), b.id.clone()]);
    assert!(first[0].fence < first[1].fence);
    for l in &first {
        assert_eq!(
            (l.kind, l.owner.as_str(), l.expires_at),
            (LeaseKind::Sync, "w1", t(30))
        );
    }
    let listed = store.list_leases().await.unwrap();
    assert!(first.iter().all(|l| listed.contains(l)));
    // Held: nobody else gets them; retrying c is due at its next attempt.
    assert!(
        store
            .claim_due("w2", t(4), t(40), 10, &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .claim_due("w2", t(6), t(40), 10, std::slice::from_ref(&c.id))
            .await
            .unwrap()
            .is_empty(),
        "a skipped mailbox is not claimed"
    );
    let second = store.claim_due("w2", t(6), t(40), 1, &[]).await.unwrap();
    assert_eq!(ids(&second), vec![c.id.clone()]);
    assert!(second[0].fence > first[1].fence);
    // The earliest a mailbox may be claimed again: when a's and b's claims expire.
    assert_eq!(store.next_due().await.unwrap(), Some(t(30)));
    // w1's claims expire; w2 takes them over with larger fences, oldest first.
    let limited = store.claim_due("w2", t(31), t(60), 1, &[]).await.unwrap();
    assert_eq!(ids(&limited), vec![a.id.clone()]);
    assert!(limited[0].fence > second[0].fence);
    let stale = SyncCursor::new(a.id.clone());
    assert_eq!(
        store.commit_sync(&stale, 0, &[], &first[0]).await.unwrap(),
        None,
        "the first holder's claim was taken over"
    );
    assert!(
        store
            .commit_sync(&stale, 0, &[], &limited[0])
            .await
            .unwrap()
            .is_some()
    );
    let rest = store.claim_due("w3", t(31), t(60), 5, &[]).await.unwrap();
    assert_eq!(ids(&rest), vec![b.id.clone()]);
    // Released: claimable again at once.
    store.release_lease(&rest[0]).await.unwrap();
    let again = store.claim_due("w3", t(32), t(60), 5, &[]).await.unwrap();
    assert_eq!(ids(&again), vec![b.id.clone()]);
    assert!(again[0].fence > rest[0].fence);
    let _ = d;
}

/// The due time follows every write of its inputs: the incoming direction
/// (enabled, retrying, disabled), the cursor's next due time, the mailbox's
/// incoming delivery; a deleted mailbox is gone from the schedule.
pub async fn the_due_time_follows_mailbox_state_and_cursor(store: Arc<dyn Store>) {
    let m = enabled_mailbox(&*store, "a@example.com", t(1)).await;
    let lease = store
        .claim_due("w", t(2), t(10), 1, &[])
        .await
        .unwrap()
        .pop()
        .expect("due since it was enabled");
    // A cycle: the cursor says when it is due next.
    let mut cursor = SyncCursor::new(m.id.clone());
    cursor.next_due = Some(t(300));
    let version = store
        .commit_sync(&cursor, 0, &[], &lease)
        .await
        .unwrap()
        .unwrap();
    store.release_lease(&lease).await.unwrap();
    assert_eq!(store.next_due().await.unwrap(), Some(t(300)));
    assert!(
        store
            .claim_due("w", t(299), t(400), 1, &[])
            .await
            .unwrap()
            .is_empty()
    );
    // A failure: retrying at its backoff, whatever the cursor says.
    set_incoming(
        &*store,
        &m.id,
        DirectionStatus::Retrying {
            failures: 1,
            code: ErrorCode::Network,
            reason: "x".into(),
            next_attempt: t(60),
        },
    )
    .await;
    assert_eq!(store.next_due().await.unwrap(), Some(t(60)));
    // Enabled again: the cursor's time counts again.
    set_incoming(&*store, &m.id, DirectionStatus::Enabled { since: t(61) }).await;
    assert_eq!(store.next_due().await.unwrap(), Some(t(300)));
    let lease = store
        .claim_due("w", t(300), t(400), 1, &[])
        .await
        .unwrap()
        .pop()
        .expect("due at the cursor's time");
    cursor.next_due = Some(t(900));
    store
        .commit_sync(&cursor, version, &[], &lease)
        .await
        .unwrap()
        .unwrap();
    store.release_lease(&lease).await.unwrap();
    assert_eq!(store.next_due().await.unwrap(), Some(t(900)));
    // Not synced by this library any more: off the schedule; and back.
    let mut current = store.get_mailbox(&m.id).await.unwrap().unwrap();
    current.incoming_delivery = IncomingDelivery::None;
    let current = store.update_mailbox(&current, None).await.unwrap();
    assert_eq!(store.next_due().await.unwrap(), None);
    let mut back = current.clone();
    back.incoming_delivery = IncomingDelivery::ServerSideSync;
    store.update_mailbox(&back, None).await.unwrap();
    assert_eq!(store.next_due().await.unwrap(), Some(t(900)));
    // Disabled: off the schedule.
    set_incoming(
        &*store,
        &m.id,
        DirectionStatus::Disabled {
            code: ErrorCode::AuthRejected,
            reason: "x".into(),
            since: t(901),
        },
    )
    .await;
    assert_eq!(store.next_due().await.unwrap(), None);
    assert!(
        store
            .claim_due("w", t(10_000), t(10_100), 1, &[])
            .await
            .unwrap()
            .is_empty()
    );
    // Deleted: gone.
    let other = enabled_mailbox(&*store, "b@example.com", t(5)).await;
    assert_eq!(store.next_due().await.unwrap(), Some(t(5)));
    store.delete_mailbox(&other.id).await.unwrap();
    assert_eq!(store.next_due().await.unwrap(), None);
}

/// The outgoing direction counts too: the due time is the earlier of the
/// two directions'; an outbox cursor (written under the send lease) moves
/// it, and a retrying outgoing direction is due at its backoff.
pub async fn the_due_time_follows_the_outgoing_direction(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let state = store.get_state(&m.id).await.unwrap().unwrap();
    let mut next = state.clone();
    next.outgoing.status = DirectionStatus::Enabled { since: t(1) };
    committed_version(commit_state(&*store, &next, state.version).await);
    // Enabled, but no outgoing cycle yet: not scheduled by outgoing.
    assert_eq!(store.next_due().await.unwrap(), None);
    let send = store
        .acquire_lease(&m.id, LeaseKind::Send, "w", t(2), t(30))
        .await
        .unwrap()
        .unwrap();
    let mut cursor = OutboxCursor::new(m.id.clone());
    cursor.next_due = Some(t(100));
    let version = store
        .put_outbox_cursor(&cursor, 0, &send)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.next_due().await.unwrap(), Some(t(100)));
    assert!(
        store
            .claim_due("w", t(99), t(200), 1, &[])
            .await
            .unwrap()
            .is_empty()
    );
    // Incoming due earlier: the earlier counts.
    set_incoming(&*store, &m.id, DirectionStatus::Enabled { since: t(50) }).await;
    assert_eq!(store.next_due().await.unwrap(), Some(t(50)));
    set_incoming(&*store, &m.id, DirectionStatus::NotTested {}).await;
    // Outgoing retrying: due at its backoff, whatever the cursor says.
    let state = store.get_state(&m.id).await.unwrap().unwrap();
    let mut next = state.clone();
    next.outgoing.status = DirectionStatus::Retrying {
        failures: 1,
        code: ErrorCode::Network,
        reason: "x".into(),
        next_attempt: t(70),
    };
    committed_version(commit_state(&*store, &next, state.version).await);
    assert_eq!(store.next_due().await.unwrap(), Some(t(70)));
    let claimed = store.claim_due("w", t(70), t(200), 1, &[]).await.unwrap();
    assert_eq!(ids(&claimed), vec![m.id.clone()]);
    store.release_lease(&claimed[0]).await.unwrap();
    // Enabled again, the cursor moved on by a cycle.
    let state = store.get_state(&m.id).await.unwrap().unwrap();
    let mut next = state.clone();
    next.outgoing.status = DirectionStatus::Enabled { since: t(71) };
    committed_version(commit_state(&*store, &next, state.version).await);
    cursor.next_due = Some(t(400));
    store
        .put_outbox_cursor(&cursor, version, &send)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.next_due().await.unwrap(), Some(t(400)));
}

/// Four workers claiming at once, two mailboxes at a time, until nothing is
/// due: each of 24 due mailboxes is claimed exactly once.
pub async fn concurrent_claims_take_each_mailbox_once(store: Arc<dyn Store>) {
    let mut all = Vec::new();
    for i in 0..24 {
        let m = enabled_mailbox(&*store, &format!("m{i:02}@example.com"), t(i)).await;
        all.push(m.id);
    }
    let start = Arc::new(tokio::sync::Barrier::new(4));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (store, start) = (store.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let mut mine = Vec::new();
                loop {
                    let owner = format!("w{w}");
                    let claimed = store
                        .claim_due(&owner, t(100), t(200), 2, &[])
                        .await
                        .unwrap();
                    if claimed.is_empty() {
                        return mine;
                    }
                    mine.extend(ids(&claimed));
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for w in workers {
        claimed.extend(w.await.unwrap());
    }
    claimed.sort();
    all.sort();
    assert_eq!(claimed, all, "every due mailbox claimed exactly once");
    let leases = store.list_leases().await.unwrap();
    assert_eq!(leases.len(), 24);
    let fences: std::collections::HashSet<i64> = leases.iter().map(|l| l.fence).collect();
    assert_eq!(fences.len(), 24, "one fencing token per claim");
}

/// A mailbox deleted and created again never gets a version it had.
pub async fn versions_only_grow_even_after_a_delete(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let state = store.get_state(&m.id).await.unwrap().unwrap();
    let mut next = state.clone();
    next.incoming.status = DirectionStatus::Enabled { since: t(1) };
    let last = committed_version(commit_state(&*store, &next, state.version).await);
    store.delete_mailbox(&m.id).await.unwrap();
    let mut again = m.clone();
    again.version = 0;
    let again = store.insert_mailbox(&again, Some(100)).await.unwrap();
    assert!(again.version > last);
    let fresh = store.get_state(&m.id).await.unwrap().unwrap();
    assert!(fresh.version > last);
    assert_eq!(
        commit_state(&*store, &next, state.version).await,
        CommitOutcome::StateConflict,
        "a version from before the delete must not match"
    );
}

/// A profile's last test result round-trips; unknown profiles are refused.
pub async fn profile_test_results_round_trip(store: Arc<dyn Store>) {
    let p = store.insert_profile(&profile("P")).await.unwrap();
    assert!(store.get_profile_test(&p.id).await.unwrap().is_none());
    let result = LastTestResult {
        outcome: TestOutcome::Success,
        at: t(3),
        duration_ms: 42,
        message: "all checks passed".into(),
    };
    store.put_profile_test(&p.id, &result).await.unwrap();
    assert_eq!(
        store.get_profile_test(&p.id).await.unwrap(),
        Some(result.clone())
    );
    assert_eq!(
        store
            .put_profile_test(&ProfileId::new(), &result)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::NotFound
    );
}

/// Increments a counter in the state by read, change, compare-and-swap,
/// retrying lost races. Returns how many races were lost.
pub async fn increment_failures(store: &dyn Store, mailbox: &MailboxId) -> u32 {
    let mut lost = 0;
    loop {
        let state = store.get_state(mailbox).await.unwrap().unwrap();
        // Let the other writer read the same version.
        tokio::task::yield_now().await;
        let mut next = state.clone();
        let failures = match &state.incoming.status {
            DirectionStatus::Retrying { failures, .. } => *failures,
            _ => 0,
        };
        next.incoming.status = DirectionStatus::Retrying {
            failures: failures + 1,
            code: ErrorCode::Network,
            reason: "x".into(),
            next_attempt: t(0),
        };
        match commit_state(store, &next, state.version).await {
            CommitOutcome::Committed { .. } => return lost,
            CommitOutcome::StateConflict => lost += 1,
            CommitOutcome::GrantConflict => panic!("no grant change was asked for"),
        }
    }
}

/// Two tasks incrementing one counter 100 times each end at 200: every
/// lost race is reported and retried, none overwrites the other.
pub async fn concurrent_writers_lose_no_update(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let start = Arc::new(tokio::sync::Barrier::new(2));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            let id = m.id.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let mut lost = 0;
                for _ in 0..100 {
                    lost += increment_failures(&*store, &id).await;
                }
                lost
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let state = store.get_state(&m.id).await.unwrap().unwrap();
    assert!(
        matches!(
            state.incoming.status,
            DirectionStatus::Retrying { failures: 200, .. }
        ),
        "{:?}",
        state.incoming.status
    );
}

// ---- outgoing sync (OutboxStore) ----

fn outgoing(mailbox: &MailboxId, id: &str, state: OutgoingState) -> OutgoingRecord {
    OutgoingRecord {
        mailbox_id: mailbox.clone(),
        id: id.to_owned(),
        message_id: format!("{id}.0f3a@example.com"),
        state,
        attempts: 1,
        next_attempt: Some(t(300)),
        code: Some(ErrorCode::SendDeferred),
        smtp_code: Some(451),
        reply: Some("451 4.3.0 try again".into()),
        refused: vec![RecipientRefusal {
            address: "bob@example.org".into(),
            smtp_code: 550,
            reply: "550 5.1.1 no such user".into(),
        }],
        created_at: t(1),
        updated_at: t(2),
        version: 0,
    }
}

async fn send_lease(store: &dyn Store, m: &MailboxId, owner: &str, at: u64) -> LeaseRecord {
    store
        .acquire_lease(m, LeaseKind::Send, owner, t(at), t(at + 10))
        .await
        .unwrap()
        .expect("the send lease is free")
}

/// Records come back whole, keyed by mailbox and id, listed by id.
pub async fn outgoing_records_round_trip_by_mailbox_and_id(store: Arc<dyn Store>) {
    let a = mailbox_on_new_profile(&*store, "a@example.com").await;
    let b = mailbox_on_new_profile(&*store, "b@example.com").await;
    let lease = send_lease(&*store, &a.id, "me", 0).await;
    let mut written = Vec::new();
    for id in ["m2", "m1", "m3"] {
        let r = outgoing(&a.id, id, OutgoingState::Deferred);
        let v = store.put_outgoing(&r, 0, &lease).await.unwrap().unwrap();
        assert!(v > 0);
        written.push(OutgoingRecord { version: v, ..r });
    }
    let ids: Vec<String> = ["m1", "m3", "nope"].iter().map(|s| s.to_string()).collect();
    let mut got = store.get_outgoing(&a.id, &ids).await.unwrap();
    got.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(got, vec![written[1].clone(), written[2].clone()]);
    let listed = store.list_outgoing(&a.id).await.unwrap();
    assert_eq!(
        listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["m1", "m2", "m3"]
    );
    assert_eq!(listed[1], written[0]);
    // The same id in another mailbox is another record.
    assert!(store.get_outgoing(&b.id, &ids).await.unwrap().is_empty());
    assert!(store.list_outgoing(&b.id).await.unwrap().is_empty());
    // Many ids at once (SQL stores chunk them).
    let many: Vec<String> = (0..1000)
        .map(|i| format!("x{i}"))
        .chain(["m2".into()])
        .collect();
    assert_eq!(
        store.get_outgoing(&a.id, &many).await.unwrap(),
        vec![written[0].clone()]
    );
}

/// A write based on a stale version (or an insert over an existing record)
/// writes nothing; versions only grow.
pub async fn outgoing_writes_compare_and_swap(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let lease = send_lease(&*store, &m.id, "me", 0).await;
    let first = outgoing(&m.id, "m1", OutgoingState::Sending);
    let v1 = store
        .put_outgoing(&first, 0, &lease)
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .put_outgoing(&first, 0, &lease)
            .await
            .unwrap()
            .is_none(),
        "an insert must not overwrite a record"
    );
    let mut sent = outgoing(&m.id, "m1", OutgoingState::Sent);
    sent.reply = Some("250 2.0.0 Ok".into());
    assert!(
        store
            .put_outgoing(&sent, v1 + 1000, &lease)
            .await
            .unwrap()
            .is_none()
    );
    let v2 = store
        .put_outgoing(&sent, v1, &lease)
        .await
        .unwrap()
        .unwrap();
    assert!(v2 > v1);
    assert!(
        store
            .put_outgoing(&first, v1, &lease)
            .await
            .unwrap()
            .is_none(),
        "a stale version must not overwrite"
    );
    let stored = store
        .get_outgoing(&m.id, &["m1".to_string()])
        .await
        .unwrap();
    assert_eq!(
        stored,
        vec![OutgoingRecord {
            version: v2,
            ..sent
        }]
    );
}

/// Two tasks moving one record from the same version: one wins, the other
/// is told, nothing is lost.
pub async fn concurrent_outgoing_writers_lose_no_update(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let lease = send_lease(&*store, &m.id, "me", 0).await;
    let base = outgoing(&m.id, "m1", OutgoingState::Pending);
    let mut version = store.put_outgoing(&base, 0, &lease).await.unwrap().unwrap();
    for round in 0..20u32 {
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let tasks: Vec<_> = (0..2u32)
            .map(|who| {
                let (store, lease, start) = (store.clone(), lease.clone(), start.clone());
                let mut r = base.clone();
                r.attempts = round * 10 + who;
                tokio::spawn(async move {
                    start.wait().await;
                    store.put_outgoing(&r, version, &lease).await.unwrap()
                })
            })
            .collect();
        let mut won = Vec::new();
        for task in tasks {
            won.extend(task.await.unwrap());
        }
        assert_eq!(won.len(), 1, "exactly one writer wins round {round}");
        let stored = &store
            .get_outgoing(&m.id, &["m1".to_string()])
            .await
            .unwrap()[0];
        assert_eq!(stored.version, won[0]);
        assert!(stored.attempts / 10 == round);
        version = won[0];
    }
}

/// A holder whose send lease was taken over (or released) cannot write.
pub async fn outgoing_writes_are_fenced_by_the_send_lease(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let old = send_lease(&*store, &m.id, "old", 0).await;
    // The old holder pauses past its expiry; a new one takes over.
    let new = send_lease(&*store, &m.id, "new", 11).await;
    assert!(new.fence > old.fence);
    let r = outgoing(&m.id, "m1", OutgoingState::Sending);
    assert!(store.put_outgoing(&r, 0, &old).await.unwrap().is_none());
    assert!(
        store
            .get_outgoing(&m.id, &["m1".to_string()])
            .await
            .unwrap()
            .is_empty()
    );
    let v = store.put_outgoing(&r, 0, &new).await.unwrap().unwrap();
    let done = outgoing(&m.id, "m1", OutgoingState::Sent);
    assert!(store.put_outgoing(&done, v, &old).await.unwrap().is_none());
    store.release_lease(&new).await.unwrap();
    assert!(
        store.put_outgoing(&done, v, &new).await.unwrap().is_none(),
        "a released lease fences nothing"
    );
    assert_eq!(
        store
            .get_outgoing(&m.id, &["m1".to_string()])
            .await
            .unwrap()[0]
            .state,
        OutgoingState::Sending
    );
}

/// The outgoing cursor round-trips, compares and swaps, and is fenced.
pub async fn outbox_cursors_round_trip_compare_and_swap_and_are_fenced(store: Arc<dyn Store>) {
    let a = mailbox_on_new_profile(&*store, "a@example.com").await;
    let b = mailbox_on_new_profile(&*store, "b@example.com").await;
    assert!(store.get_outbox_cursor(&a.id).await.unwrap().is_none());
    let lease = send_lease(&*store, &a.id, "me", 0).await;
    let mut cursor = OutboxCursor::new(a.id.clone());
    cursor.sent = 3;
    cursor.failed = 1;
    cursor.last_cycle_at = Some(t(5));
    cursor.next_due = Some(t(305));
    let v1 = store
        .put_outbox_cursor(&cursor, 0, &lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.get_outbox_cursor(&a.id).await.unwrap(),
        Some(OutboxCursor {
            version: v1,
            ..cursor.clone()
        })
    );
    assert!(
        store
            .put_outbox_cursor(&cursor, 0, &lease)
            .await
            .unwrap()
            .is_none()
    );
    cursor.sent = 4;
    let v2 = store
        .put_outbox_cursor(&cursor, v1, &lease)
        .await
        .unwrap()
        .unwrap();
    assert!(v2 > v1);
    assert!(
        store
            .put_outbox_cursor(&cursor, v1, &lease)
            .await
            .unwrap()
            .is_none()
    );
    let taken = send_lease(&*store, &a.id, "other", 20).await;
    assert!(
        store
            .put_outbox_cursor(&cursor, v2, &lease)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .put_outbox_cursor(&cursor, v2, &taken)
            .await
            .unwrap()
            .is_some()
    );
    // b's lease does not fence a's cursor.
    let b_lease = send_lease(&*store, &b.id, "me", 0).await;
    assert!(
        store
            .put_outbox_cursor(&OutboxCursor::new(a.id.clone()), 0, &b_lease)
            .await
            .unwrap()
            .is_none()
    );
    let listed = store.list_outbox_cursors().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].sent, 4);
}

/// Deleting a mailbox deletes its records and cursor; writes for a
/// mailbox that does not exist are `not_found`.
pub async fn outgoing_records_go_with_their_mailbox(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let lease = send_lease(&*store, &m.id, "me", 0).await;
    store
        .put_outgoing(&outgoing(&m.id, "m1", OutgoingState::Sent), 0, &lease)
        .await
        .unwrap()
        .unwrap();
    store
        .put_outbox_cursor(&OutboxCursor::new(m.id.clone()), 0, &lease)
        .await
        .unwrap()
        .unwrap();
    store.delete_mailbox(&m.id).await.unwrap();
    assert!(store.list_outgoing(&m.id).await.unwrap().is_empty());
    assert!(store.get_outbox_cursor(&m.id).await.unwrap().is_none());
    assert!(store.list_outbox_cursors().await.unwrap().is_empty());
    let ghost = MailboxId::new();
    let mut lease = lease;
    lease.mailbox_id = ghost.clone();
    assert_eq!(
        store
            .put_outgoing(&outgoing(&ghost, "m1", OutgoingState::Sent), 0, &lease)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::NotFound
    );
    assert_eq!(
        store
            .put_outbox_cursor(&OutboxCursor::new(ghost), 0, &lease)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::NotFound
    );
}

/// A mailbox's send lease and its sync lease are held apart (incoming and
/// outgoing do not wait for each other), and the kind round-trips.
pub async fn send_leases_are_apart_from_sync_leases(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(&*store, "a@example.com").await;
    let sync = store
        .acquire_lease(&m.id, LeaseKind::Sync, "incoming", t(0), t(10))
        .await
        .unwrap()
        .unwrap();
    let send = send_lease(&*store, &m.id, "outgoing", 0).await;
    assert!(
        store
            .acquire_lease(&m.id, LeaseKind::Send, "another", t(1), t(11))
            .await
            .unwrap()
            .is_none()
    );
    let mut leases = store.list_leases().await.unwrap();
    leases.sort_by_key(|l| l.kind);
    assert_eq!(leases, vec![sync.clone(), send.clone()]);
    // Only the send lease fences outgoing writes, not the sync lease.
    assert!(
        store
            .put_outgoing(&outgoing(&m.id, "m1", OutgoingState::Sending), 0, &sync)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .put_outbox_cursor(&OutboxCursor::new(m.id.clone()), 0, &sync)
            .await
            .unwrap()
            .is_none()
    );
}

// ---- end of outgoing sync ----

fn revocation(id: &str, mailbox: &MailboxId, due: Timestamp) -> PendingRevocation {
    PendingRevocation {
        id: id.to_owned(),
        mailbox_id: mailbox.clone(),
        issuer: "https://accounts.google.com".into(),
        client_id: "1234-abc.apps.googleusercontent.com".into(),
        client_secret: Some(Secret::new(format!("client-secret-{id}"))),
        endpoint: "https://oauth2.googleapis.com/revoke".into(),
        token: Secret::new(format!("refresh-token-{id}")),
        token_type_hint: "refresh_token".into(),
        attempts: 1,
        last_error: Some("provider_unavailable".into()),
        created_at: t(0),
        next_attempt_at: due,
    }
}

/// Queued revocations outlive their mailbox, keep their secrets, are
/// claimed only when due (and then not again until the claim runs out),
/// and are rescheduled and deleted by id.
pub async fn revocations_are_queued_claimed_rescheduled_and_deleted(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(store.as_ref(), "revoked@example.com").await;
    let later = revocation("r-later", &m.id, t(100));
    let first = revocation("r-first", &m.id, t(10));
    store.queue_revocation(&later).await.unwrap();
    store.queue_revocation(&first).await.unwrap();
    let duplicate = store.queue_revocation(&first).await.unwrap_err();
    assert_eq!(duplicate.code(), ErrorCode::AlreadyExists);
    // The mailbox goes; its revocations stay.
    store.delete_mailbox(&m.id).await.unwrap();
    let all = store.list_revocations().await.unwrap();
    let ids: Vec<&str> = all.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["r-first", "r-later"], "oldest due first");
    let r = &all[0];
    assert_eq!(r.token.expose(), "refresh-token-r-first");
    assert_eq!(
        r.client_secret.as_ref().unwrap().expose(),
        "client-secret-r-first"
    );
    assert_eq!(r.mailbox_id, m.id);
    assert_eq!(r.endpoint, "https://oauth2.googleapis.com/revoke");
    assert_eq!(r.token_type_hint, "refresh_token");
    assert_eq!(
        (r.attempts, r.last_error.as_deref()),
        (1, Some("provider_unavailable"))
    );
    assert_eq!((r.created_at, r.next_attempt_at), (t(0), t(10)));

    // Nothing is due before its time.
    assert!(
        store
            .claim_revocations(t(5), t(305), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Due: claimed once, reserved until the claim runs out.
    let claimed = store.claim_revocations(t(20), t(320), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, "r-first");
    assert_eq!(claimed[0].token.expose(), "refresh-token-r-first");
    assert!(
        store
            .claim_revocations(t(20), t(320), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // The limit is kept.
    let both = store.claim_revocations(t(400), t(700), 1).await.unwrap();
    assert_eq!(both.len(), 1);
    assert_eq!(
        both[0].id, "r-later",
        "due at 100, before r-first's claim ran out at 320"
    );

    store
        .reschedule_revocation("r-first", 2, "network", t(1000))
        .await
        .unwrap();
    let r = store.list_revocations().await.unwrap();
    let r = r.iter().find(|r| r.id == "r-first").unwrap();
    assert_eq!(
        (r.attempts, r.last_error.as_deref(), r.next_attempt_at),
        (2, Some("network"), t(1000))
    );
    // Unknown ids are ignored.
    store
        .reschedule_revocation("nope", 1, "x", t(1))
        .await
        .unwrap();
    store.delete_revocation("nope").await.unwrap();

    store.delete_revocation("r-first").await.unwrap();
    store.delete_revocation("r-later").await.unwrap();
    assert!(store.list_revocations().await.unwrap().is_empty());
}

/// Concurrent claimers (workers) take each due revocation exactly once.
pub async fn concurrent_revocation_claims_take_each_once(store: Arc<dyn Store>) {
    let m = mailbox_on_new_profile(store.as_ref(), "many@example.com").await;
    for i in 0..24 {
        store
            .queue_revocation(&revocation(&format!("r{i:02}"), &m.id, t(i)))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store.claim_revocations(t(100), t(10_000), 3).await.unwrap();
                if got.is_empty() {
                    break;
                }
                mine.extend(got.into_iter().map(|r| r.id));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    let expected: Vec<String> = (0..24).map(|i| format!("r{i:02}")).collect();
    assert_eq!(all, expected, "every revocation claimed exactly once");
}
