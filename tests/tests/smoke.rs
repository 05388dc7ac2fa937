//! Smoke tests of the local test stack: real OAuth tokens from the consent pages against
//! real Dovecot (IMAP/POP3) and Postfix (submission). See docs/testing.md.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mailsync_e2e::wire::{self, AuthResult, Mech};
use mailsync_e2e::{OAuthServer, Stack, TokenOpts, TokenSet};

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
    // Revocation reaches every grant of the account for the client (Google-like), so not
    // bob's `web` grants, which other tests use at the same time: the `rotating` client
    // (no other test uses it for bob; its tokens log in like any other).
    let t = mailsync_e2e::token_client(user, "rotating");
    let (_c, r) = imap_login(&s, Mech::XOAuth2, user, &t.access_token).await;
    assert!(r.ok, "fresh token refused: {r:?}");
    mailsync_e2e::revoke_with(&t.access_token, OAuthServer::Google, "rotating");
    let info = mailsync_e2e::introspect(&t.access_token).await;
    assert_eq!(info["active"], false, "revoked token still active");
    // the whole grant is gone (Google-like): the refresh token is dead too
    let refresh = t.refresh_token.as_deref().unwrap();
    assert_eq!(mailsync_e2e::introspect(refresh).await["active"], false);
    assert_refused_everywhere(&s, user, &t.access_token).await;
}

/// Like Google, on both providers: revoking one token revokes every grant the account holds
/// for that client (also those of other, separate consents), and nothing of other accounts.
/// dave is the revoked account: no other test uses dave with these clients (the revocation
/// would reach their grants).
#[tokio::test]
async fn revoking_a_token_revokes_every_grant_of_the_account_for_the_client() {
    let _p = mailsync_e2e::provider_shared().await;
    let cases = [
        // Google-like: revoke the first consent's refresh token (its 5 s access token could
        // expire before the revocation; an expired token is not revocable)
        (
            OAuthServer::Google,
            "short_rotating",
            "bob@example.test",
            true,
        ),
        // generic: revoke the first consent's access token
        (OAuthServer::Generic, "web", "carol@example.test", false),
    ];
    for (server, client, other_user, revoke_refresh) in cases {
        let opts = TokenOpts {
            server,
            client: Some(client),
            ..TokenOpts::default()
        };
        let user = "dave@example.test";
        // two separate consents (each `token` run has its own browser session: two grants)
        let first = mailsync_e2e::token_opts(user, &opts);
        let second = mailsync_e2e::token_opts(user, &opts);
        let other = mailsync_e2e::token_opts(other_user, &opts);
        let first_refresh = first.refresh_token.clone().expect("refresh token");
        let second_refresh = second.refresh_token.clone().expect("refresh token");
        let other_refresh = other.refresh_token.clone().expect("refresh token");
        assert_ne!(first_refresh, second_refresh);
        assert_eq!(
            mailsync_e2e::introspect_at(server, &second_refresh).await["active"],
            true,
            "{server:?}: second consent's refresh token not active before the revocation"
        );

        let revoked = if revoke_refresh {
            &first_refresh
        } else {
            &first.access_token
        };
        mailsync_e2e::revoke_with(revoked, server, client);

        // the second consent's grant is gone too: its refresh token is refused
        let (status, v) = mailsync_e2e::refresh_grant(server, client, &second_refresh).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (400, Some("invalid_grant")),
            "{server:?}: the second consent survived the revocation of the first"
        );
        assert_eq!(
            mailsync_e2e::introspect_at(server, &second_refresh).await["active"],
            false,
            "{server:?}"
        );
        if !revoke_refresh {
            // (long-lived access tokens only: a 5 s one may just have expired)
            assert_eq!(
                mailsync_e2e::introspect_at(server, &second.access_token).await["active"],
                false,
                "{server:?}: second consent's access token still active"
            );
        }
        let (status, v) = mailsync_e2e::refresh_grant(server, client, &first_refresh).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (400, Some("invalid_grant")),
            "{server:?}"
        );
        // another account's grant for the same client is untouched
        let (status, v) = mailsync_e2e::refresh_grant(server, client, &other_refresh).await;
        assert_eq!(
            status, 200,
            "{server:?}: {other_user}'s grant was revoked too: {}",
            v["error"]
        );
    }
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
            ..Default::default()
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

