//! Smoke tests of the local test stack: real OAuth tokens from the consent pages against
//! real Dovecot (IMAP/POP3) and Postfix (submission). See docs/testing.md.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mailsync_e2e::wire::{self, AuthResult, Mech};
use mailsync_e2e::{Stack, TokenSet};

const MAIL_SCOPE: &str = "https://mail.google.com/";
const MECHS: [Mech; 2] = [Mech::XOAuth2, Mech::OAuthBearer];

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

async fn imap_login(s: &Stack, mech: Mech, user: &str, token: &str) -> (wire::Conn, AuthResult) {
    let mut c = wire::connect_tls(&s.imap.host, s.imap.tls_port).await;
    wire::imap_greeting(&mut c).await;
    let r = wire::imap_auth(&mut c, mech, user, token, &s.imap.host, s.imap.tls_port).await;
    (c, r)
}

async fn pop3_login(s: &Stack, mech: Mech, user: &str, token: &str) -> (wire::Conn, AuthResult) {
    let mut c = wire::connect_tls(&s.pop3.host, s.pop3.tls_port).await;
    wire::pop3_greeting(&mut c).await;
    let r = wire::pop3_auth(&mut c, mech, user, token, &s.pop3.host, s.pop3.tls_port).await;
    (c, r)
}

async fn smtp_login(s: &Stack, mech: Mech, user: &str, token: &str) -> (wire::Conn, AuthResult) {
    let mut c = wire::smtp_starttls(&s.smtp.host, s.smtp.starttls_port).await;
    let r = wire::smtp_auth(
        &mut c,
        mech,
        user,
        token,
        &s.smtp.host,
        s.smtp.starttls_port,
    )
    .await;
    (c, r)
}

/// A refused token: the server sent the base64 JSON challenge, we answered it, and the
/// exchange ended with the protocol's failure line.
fn assert_challenge_refusal(proto: &str, mech: Mech, r: &AuthResult) {
    assert!(!r.ok, "{proto} {mech:?}: token accepted: {r:?}");
    let ch = r
        .challenge
        .as_ref()
        .unwrap_or_else(|| panic!("{proto} {mech:?}: no JSON challenge: {r:?}"));
    match mech {
        Mech::XOAuth2 => {
            assert_eq!(ch["status"], "401", "{proto} {mech:?}: {ch}");
            assert_eq!(ch["schemes"], "bearer", "{proto} {mech:?}: {ch}");
        }
        Mech::OAuthBearer => assert_eq!(ch["status"], "invalid_token", "{proto} {mech:?}: {ch}"),
    }
    let expected = match proto {
        "imap" => "A1 NO [AUTHENTICATIONFAILED]",
        "pop3" => "-ERR [AUTH]",
        _ => "535 5.7.8",
    };
    assert!(
        r.final_line.starts_with(expected),
        "{proto} {mech:?}: final line {:?}, want {expected}…",
        r.final_line
    );
}

async fn assert_refused_everywhere(s: &Stack, user: &str, token: &str) {
    // Dovecot answers a failed authentication only after ~0.5 s: run the six exchanges at once.
    let (a, b, c, d, e, f) = tokio::join!(
        imap_login(s, Mech::XOAuth2, user, token),
        imap_login(s, Mech::OAuthBearer, user, token),
        pop3_login(s, Mech::XOAuth2, user, token),
        pop3_login(s, Mech::OAuthBearer, user, token),
        smtp_login(s, Mech::XOAuth2, user, token),
        smtp_login(s, Mech::OAuthBearer, user, token),
    );
    assert_challenge_refusal("imap", Mech::XOAuth2, &a.1);
    assert_challenge_refusal("imap", Mech::OAuthBearer, &b.1);
    assert_challenge_refusal("pop3", Mech::XOAuth2, &c.1);
    assert_challenge_refusal("pop3", Mech::OAuthBearer, &d.1);
    assert_challenge_refusal("smtp", Mech::XOAuth2, &e.1);
    assert_challenge_refusal("smtp", Mech::OAuthBearer, &f.1);
}

