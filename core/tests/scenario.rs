//! The scenario every language runs (pytest, node:test and JUnit have the
//! same one): temporary SQLite store, a default Gmail profile derived from
//! the environment URL, 100 mailboxes and a refused 101st, an http redirect
//! refused, the secret never printed, everything back after reopening.

use mailsync::model::{Endpoint, MailboxSpec, OAuthApp, Security, ServerProfile};
use mailsync::{ErrorCode, MailSync, Options, StoreConfig};

const SECRET: &str = "GOCSPX-scenario-secret-0123456789";

#[tokio::test]
async fn four_language_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("scenario.db");
    let sync = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap();

    let app = OAuthApp::google("1234-abc.apps.googleusercontent.com", SECRET)
        .for_environment("https://contoso.crm.example.com")
        .unwrap();
    let profile = sync
        .directory()
        .create_profile(ServerProfile::gmail("Gmail - sales", app).default_for_new_mailboxes())
        .await
        .unwrap();
    assert_eq!(
        profile.incoming.endpoint,
        Endpoint::new("imap.gmail.com", 993, Security::Tls)
    );
    assert_eq!(
        profile.outgoing,
        Endpoint::new("smtp.gmail.com", 587, Security::StartTls)
    );
    assert_eq!(
        profile.oauth_app().unwrap().redirect_uri(),
        Some("https://contoso.crm.example.com/_grid/cmds/dlg_gmailoauth.aspx")
    );

    for i in 0..100 {
        sync.directory()
            .create_mailbox(MailboxSpec::user(format!("user{i:03}@example.com")))
            .await
            .unwrap();
    }
    let full = sync
        .directory()
        .create_mailbox(MailboxSpec::user("user100@example.com"))
        .await
        .unwrap_err();
    assert_eq!(full.code().as_str(), "capacity_exceeded");

    let http = OAuthApp::google("id", "secret")
        .for_environment("http://contoso.crm.example.com")
        .unwrap_err();
    assert_eq!(
        (http.code(), http.field()),
        (ErrorCode::Validation, Some("environment_url"))
    );

    let app = profile.oauth_app().unwrap();
    for shown in [
        format!("{app:?}"),
        format!("{profile:?}"),
        serde_json::to_string(app).unwrap(),
        serde_json::to_string(&profile).unwrap(),
    ] {
        assert!(!shown.contains(SECRET), "secret shown: {shown}");
    }

    sync.close().await;
    let reopened = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap();
    let again = reopened
        .directory()
        .default_profile()
        .await
        .unwrap()
        .expect("default profile survives");
    assert_eq!(again.id, profile.id);
    assert!(again.oauth_app().unwrap().client_secret.is_some());
    assert_eq!(
        reopened
            .directory()
            .list_mailboxes(Some(&profile.id))
            .await
            .unwrap()
            .len(),
        100
    );
    let still_full = reopened
        .directory()
        .create_mailbox(MailboxSpec::user("user100@example.com"))
        .await
        .unwrap_err();
    assert_eq!(still_full.code(), ErrorCode::CapacityExceeded);
}
