//! Events: a subscription yields the current state first, then each change
//! in order; a handler may call back into the library for the same mailbox
//! without deadlocking. Time-based rules read the clock given to `MailSync::open_with_clock`.

use std::sync::Arc;
use std::time::Duration;

use mailsync::lifecycle::{Direction, LifecycleEvent};
use mailsync::model::{MailboxSpec, OAuthApp, ServerProfile, Timestamp};
use mailsync::{Clock, ErrorCode, MailSync, MailboxEventKind, ManualClock, Options, StoreConfig};

async fn instance(clock: Option<Arc<ManualClock>>) -> MailSync {
    let options = Options::default();
    match clock {
        Some(clock) => MailSync::open_with_clock(StoreConfig::memory(), options, clock)
            .await
            .unwrap(),
        None => MailSync::open(StoreConfig::memory(), options)
            .await
            .unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_may_call_back_for_the_same_mailbox() {
    let sync = instance(None).await;
    let mailbox = sync
        .directory()
        .create_mailbox(MailboxSpec::user("a@example.com"))
        .await
        .unwrap();
    let mut sub = sync.subscribe(Some(mailbox.id.clone())).await.unwrap();
    let first = sub.next().await.unwrap();
    assert_eq!(first.kind, MailboxEventKind::Snapshot);
    assert_eq!(first.email, "a@example.com");

    // The handler reacts to "incoming enabled" by enabling outgoing through
    // the library, for the same mailbox, while events are still flowing.
    let handler_sync = sync.clone();
    let id = mailbox.id.clone();
    let handler = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(event) = sub.next().await {
            let state = handler_sync.directory().state(&id).await.unwrap();
            assert!(
                state.version >= event.state.version,
                "events come after their write"
            );
            if event.kind == MailboxEventKind::DirectionEnabled
                && event.direction == Some(Direction::Incoming)
            {
                handler_sync
                    .apply_events(
                        &id,
                        &[LifecycleEvent::TestPassed {
                            direction: Direction::Outgoing,
                        }],
                    )
                    .await
                    .unwrap();
            }
            seen.push((event.kind, event.direction, event.state.version));
            if event.direction == Some(Direction::Outgoing) {
                return seen;
            }
        }
        seen
    });
    sync.apply_events(
        &mailbox.id,
        &[LifecycleEvent::TestPassed {
            direction: Direction::Incoming,
        }],
    )
    .await
    .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), handler)
        .await
        .expect("no deadlock: the handler finished")
        .unwrap();
    assert_eq!(
        seen.iter().map(|(k, d, _)| (*k, *d)).collect::<Vec<_>>(),
        [
            (
                MailboxEventKind::DirectionEnabled,
                Some(Direction::Incoming)
            ),
            (
                MailboxEventKind::DirectionEnabled,
                Some(Direction::Outgoing)
            ),
        ]
    );
    assert!(seen[0].2 < seen[1].2, "in the order they were stored");
}

#[tokio::test]
async fn events_of_one_mailbox_arrive_in_order() {
    let sync = instance(None).await;
    let mailbox = sync
        .directory()
        .create_mailbox(MailboxSpec::user("a@example.com"))
        .await
        .unwrap();
    let other = sync
        .directory()
        .create_mailbox(MailboxSpec::user("b@example.com"))
        .await
        .unwrap();
    let mut mine = sync.subscribe(Some(mailbox.id.clone())).await.unwrap();
    let mut all = sync.subscribe(None).await.unwrap();
    let writers: Vec<_> = (0..20)
        .map(|i| {
            let sync = sync.clone();
            let id = if i % 2 == 0 {
                mailbox.id.clone()
            } else {
                other.id.clone()
            };
            tokio::spawn(async move {
                let event = if i % 4 < 2 {
                    LifecycleEvent::TestPassed {
                        direction: Direction::Incoming,
                    }
                } else {
                    LifecycleEvent::TestFailed {
                        direction: Direction::Incoming,
                        code: ErrorCode::AuthRejected,
                        reason: "refused".into(),
                    }
                };
                sync.apply_events(&id, &[event]).await.unwrap();
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    // Snapshot first, then only changes of this mailbox, versions rising.
    assert_eq!(mine.next().await.unwrap().kind, MailboxEventKind::Snapshot);
    let mut last = 0;
    let final_state = sync.directory().state(&mailbox.id).await.unwrap();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(5), mine.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.mailbox_id, mailbox.id);
        assert!(e.state.version > last, "in order");
        last = e.state.version;
        if last == final_state.version {
            break;
        }
    }
    let snapshots: Vec<_> = [all.next().await.unwrap(), all.next().await.unwrap()]
        .into_iter()
        .map(|e| (e.kind, e.email))
        .collect();
    assert_eq!(
        snapshots,
        [
            (MailboxEventKind::Snapshot, "a@example.com".to_owned()),
            (MailboxEventKind::Snapshot, "b@example.com".to_owned())
        ]
    );
}

/// The consent expiry reads the clock in the options: no sleeping.
#[tokio::test]
async fn consent_expiry_follows_the_clock() {
    let clock = Arc::new(ManualClock::new(Timestamp::from_unix_millis(
        1_800_000_000_000,
    )));
    let sync = instance(Some(clock.clone())).await;
    let app = OAuthApp::google("1234-abc.apps.googleusercontent.com", "secret")
        .for_environment("https://contoso.crm.example.com")
        .unwrap();
    sync.directory()
        .create_profile(ServerProfile::gmail("Gmail", app).default_for_new_mailboxes())
        .await
        .unwrap();
    let mailbox = sync
        .directory()
        .create_mailbox(MailboxSpec::user("a@gmail.com"))
        .await
        .unwrap();
    let consent = sync.connections().connect(&mailbox.id).await.unwrap();
    assert_eq!(
        consent.expires_at,
        clock.now().plus(Duration::from_secs(600))
    );
    let state = url::Url::parse(&consent.url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    clock.advance(Duration::from_secs(601));
    let err = sync
        .connections()
        .complete(&format!("?code=abc&state={state}"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::StateInvalid);
    assert!(err.message().contains("expired"), "{}", err.message());
}