fn assert_token_set(t: &TokenSet) {
    assert!(!t.access_token.is_empty());
    assert!(t.refresh_token.is_some(), "no refresh token: {t:?}");
    let scope = t.scope.as_deref().unwrap_or_default();
    assert!(
        scope.split(' ').any(|s| s == MAIL_SCOPE),
        "mail scope missing: {t:?}"
    );
    assert!(t.id_token.is_some(), "no id_token: {t:?}");
}

#[tokio::test]
async fn consent_token_authenticates_imap_pop3_and_smtp() {
    let _p = mailsync_e2e::provider_shared().await;
    let s = Stack::get();
    let user = "alice@example.test";
    let t = mailsync_e2e::token(user);
    assert_token_set(&t);
    for mech in MECHS {
        let (mut c, r) = imap_login(&s, mech, user, &t.access_token).await;
        assert!(r.ok && r.challenge.is_none(), "imap {mech:?}: {r:?}");
        let (_, tagged) = wire::imap_cmd(&mut c, "A2", "SELECT INBOX").await;
        assert!(tagged.starts_with("A2 OK"), "{tagged}");
        wire::imap_cmd(&mut c, "A3", "LOGOUT").await;

        let (mut c, r) = pop3_login(&s, mech, user, &t.access_token).await;
        assert!(r.ok && r.challenge.is_none(), "pop3 {mech:?}: {r:?}");
        c.send("STAT").await;
        let stat = c.line().await;
        assert!(stat.starts_with("+OK"), "{stat}");

        let (mut c, r) = smtp_login(&s, mech, user, &t.access_token).await;
        assert!(r.ok, "smtp starttls {mech:?}: {r:?}");
        assert!(r.final_line.starts_with("235"), "{r:?}");
        wire::smtp_cmd(&mut c, "QUIT").await;

        let mut c = wire::smtp_tls(&s.smtp.host, s.smtp.tls_port).await;
        let r = wire::smtp_auth(
            &mut c,
            mech,
            user,
            &t.access_token,
            &s.smtp.host,
            s.smtp.tls_port,
        )
        .await;
        assert!(r.ok, "smtp implicit tls {mech:?}: {r:?}");
    }
}

#[tokio::test]
async fn revoked_token_is_refused_with_json_challenge() {
    let _p = mailsync_e2e::provider_shared().await;
    let s = Stack::get();
    let user = "bob@example.test";
    let t = mailsync_e2e::token(user);
    let (_c, r) = imap_login(&s, Mech::XOAuth2, user, &t.access_token).await;
    assert!(r.ok, "fresh token refused: {r:?}");
    mailsync_e2e::revoke(&t.access_token);
    let info = mailsync_e2e::introspect(&t.access_token).await;
    assert_eq!(info["active"], false, "revoked token still active");
    // the whole grant is gone (Google-like): the refresh token is dead too
    let refresh = t.refresh_token.as_deref().unwrap();
    assert_eq!(mailsync_e2e::introspect(refresh).await["active"], false);
    assert_refused_everywhere(&s, user, &t.access_token).await;
}

#[tokio::test]
async fn expired_token_is_refused_with_json_challenge() {
    let _p = mailsync_e2e::provider_exclusive().await;
    let _ttl = mailsync_e2e::ShortTokenTtl::set(2);
    let s = Stack::get();
    assert_eq!(s.oauth.access_token_ttl, 2);
    let user = "carol@example.test";
    let t = mailsync_e2e::token(user);
    assert!(t.expires_in.unwrap_or(0) <= 2, "{t:?}");
    let (_c, r) = imap_login(&s, Mech::OAuthBearer, user, &t.access_token).await;
    assert!(r.ok, "fresh token refused: {r:?}");
    let token = t.access_token.clone();
    mailsync_e2e::wait_for("access token expiry", Duration::from_secs(20), || {
        let token = token.clone();
        async move { mailsync_e2e::introspect(&token).await["active"] == false }
    })
    .await;
    assert_refused_everywhere(&s, user, &t.access_token).await;
}

