//! The stack's tools for the sync engine's tests: the `sync01`…`sync20` accounts,
//! `tests/stack/bin/doveadm` (`doveadm who`, UIDVALIDITY changes) and `bin/deliver`'s
//! threading / sender options. See docs/testing.md.
//!
//! Uses `sync20@example.test` (under `account_lock`); its INBOX is left alone except for
//! delivered messages.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mailsync_e2e::wire::{self, Mech};
use mailsync_e2e::{DeliverOpts, OAuthServer, Stack, TokenOpts};

const USER: &str = "sync20@example.test";

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

async fn imap_session(s: &Stack, user: &str, token: &str) -> wire::Conn {
    let mut c = wire::connect_tls(&s.imap.host, s.imap.tls_port).await;
    wire::imap_greeting(&mut c).await;
    let r = wire::imap_auth(
        &mut c,
        Mech::XOAuth2,
        user,
        token,
        &s.imap.host,
        s.imap.tls_port,
    )
    .await;
    assert!(r.ok, "IMAP XOAUTH2 for {user}: {r:?}");
    c
}

async fn wait_connections(user: &str, n: usize) {
    mailsync_e2e::wait_for(
        &format!("{n} IMAP sessions of {user} in doveadm who"),
        Duration::from_secs(10),
        || async { mailsync_e2e::imap_connections(user) == n },
    )
    .await;
}

#[tokio::test]
async fn sync_accounts_log_in_with_tokens_of_both_providers() {
    let _p = mailsync_e2e::provider_shared().await;
    let s = Stack::get();
    let accounts = mailsync_e2e::sync_accounts();
    assert_eq!(accounts.len(), 20);
    assert_eq!(accounts[0], "sync01@example.test");
    assert_eq!(accounts[19], "sync20@example.test");
    for a in &accounts {
        let acct = s.account(a);
        assert!(!acct.imap_pop_disabled, "{a}");
        assert!(!acct.password.is_empty(), "{a}");
        let t = mailsync_e2e::token(a);
        let mut c = imap_session(&s, a, &t.access_token).await;
        wire::imap_cmd(&mut c, "l", "LOGOUT").await;
    }
    // provider 2 knows them too
    let t = mailsync_e2e::token_opts(
        "sync07@example.test",
        &TokenOpts {
            server: OAuthServer::Generic,
            ..TokenOpts::default()
        },
    );
    let mut c = wire::connect_tls(&s.imap.host, s.imap.tls_port).await;
    wire::imap_greeting(&mut c).await;
    let r = wire::imap_auth(
        &mut c,
        Mech::OAuthBearer,
        "sync07@example.test",
        &t.access_token,
        &s.imap.host,
        s.imap.tls_port,
    )
    .await;
    assert!(r.ok, "{r:?}");
}

#[tokio::test]
async fn doveadm_who_counts_imap_sessions() {
    let _p = mailsync_e2e::provider_shared().await;
    let _a = mailsync_e2e::account_lock(USER).await;
    let s = Stack::get();
    wait_connections(USER, 0).await;
    let t = mailsync_e2e::token(USER);
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(imap_session(&s, USER, &t.access_token).await);
    }
    wait_connections(USER, 3).await;
    let mut first = sessions.remove(0);
    wire::imap_cmd(&mut first, "l", "LOGOUT").await;
    drop(first);
    wait_connections(USER, 2).await;
    drop(sessions);
    wait_connections(USER, 0).await;
    let who = mailsync_e2e::doveadm(&["who"]);
    assert!(who.starts_with("username"), "{who}");
}

#[tokio::test]
async fn uid_validity_change_is_seen_over_imap() {
    let _p = mailsync_e2e::provider_shared().await;
    let _a = mailsync_e2e::account_lock(USER).await;
    let s = Stack::get();
    let mailbox = unique("uidvalidity");
    mailsync_e2e::doveadm(&["mailbox", "create", "-u", USER, &mailbox]);
    let before = mailsync_e2e::uid_validity(USER, &mailbox);
    let after = before / 2 + 1;
    let t = mailsync_e2e::token(USER);
    let mut c = imap_session(&s, USER, &t.access_token).await;
    let (lines, done) = wire::imap_cmd(&mut c, "e1", &format!("EXAMINE \"{mailbox}\"")).await;
    assert!(done.contains("OK"), "{done}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("[UIDVALIDITY {before}]"))),
        "{lines:?}"
    );
    wire::imap_cmd(&mut c, "c", "CLOSE").await;

    mailsync_e2e::set_mailbox_uid_validity(USER, &mailbox, after);
    assert_eq!(mailsync_e2e::uid_validity(USER, &mailbox), after);
    let (lines, done) = wire::imap_cmd(&mut c, "e2", &format!("EXAMINE \"{mailbox}\"")).await;
    assert!(done.contains("OK"), "{done}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("[UIDVALIDITY {after}]"))),
        "{lines:?}"
    );
    wire::imap_cmd(&mut c, "l", "LOGOUT").await;
    mailsync_e2e::doveadm(&["mailbox", "delete", "-u", USER, &mailbox]);
}

#[tokio::test]
async fn deliver_sets_threading_headers_and_sender() {
    let _p = mailsync_e2e::provider_shared().await;
    let _a = mailsync_e2e::account_lock(USER).await;
    let root = format!("{}@thread.example", unique("root"));
    let ids = mailsync_e2e::deliver(
        USER,
        1,
        &DeliverOpts {
            in_reply_to: Some(root.clone()),
            references: vec![format!("<{root}>"), "mid.2@thread.example".into()],
            from: Some("Zoe Zed <zoe@outside.example>".into()),
            ..DeliverOpts::default()
        },
    );
    assert_eq!(ids.len(), 1);
    // the message's header, unfolded
    let out = mailsync_e2e::doveadm(&[
        "fetch",
        "-u",
        USER,
        "text",
        "mailbox",
        "INBOX",
        "header",
        "Message-ID",
        &ids[0],
    ])
    .replace("\n ", " ")
    .replace("\n\t", " ");
    assert!(out.contains(&format!("In-Reply-To: <{root}>")), "{out}");
    assert!(
        out.contains(&format!("References: <{root}> <mid.2@thread.example>")),
        "{out}"
    );
    assert!(out.contains("From: Zoe Zed <zoe@outside.example>"), "{out}");
    assert!(out.contains("Return-Path: <zoe@outside.example>"), "{out}");
}
