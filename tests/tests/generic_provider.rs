//! An OAuth-provider profile (not the Gmail dialect) against the stack's
//! generic authorization server ("provider2"): RFC 8414 metadata only, its
//! own mail scope, refresh tokens only through `offline_access`, and an id
//! token without `email`, so the account comes from userinfo. Dovecot and
//! Postfix accept its tokens.

use std::time::Duration;

use mailsync::checks::TestOptions;
use mailsync::lifecycle::GrantStatus;
use mailsync::model::{
    Authentication, Endpoint, IncomingEndpoint, IncomingProtocol, MailboxSpec, OAuthApp, Security,
    ServerProfile,
};
use mailsync::{MailSync, Options, StoreConfig, Timestamp};
use mailsync_e2e::Stack;

fn param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generic_provider_profile_connects_tests_and_refreshes() {
    let _p = mailsync_e2e::provider_shared().await;
    let stack = Stack::get();
    let generic = stack.oauth2_generic.clone();
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::default();
    options.extra_root_certs_pem = vec![mailsync_e2e::ca_cert_pem()];
    let sync = MailSync::open(StoreConfig::sqlite(dir.path().join("m.db")), options)
        .await
        .unwrap();
    let app = OAuthApp::web(generic.client_id.clone(), generic.client_secret.clone())
        .for_environment("http://localhost:8765")
        .unwrap();
    let profile = ServerProfile::generic(
        "Generic IMAP",
        IncomingEndpoint {
            protocol: IncomingProtocol::Imap,
            endpoint: Endpoint::new(&stack.imap.host, stack.imap.tls_port, Security::Tls),
        },
        Endpoint::new(
            &stack.smtp.host,
            stack.smtp.starttls_port,
            Security::StartTls,
        ),
        Authentication::OAuthProvider {
            issuer: generic.issuer.clone(),
            app,
            mail_scopes: vec![generic.mail_scope.clone()],
        },
    )
    .default_for_new_mailboxes();
    sync.directory().create_profile(profile).await.unwrap();
    let email = "carol@example.test";
    let mailbox = sync
        .directory()
        .create_mailbox(MailboxSpec::user(email))
        .await
        .unwrap();

    // The consent request speaks OIDC, not Google: offline_access, no access_type.
    let consent = sync.connections().connect(&mailbox.id).await.unwrap();
    let url = url::Url::parse(&consent.url).unwrap();
    assert!(
        url.as_str().starts_with(&generic.authorization_endpoint),
        "RFC 8414 metadata found the authorization endpoint: {url}"
    );
    let scope = param(&url, "scope").unwrap();
    let mut scopes: Vec<&str> = scope.split(' ').collect();
    scopes.sort();
    assert_eq!(scopes, ["email", "mail", "offline_access", "openid"]);
    assert_eq!(param(&url, "prompt").as_deref(), Some("consent"));
    assert_eq!(param(&url, "access_type"), None);
    assert_eq!(param(&url, "include_granted_scopes"), None);
    assert_eq!(
        param(&url, "code_challenge_method").as_deref(),
        Some("S256")
    );

    let password = stack.account(email).password.clone();
    let (u, who) = (url.to_string(), email.to_owned());
    let callback =
        tokio::task::spawn_blocking(move || mailsync_e2e::consent(&u, &who, &password, false))
            .await
            .unwrap();
    // The id token carries no email: the account comes from userinfo.
    let connected = sync.connections().complete(&callback).await.unwrap();
    assert!(
        matches!(&connected.state.grant, GrantStatus::Connected { account, .. } if account == email),
        "{:?}",
        connected.state.grant
    );
    let info = sync
        .connections()
        .grant_info(&mailbox.id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        info.has_refresh_token,
        "offline_access brought a refresh token"
    );
    assert!(info.scopes.iter().any(|s| s == "mail"), "{:?}", info.scopes);
    assert_eq!(info.issuer, generic.issuer.trim_end_matches('/'));
    assert_eq!(info.client_id, generic.client_id);

    let report = sync
        .checks()
        .test_and_enable(&mailbox.id, &TestOptions::default())
        .await
        .unwrap();
    assert!(report.is_success(), "{report:#?}");

    // Refresh through the generic provider's token endpoint.
    let mut t = sync.store().get_grant(&mailbox.id).await.unwrap().unwrap();
    let old = t.access_token.clone();
    t.expires_at = Some(Timestamp::now_utc().minus(Duration::from_secs(60)));
    sync.store()
        .put_grant(&t, t.version, None)
        .await
        .unwrap()
        .expect("grant CAS");
    let fresh = sync.connections().access_token(&mailbox.id).await.unwrap();
    assert_ne!(fresh.token.secret(), &old);
    let report = sync
        .checks()
        .test_and_enable(&mailbox.id, &TestOptions::default())
        .await
        .unwrap();
    assert!(report.is_success(), "{report:#?}");
}

/// A profile for an issuer with no known mail scope must name its scopes.
#[test]
fn an_unknown_issuer_needs_its_mail_scopes() {
    let app = OAuthApp::web("id", "secret")
        .for_environment("https://contoso.crm.example.com")
        .unwrap();
    let incoming = IncomingEndpoint {
        protocol: IncomingProtocol::Imap,
        endpoint: Endpoint::new("imap.example.net", 993, Security::Tls),
    };
    let outgoing = Endpoint::new("smtp.example.net", 587, Security::StartTls);
    let unknown = ServerProfile::generic(
        "P",
        incoming.clone(),
        outgoing.clone(),
        Authentication::OAuthProvider {
            issuer: "https://login.example.net".into(),
            app: app.clone(),
            mail_scopes: Vec::new(),
        },
    );
    let e = unknown.validate().unwrap_err();
    assert_eq!(e.field(), Some("authentication.mail_scopes"));
    let microsoft = ServerProfile::generic(
        "M",
        incoming,
        outgoing,
        Authentication::OAuthProvider {
            issuer: "https://login.microsoftonline.com/common/v2.0".into(),
            app,
            mail_scopes: Vec::new(),
        },
    );
    microsoft.validate().unwrap();
    let scopes = microsoft.authentication.mail_scopes().unwrap();
    assert!(scopes.contains(&"https://outlook.office.com/IMAP.AccessAsUser.All".to_owned()));
}