#[tokio::test]
async fn token_without_mail_scope_is_refused() {
    let _p = mailsync_e2e::provider_shared().await;
    let s = Stack::get();
    let user = "carol@example.test";
    let t = mailsync_e2e::token_with(user, &[MAIL_SCOPE]);
    let scope = t.scope.clone().unwrap_or_default();
    assert!(!scope.split(' ').any(|x| x == MAIL_SCOPE), "{t:?}");
    for mech in MECHS {
        let (_c, r) = imap_login(&s, mech, user, &t.access_token).await;
        assert_challenge_refusal("imap", mech, &r);
    }
}

#[tokio::test]
async fn consent_deny_redirects_with_access_denied() {
    let _p = mailsync_e2e::provider_shared().await;
    let s = Stack::get();
    let a = s.account("alice@example.test");
    // a loopback redirect on an arbitrary port (RFC 8252 style) is accepted
    let redirect = "http://127.0.0.1:49999/callback";
    let url = format!(
        "{}?client_id={}&redirect_uri={}&response_type=code&scope={}&state=xyz&access_type=offline&prompt=consent&login_hint={}&include_granted_scopes=true",
        s.oauth.authorization_endpoint,
        mailsync_e2e::form_encode(&s.oauth.client_id),
        mailsync_e2e::form_encode(redirect),
        mailsync_e2e::form_encode(&format!("openid email {MAIL_SCOPE}")),
        mailsync_e2e::form_encode(&a.email),
    );
    let loc = mailsync_e2e::consent(&url, &a.email, &a.password, true);
    assert!(loc.starts_with(redirect), "{loc}");
    assert!(loc.contains("error=access_denied"), "{loc}");
    assert!(loc.contains("state=xyz"), "{loc}");
    let loc = mailsync_e2e::consent(&url, &a.email, &a.password, false);
    assert!(
        loc.starts_with(redirect) && loc.contains("code="),
        "allow gave {loc}"
    );
}

#[tokio::test]
async fn imap_pop_disabled_account_is_refused_with_reason_but_can_submit() {
    let _p = mailsync_e2e::provider_shared().await;
    let s = Stack::get();
    let user = "dave@example.test";
    assert!(s.account(user).imap_pop_disabled);
    let t = mailsync_e2e::token(user);
    for mech in MECHS {
        let (_c, r) = imap_login(&s, mech, user, &t.access_token).await;
        assert!(!r.ok && r.challenge.is_none(), "imap {mech:?}: {r:?}");
        assert_eq!(
            r.final_line, "A1 NO [CONTACTADMIN] IMAP access is disabled for this account",
            "imap {mech:?}"
        );
        let (_c, r) = pop3_login(&s, mech, user, &t.access_token).await;
        assert!(!r.ok && r.challenge.is_none(), "pop3 {mech:?}: {r:?}");
        assert_eq!(
            r.final_line, "-ERR [AUTH] POP access is disabled for this account",
            "pop3 {mech:?}"
        );
        let (_c, r) = smtp_login(&s, mech, user, &t.access_token).await;
        assert!(r.ok, "smtp {mech:?}: {r:?}");
    }
    // a bad token for dave is still a token failure (the token is checked first)
    let (_c, r) = imap_login(&s, Mech::XOAuth2, user, "not-a-token").await;
    assert_challenge_refusal("imap", Mech::XOAuth2, &r);
}