/// `refresh_hang`: a held refresh request never reaches oidc-provider. A client that gives up
/// leaves the (rotating) refresh token unspent; `release` answers a still-held one with 503.
/// dave on the `rotating` client: no other test uses that pair.
#[tokio::test]
async fn held_refresh_is_never_processed_and_leaves_the_refresh_token_usable() {
    use mailsync_e2e::stat;
    let _p = mailsync_e2e::provider_exclusive().await;
    let s = Stack::get();
    let client = "rotating";
    let client_id = s.oauth.client(client).client_id.clone();
    let t = mailsync_e2e::token_client("dave@example.test", client);
    let r1 = t.refresh_token.clone().expect("refresh token");
    let before = mailsync_e2e::stats().await;

    // 1. held; the client gives up after 1 s; the provider drops the request unprocessed
    mailsync_e2e::hold_refreshes(client, 1).await;
    let answer = mailsync_e2e::refresh_grant_within(
        OAuthServer::Google,
        client,
        &r1,
        Duration::from_secs(1),
    )
    .await;
    assert!(
        answer.is_none(),
        "held refresh was answered: {:?}",
        answer.map(|(status, v)| (status, v["error"].clone()))
    );
    let dropped = stat(&before, "held_refresh_requests_dropped");
    mailsync_e2e::wait_for(
        "the held request to be dropped",
        Duration::from_secs(10),
        || async {
            stat(
                &mailsync_e2e::stats().await,
                "held_refresh_requests_dropped",
            ) == dropped + 1
        },
    )
    .await;

    // 2. held again; `release` answers it with 503
    mailsync_e2e::hold_refreshes(client, 1).await;
    let waiting = {
        let r1 = r1.clone();
        tokio::spawn(async move {
            mailsync_e2e::refresh_grant_within(
                OAuthServer::Google,
                client,
                &r1,
                Duration::from_secs(15),
            )
            .await
        })
    };
    mailsync_e2e::wait_for(
        "the request to be held",
        Duration::from_secs(10),
        || async {
            stat(
                &mailsync_e2e::stats().await,
                "held_refresh_requests_pending",
            ) == 1
        },
    )
    .await;
    mailsync_e2e::release_held_refreshes().await;
    let (status, v) = waiting.await.unwrap().expect("released request answered");
    assert_eq!(
        (status, v["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "released held request"
    );

    // 3. the refresh token was never used: it refreshes now (and is rotated now)
    let (status, v) = mailsync_e2e::refresh_grant(OAuthServer::Google, client, &r1).await;
    assert_eq!(
        status, 200,
        "refresh token spent by a held request: {}",
        v["error"]
    );
    assert!(v["refresh_token"].as_str().is_some_and(|r2| r2 != r1));

    let after = mailsync_e2e::stats().await;
    let delta = |k: &str| stat(&after, k) - stat(&before, k);
    assert_eq!(delta("held_refresh_requests"), 2, "{after}");
    assert_eq!(delta("held_refresh_requests_dropped"), 1, "{after}");
    assert_eq!(delta("held_refresh_requests_released"), 1, "{after}");
    assert_eq!(stat(&after, "held_refresh_requests_pending"), 0, "{after}");
    // only the last request reached oidc-provider
    assert_eq!(
        mailsync_e2e::client_token_requests(&after, &client_id, "refresh_token")
            - mailsync_e2e::client_token_requests(&before, &client_id, "refresh_token"),
        1,
        "{}",
        after["token_requests_by_client"]
    );
}

/// `refresh_delay`: oidc-provider processes the refresh at once (the rotating refresh token is
/// spent), only the answer waits. A client that waits gets it after the delay; a client that
/// gives up during the delay has lost the new refresh token while the old one is spent.
/// dave on the `rotating` client: no other test uses that pair (the final replay revokes
/// dave's grants for the client).
#[tokio::test]
async fn delayed_refresh_is_processed_at_once_and_its_answer_can_be_lost() {
    use mailsync_e2e::stat;
    let _p = mailsync_e2e::provider_exclusive().await;
    let s = Stack::get();
    let client = "rotating";
    let client_id = s.oauth.client(client).client_id.clone();
    let t = mailsync_e2e::token_client("dave@example.test", client);
    let r1 = t.refresh_token.clone().expect("refresh token");
    // a second, separate consent: the final replay revokes it too (Google-like)
    let sibling = mailsync_e2e::token_client("dave@example.test", client);
    let before = mailsync_e2e::stats().await;

    // a client that waits: the answer comes, after the delay
    let delay = Duration::from_millis(1500);
    mailsync_e2e::delay_refreshes(client, 1, delay).await;
    let started = std::time::Instant::now();
    let (status, v) = mailsync_e2e::refresh_grant_within(
        OAuthServer::Google,
        client,
        &r1,
        Duration::from_secs(15),
    )
    .await
    .expect("delayed answer");
    assert!(
        started.elapsed() >= delay,
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(status, 200, "delayed refresh: {}", v["error"]);
    let r2 = v["refresh_token"].as_str().expect("rotated").to_string();
    assert_ne!(r2, r1);

    // a client that gives up after 1 s of a 10 s delay
    mailsync_e2e::delay_refreshes(client, 1, Duration::from_secs(10)).await;
    let answer = mailsync_e2e::refresh_grant_within(
        OAuthServer::Google,
        client,
        &r2,
        Duration::from_secs(1),
    )
    .await;
    assert!(
        answer.is_none(),
        "answered within the delay: {:?}",
        answer.map(|(status, v)| (status, v["error"].clone()))
    );
    // lost = processed by oidc-provider and the client gone (bounded poll, no sleep)
    let lost = stat(&before, "delayed_refresh_responses_lost");
    mailsync_e2e::wait_for(
        "the delayed answer to be lost",
        Duration::from_secs(10),
        || async {
            stat(
                &mailsync_e2e::stats().await,
                "delayed_refresh_responses_lost",
            ) == lost + 1
        },
    )
    .await;
    // the provider rotated already: r2 is spent
    let (status, v) = mailsync_e2e::refresh_grant(OAuthServer::Google, client, &r2).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "the refresh token survived a delayed (processed) refresh"
    );
    // that replay revoked every grant of dave for the client, the other consent's too
    let (status, v) = mailsync_e2e::refresh_grant(
        OAuthServer::Google,
        client,
        sibling.refresh_token.as_deref().expect("refresh token"),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "a separate consent survived the replay of a spent refresh token"
    );

    let after = mailsync_e2e::stats().await;
    let delta = |k: &str| stat(&after, k) - stat(&before, k);
    assert_eq!(delta("delayed_refresh_requests"), 2, "{after}");
    assert_eq!(delta("delayed_refresh_responses_delivered"), 1, "{after}");
    assert_eq!(delta("delayed_refresh_responses_lost"), 1, "{after}");
    assert_eq!(
        stat(&after, "delayed_refresh_responses_pending"),
        0,
        "{after}"
    );
    // all four reached oidc-provider
    assert_eq!(
        mailsync_e2e::client_token_requests(&after, &client_id, "refresh_token")
            - mailsync_e2e::client_token_requests(&before, &client_id, "refresh_token"),
        4,
        "{}",
        after["token_requests_by_client"]
    );
}

// ------------------------------------------------------------------ per-client token behaviour
//
// The Google-like provider has extra web clients with their own token behaviour (stack.json
// oauth.clients), so these tests share the provider instead of restarting it exclusively.

/// Poll introspection (bounded) until the access token is inactive.
async fn wait_until_expired(token: &str) {
    let token = token.to_string();
    mailsync_e2e::wait_for("access token expiry", Duration::from_secs(20), || {
        let token = token.clone();
        async move { mailsync_e2e::introspect(&token).await["active"] == false }
    })
    .await;
}

#[tokio::test]
async fn short_client_token_logs_in_then_expires_without_a_provider_restart() {
    let _p = mailsync_e2e::provider_shared().await;
    let s = Stack::get();
    let c = s.oauth.client("short");
    assert_eq!(c.access_token_ttl, 5, "{c:?}");
    assert!(!c.rotate_refresh_tokens, "{c:?}");
    assert_ne!(c.client_id, s.oauth.client_id);
    let provider_pid = s.pids["provider"];
    let user = "bob@example.test";
    let t = mailsync_e2e::token_client(user, "short");
    assert_token_set(&t);
    assert!(t.expires_in.is_some_and(|e| e <= 5), "{t:?}");
    let (_c, r) = imap_login(&s, Mech::XOAuth2, user, &t.access_token).await;
    assert!(
        r.ok && r.challenge.is_none(),
        "fresh short-lived token refused: {r:?}"
    );
    wait_until_expired(&t.access_token).await;
    let (_c, r) = imap_login(&s, Mech::XOAuth2, user, &t.access_token).await;
    assert_challenge_refusal("imap", Mech::XOAuth2, &r);
    // the refresh token still works and is not rotated; the new access token is short too
    let refresh = t.refresh_token.clone().unwrap();
    let (status, v) = mailsync_e2e::refresh_grant(OAuthServer::Google, "short", &refresh).await;
    assert_eq!(status, 200, "refresh: {}", v["error"]);
    assert!(
        v["refresh_token"].is_null() || v["refresh_token"] == refresh.as_str(),
        "short client rotated its refresh token"
    );
    assert!(
        v["expires_in"].as_u64().is_some_and(|e| e <= 5),
        "{}",
        v["expires_in"]
    );
    let fresh = v["access_token"].as_str().expect("access_token");
    let (_c, r) = imap_login(&s, Mech::OAuthBearer, user, fresh).await;
    assert!(r.ok, "refreshed short-lived token refused: {r:?}");
    // no restart happened
    assert_eq!(Stack::get().pids["provider"], provider_pid);
}

#[tokio::test]
async fn rotating_client_rotates_the_refresh_token_on_every_use() {
    let _p = mailsync_e2e::provider_shared().await;
    let s = Stack::get();
    let c = s.oauth.client("rotating").clone();
    assert!(c.rotate_refresh_tokens, "{c:?}");
    assert_eq!(c.access_token_ttl, 3600, "{c:?}");
    let user = "carol@example.test";
    let t = mailsync_e2e::token_client(user, "rotating");
    assert_token_set(&t);
    let (_c, r) = imap_login(&s, Mech::XOAuth2, user, &t.access_token).await;
    assert!(r.ok, "{r:?}");
    let before = mailsync_e2e::stats().await;

    let r1 = t.refresh_token.clone().unwrap();
    let (status, v) = mailsync_e2e::refresh_grant(OAuthServer::Google, "rotating", &r1).await;
    assert_eq!(status, 200, "refresh: {}", v["error"]);
    let r2 = v["refresh_token"]
        .as_str()
        .expect("rotated refresh token")
        .to_string();
    assert_ne!(r2, r1, "refresh token not rotated");
    let access = v["access_token"].as_str().expect("access_token");
    let (_c, r) = imap_login(&s, Mech::XOAuth2, user, access).await;
    assert!(r.ok, "access token from a rotated refresh refused: {r:?}");

    let (status, v) = mailsync_e2e::refresh_grant(OAuthServer::Google, "rotating", &r2).await;
    assert_eq!(status, 200, "second refresh: {}", v["error"]);
    let r3 = v["refresh_token"]
        .as_str()
        .expect("rotated again")
        .to_string();
    assert!(r3 != r2 && r3 != r1);
    // a spent refresh token is refused
    let (status, v) = mailsync_e2e::refresh_grant(OAuthServer::Google, "rotating", &r1).await;
    assert_eq!(status, 400, "spent refresh token accepted");
    assert_eq!(v["error"], "invalid_grant", "{}", v["error"]);

    // /__stats counts per client: exactly these three refreshes, all by the rotating client
    let after = mailsync_e2e::stats().await;
    let id = &c.client_id;
    let delta = |grant: &str| {
        mailsync_e2e::client_token_requests(&after, id, grant)
            - mailsync_e2e::client_token_requests(&before, id, grant)
    };
    assert_eq!(
        delta("refresh_token"),
        3,
        "{}",
        after["token_requests_by_client"]
    );
    assert_eq!(
        delta("authorization_code"),
        0,
        "{}",
        after["token_requests_by_client"]
    );
    assert!(
        after["token_requests"]["refresh_token"].as_u64().unwrap()
            >= before["token_requests"]["refresh_token"].as_u64().unwrap() + 3,
        "totals not kept: {after}"
    );
}

#[tokio::test]
async fn short_rotating_client_expires_and_rotates() {
    let _p = mailsync_e2e::provider_shared().await;
    let s = Stack::get();
    let c = s.oauth.client("short_rotating");
    assert_eq!(c.access_token_ttl, 5, "{c:?}");
    assert!(c.rotate_refresh_tokens, "{c:?}");
    let user = "alice@example.test";
    let t = mailsync_e2e::token_client(user, "short_rotating");
    assert_token_set(&t);
    assert!(t.expires_in.is_some_and(|e| e <= 5), "{t:?}");
    let (_c, r) = imap_login(&s, Mech::XOAuth2, user, &t.access_token).await;
    assert!(r.ok, "{r:?}");
    wait_until_expired(&t.access_token).await;
    let (_c, r) = imap_login(&s, Mech::XOAuth2, user, &t.access_token).await;
    assert_challenge_refusal("imap", Mech::XOAuth2, &r);
    let r1 = t.refresh_token.clone().unwrap();
    let (status, v) = mailsync_e2e::refresh_grant(OAuthServer::Google, "short_rotating", &r1).await;
    assert_eq!(status, 200, "refresh: {}", v["error"]);
    let r2 = v["refresh_token"].as_str().expect("rotated refresh token");
    assert_ne!(r2, r1, "refresh token not rotated");
    assert!(
        v["expires_in"].as_u64().is_some_and(|e| e <= 5),
        "{}",
        v["expires_in"]
    );
    let (_c, r) = imap_login(&s, Mech::XOAuth2, user, v["access_token"].as_str().unwrap()).await;
    assert!(r.ok, "{r:?}");
}

// ------------------------------------------------------------------ the generic provider
//
// stack.json oauth2_generic ("provider2"): RFC 8414 metadata only, scope "mail", refresh
// tokens only with offline_access, no email in the id_token. Dovecot accepts its tokens too.

#[tokio::test]
async fn generic_provider_has_rfc8414_metadata_and_no_openid_discovery() {
    let s = Stack::get();
    let g = &s.oauth2_generic;
    let (status, _) = mailsync_e2e::http(
        "GET",
        &format!("{}/.well-known/openid-configuration", g.issuer),
        None,
        None,
    )
    .await;
    assert_eq!(status, 404, "generic provider serves OpenID discovery");
    assert_eq!(
        g.metadata_url,
        format!("{}/.well-known/oauth-authorization-server", g.issuer)
    );
    let (status, body) = mailsync_e2e::http("GET", &g.metadata_url, None, None).await;
    assert_eq!(status, 200, "{body}");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["issuer"], g.issuer.as_str(), "{m}");
    assert_eq!(
        m["authorization_endpoint"],
        g.authorization_endpoint.as_str()
    );
    assert_eq!(m["token_endpoint"], g.token_endpoint.as_str());
    assert_eq!(
        m["introspection_endpoint"],
        g.introspection_endpoint.as_str()
    );
    assert_eq!(m["revocation_endpoint"], g.revocation_endpoint.as_str());
    let scopes: Vec<&str> = m["scopes_supported"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(scopes.contains(&g.mail_scope.as_str()), "{scopes:?}");
    assert!(scopes.contains(&"offline_access"), "{scopes:?}");
    assert!(!scopes.contains(&MAIL_SCOPE), "{scopes:?}");
    // the Google-like provider still has its discovery document
    let (status, _) = mailsync_e2e::http("GET", &s.oauth.discovery_url, None, None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn generic_token_authenticates_imap_pop3_and_smtp() {
    let _p = mailsync_e2e::provider_shared().await;
    let s = Stack::get();
    let g = &s.oauth2_generic;
    let user = "bob@example.test";
    let t = mailsync_e2e::token_generic(user);
    let scope = t.scope.clone().unwrap_or_default();
    let granted: BTreeSet<&str> = scope.split(' ').collect();
    assert!(granted.contains(g.mail_scope.as_str()), "{t:?}");
    assert!(granted.contains("offline_access"), "{t:?}");
    assert!(
        t.refresh_token.is_some(),
        "no refresh token with offline_access: {t:?}"
    );
    let info = mailsync_e2e::introspect_at(OAuthServer::Generic, &t.access_token).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["email"], user, "{info}");
    // a token of one server means nothing to the other
    assert_eq!(
        mailsync_e2e::introspect(&t.access_token).await["active"],
        false
    );
    for mech in MECHS {
        let (_c, r) = imap_login(&s, mech, user, &t.access_token).await;
        assert!(r.ok && r.challenge.is_none(), "imap {mech:?}: {r:?}");
        let (_c, r) = pop3_login(&s, mech, user, &t.access_token).await;
        assert!(r.ok && r.challenge.is_none(), "pop3 {mech:?}: {r:?}");
        let (mut c, r) = smtp_login(&s, mech, user, &t.access_token).await;
        assert!(
            r.ok && r.final_line.starts_with("235"),
            "smtp {mech:?}: {r:?}"
        );
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
    // another user's mailbox with this token: refused
    let (_c, r) = imap_login(&s, Mech::XOAuth2, "alice@example.test", &t.access_token).await;
    assert_challenge_refusal("imap", Mech::XOAuth2, &r);
    // revoked at the generic provider (as its client): refused everywhere
    mailsync_e2e::revoke_with(&t.access_token, OAuthServer::Generic, "web");
    let info = mailsync_e2e::introspect_at(OAuthServer::Generic, &t.access_token).await;
    assert_eq!(info["active"], false, "{info}");
    assert_refused_everywhere(&s, user, &t.access_token).await;
}

#[tokio::test]
async fn generic_id_token_has_no_email_but_userinfo_has() {
    let _p = mailsync_e2e::provider_shared().await;
    let s = Stack::get();
    let g = &s.oauth2_generic;
    let user = "carol@example.test";
    let t = mailsync_e2e::token_generic(user);
    let claims = mailsync_e2e::jwt_claims(t.id_token.as_deref().expect("id_token"));
    assert_eq!(claims["iss"], g.issuer.as_str(), "{claims}");
    assert_eq!(claims["aud"], g.client_id.as_str(), "{claims}");
    let sub = claims["sub"].as_str().expect("sub").to_string();
    assert!(!sub.is_empty());
    assert!(
        claims.get("email").is_none(),
        "id_token carries email: {claims}"
    );
    let (status, body) =
        mailsync_e2e::http_bearer("GET", &g.userinfo_endpoint, &t.access_token).await;
    assert_eq!(status, 200, "userinfo: {body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["email"], user, "{info}");
    assert_eq!(info["sub"], sub.as_str(), "{info}");
    // the Google-like provider, for contrast, puts email in the id_token
    let google = mailsync_e2e::token(user);
    let gclaims = mailsync_e2e::jwt_claims(google.id_token.as_deref().unwrap());
    assert_eq!(gclaims["email"], user, "{gclaims}");
}

#[tokio::test]
async fn generic_refresh_token_only_with_offline_access() {
    let _p = mailsync_e2e::provider_shared().await;
    let s = Stack::get();
    let user = "alice@example.test";
    let generic = |scope: Option<&'static str>, uncheck: &'static [&'static str], no_prompt| {
        mailsync_e2e::token_opts(
            user,
            &TokenOpts {
                server: OAuthServer::Generic,
                scope,
                uncheck,
                no_prompt,
                ..TokenOpts::default()
            },
        )
    };
    // not requested
    let t = generic(Some("openid email mail"), &[], false);
    assert!(
        t.refresh_token.is_none(),
        "refresh token without offline_access: {t:?}"
    );
    let (_c, r) = imap_login(&s, Mech::XOAuth2, user, &t.access_token).await;
    assert!(r.ok, "access token without offline_access refused: {r:?}");
    // requested, but unchecked on the consent page
    let t = generic(None, &["offline_access"], false);
    assert!(t.refresh_token.is_none(), "{t:?}");
    // requested without prompt=consent: dropped (OpenID Connect Core 11)
    let t = generic(None, &[], true);
    assert!(t.refresh_token.is_none(), "{t:?}");
    assert!(
        !t.scope
            .as_deref()
            .unwrap_or_default()
            .contains("offline_access"),
        "{t:?}"
    );
    // requested with prompt=consent and granted: a refresh token, which refreshes (not rotated)
    let t = generic(None, &[], false);
    let refresh = t
        .refresh_token
        .clone()
        .expect("refresh token with offline_access");
    let (status, v) = mailsync_e2e::refresh_grant(OAuthServer::Generic, "web", &refresh).await;
    assert_eq!(status, 200, "refresh: {}", v["error"]);
    let (_c, r) = imap_login(&s, Mech::XOAuth2, user, v["access_token"].as_str().unwrap()).await;
    assert!(r.ok, "{r:?}");
    // a generic token without its mail scope is refused by Dovecot
    let t = generic(None, &["mail"], false);
    assert!(
        !t.scope
            .as_deref()
            .unwrap_or_default()
            .split(' ')
            .any(|x| x == "mail"),
        "{t:?}"
    );
    let (_c, r) = imap_login(&s, Mech::XOAuth2, user, &t.access_token).await;
    assert_challenge_refusal("imap", Mech::XOAuth2, &r);
}
