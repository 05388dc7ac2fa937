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
    Commit, CommitOutcome, Grant, GrantChange, LeaseKind, PendingAuthorization, PendingChange,
    Store,
};
use crate::error::ErrorCode;
use crate::lifecycle::{DirectionStatus, GrantStatus, MailboxState};
use crate::model::{
    Alert, AlertLevel, LastTestResult, Mailbox, MailboxId, MailboxSpec, OAuthApp, ProfileId,
    Secret, ServerProfile, TestOutcome, Timestamp,
};

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
            versions_only_grow_even_after_a_delete,
            profile_test_results_round_trip,
            concurrent_writers_lose_no_update,
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