#[tokio::test]
async fn message_submitted_as_alice_is_readable_in_bobs_inbox() {
    let _p = mailsync_e2e::provider_shared().await;
    let s = Stack::get();
    let subject = unique("alice-to-bob");
    let alice = mailsync_e2e::token("alice@example.test");
    let (mut c, r) = smtp_login(&s, Mech::XOAuth2, "alice@example.test", &alice.access_token).await;
    assert!(r.ok, "{r:?}");
    for (cmd, want) in [
        ("MAIL FROM:<alice@example.test>", 250),
        ("RCPT TO:<bob@example.test>", 250),
        ("DATA", 354),
    ] {
        let (code, lines) = wire::smtp_cmd(&mut c, cmd).await;
        assert_eq!(code, want, "{cmd}: {lines:?}");
    }
    let msg = format!(
        "From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.test>\r\n\r\nHello Bob.\r\n."
    );
    let (code, lines) = wire::smtp_cmd(&mut c, &msg).await;
    assert_eq!(code, 250, "{lines:?}");
    wire::smtp_cmd(&mut c, "QUIT").await;

    let bob = mailsync_e2e::token("bob@example.test");
    let (mut c, r) = imap_login(&s, Mech::OAuthBearer, "bob@example.test", &bob.access_token).await;
    assert!(r.ok, "{r:?}");
    let (_, tagged) = wire::imap_cmd(&mut c, "S", "SELECT INBOX").await;
    assert!(tagged.starts_with("S OK"), "{tagged}");
    let mut uid = None;
    for i in 0..100 {
        let (lines, tagged) = wire::imap_cmd(
            &mut c,
            &format!("Q{i}"),
            &format!("UID SEARCH SUBJECT \"{subject}\""),
        )
        .await;
        assert!(tagged.contains("OK"), "{tagged}");
        uid = lines
            .iter()
            .filter_map(|l| l.strip_prefix("* SEARCH"))
            .flat_map(|l| l.split_whitespace())
            .next()
            .map(str::to_string);
        if uid.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, t) = wire::imap_cmd(&mut c, &format!("N{i}"), "NOOP").await;
        assert!(t.contains("OK"));
    }
    let uid = uid.expect("message from alice did not arrive in bob's INBOX within 10 s");
    let (lines, tagged) = wire::imap_cmd(
        &mut c,
        "F",
        &format!("UID FETCH {uid} (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)])"),
    )
    .await;
    assert!(tagged.starts_with("F OK"), "{tagged}");
    let all = lines.join("\n");
    assert!(
        all.contains(&subject) && all.contains("alice@example.test"),
        "{all}"
    );
}

#[tokio::test]
async fn delivered_messages_are_visible_over_imap() {
    let _p = mailsync_e2e::provider_shared().await;
    let s = Stack::get();
    let user = "carol@example.test";
    let prefix = unique("delivered");
    let ids = mailsync_e2e::deliver(
        user,
        3,
        &mailsync_e2e::DeliverOpts {
            size: Some(4000),
            attachment: true,
            non_ascii: true,
            seed: Some(7),
            subject_prefix: Some(prefix.clone()),
        },
    );
    assert_eq!(ids.len(), 3);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 3, "{ids:?}");
    let t = mailsync_e2e::token(user);
    let (mut c, r) = imap_login(&s, Mech::XOAuth2, user, &t.access_token).await;
    assert!(r.ok, "{r:?}");
    wire::imap_cmd(&mut c, "S", "SELECT INBOX").await;
    for (i, id) in ids.iter().enumerate() {
        let (lines, tagged) = wire::imap_cmd(
            &mut c,
            &format!("Q{i}"),
            &format!("UID SEARCH HEADER Message-ID \"{id}\""),
        )
        .await;
        assert!(tagged.contains("OK"), "{tagged}");
        let hits: Vec<_> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("* SEARCH"))
            .flat_map(|l| l.split_whitespace())
            .collect();
        assert_eq!(hits.len(), 1, "{id}: {lines:?}");
    }
}

#[tokio::test]
async fn mail_to_outside_domains_is_not_relayed() {
    let _p = mailsync_e2e::provider_shared().await;
    let s = Stack::get();
    let t = mailsync_e2e::token("alice@example.test");
    let (mut c, r) = smtp_login(&s, Mech::XOAuth2, "alice@example.test", &t.access_token).await;
    assert!(r.ok, "{r:?}");
    let (code, _) = wire::smtp_cmd(&mut c, "MAIL FROM:<alice@example.test>").await;
    assert_eq!(code, 250);
    for rcpt in ["someone@gmail.com", "x@outside.invalid", "root@localhost"] {
        let (code, lines) = wire::smtp_cmd(&mut c, &format!("RCPT TO:<{rcpt}>")).await;
        assert!(
            (500..600).contains(&code),
            "relay to {rcpt} accepted: {lines:?}"
        );
    }
    // unauthenticated submission is refused too
    let mut c = wire::smtp_starttls(&s.smtp.host, s.smtp.starttls_port).await;
    let (code, _) = wire::smtp_cmd(&mut c, "MAIL FROM:<x@outside.invalid>").await;
    if code == 250 {
        let (code, lines) = wire::smtp_cmd(&mut c, "RCPT TO:<bob@example.test>").await;
        assert!((500..600).contains(&code), "unauthenticated: {lines:?}");
    } else {
        assert!((500..600).contains(&code));
    }
}

/// Listening TCP sockets from /proc/net/tcp{,6}: (local ip hex, port).
fn listening_sockets() -> Vec<(String, u16, bool)> {
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[3] != "0A" {
                continue; // not LISTEN
            }
            let (ip, port) = f[1].split_once(':').unwrap();
            out.push((ip.to_string(), u16::from_str_radix(port, 16).unwrap(), v6));
        }
    }
    out
}

#[tokio::test]
async fn all_listeners_are_on_loopback_only() {
    let s = Stack::get();
    let socks = listening_sockets();
    assert!(!socks.is_empty(), "cannot read /proc/net/tcp");
    for (name, port) in s.ports() {
        let mine: Vec<_> = socks.iter().filter(|(_, p, _)| *p == port).collect();
        assert!(!mine.is_empty(), "{name} port {port} is not listening");
        for (ip, _, v6) in mine {
            // 127.0.0.1 in /proc's little-endian hex; no IPv6 or wildcard listeners at all
            assert!(
                !v6 && ip == "0100007F",
                "{name} port {port} listens on {ip} (v6={v6})"
            );
        }
    }
}

#[tokio::test]
async fn provider_stats_and_failure_injection() {
    let _p = mailsync_e2e::provider_exclusive().await;
    let s = Stack::get();
    let t = mailsync_e2e::token("alice@example.test");
    mailsync_e2e::reset_stats().await;
    let refresh = t.refresh_token.clone().unwrap();
    let form = format!(
        "grant_type=refresh_token&refresh_token={}&client_id={}&client_secret={}",
        mailsync_e2e::form_encode(&refresh),
        mailsync_e2e::form_encode(&s.oauth.client_id),
        mailsync_e2e::form_encode(&s.oauth.client_secret)
    );
    mailsync_e2e::inject_failure("refresh_503", 1).await;
    let (status, body) =
        mailsync_e2e::http("POST", &s.oauth.token_endpoint, None, Some(&form)).await;
    assert_eq!(status, 503, "{body}");
    let (status, body) =
        mailsync_e2e::http("POST", &s.oauth.token_endpoint, None, Some(&form)).await;
    assert_eq!(status, 200, "refresh after injected failure");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["access_token"].is_string());
    // not rotated by default (Google-like): the same refresh token keeps working
    let (status, _) = mailsync_e2e::http("POST", &s.oauth.token_endpoint, None, Some(&form)).await;
    assert_eq!(status, 200);
    let stats = mailsync_e2e::stats().await;
    assert_eq!(stats["token_requests"]["refresh_token"], 3, "{stats}");
    assert_eq!(stats["token_requests"]["authorization_code"], 0, "{stats}");

    // introspection unavailable: Dovecot answers a temporary failure without a challenge
    mailsync_e2e::inject_failure("introspection_503", 1).await;
    let (_c, r) = imap_login(&s, Mech::XOAuth2, "alice@example.test", &t.access_token).await;
    assert!(!r.ok && r.challenge.is_none(), "{r:?}");
    assert!(r.final_line.starts_with("A1 NO [UNAVAILABLE]"), "{r:?}");
    mailsync_e2e::inject_failure("clear", 0).await;
}
