//! The directory's rules as users depend on them: Gmail preset, redirect
//! derivation, Google's URI rules, capacity and spill-over, defaults, the
//! Testing audience, secrets at rest, and typed errors for bad input.

use mailsync::model::{
    Endpoint, IncomingDelivery, IncomingProtocol, MailboxSpec, OAuthApp, OutgoingDelivery,
    ProfileId, PublishingStatus, Security, ServerProfile, ServerType, UserType,
};
use mailsync::{ErrorCode, MailSync, Options, SealKey, StoreConfig};

const SECRET: &str = "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lue";
const ENV: &str = "https://contoso.crm.example.com";

fn app() -> OAuthApp {
    OAuthApp::google("1234-abc.apps.googleusercontent.com", SECRET)
        .for_environment(ENV)
        .unwrap()
}

fn gmail(name: &str) -> ServerProfile {
    ServerProfile::gmail(name, app())
}

#[test]
fn gmail_preset_fills_endpoints() {
    let p = gmail("Gmail");
    assert_eq!(p.server_type, ServerType::Gmail);
    assert_eq!(p.incoming.protocol, IncomingProtocol::Imap);
    assert_eq!(
        p.incoming.endpoint,
        Endpoint::new("imap.gmail.com", 993, Security::Tls)
    );
    assert_eq!(
        p.outgoing,
        Endpoint::new("smtp.gmail.com", 587, Security::StartTls)
    );
    assert!(p.authentication.is_oauth());
    assert_eq!(p.mailbox_capacity, 100);
    assert_eq!(p.processing.max_concurrent_connections, 10);

    let pop = gmail("Gmail POP").use_pop3().use_smtp_tls_465();
    assert_eq!(pop.incoming.protocol, IncomingProtocol::Pop3);
    assert_eq!(
        pop.incoming.endpoint,
        Endpoint::new("pop.gmail.com", 995, Security::Tls)
    );
    assert_eq!(
        pop.outgoing,
        Endpoint::new("smtp.gmail.com", 465, Security::Tls)
    );
    pop.validate().unwrap();
}

#[test]
fn for_environment_derives_origin_redirect_and_domain() {
    let app = app();
    assert_eq!(
        app.redirect_uri(),
        Some("https://contoso.crm.example.com/_grid/cmds/dlg_gmailoauth.aspx")
    );
    assert_eq!(app.javascript_origins, vec![ENV.to_string()]);
    assert_eq!(
        app.consent_screen.authorized_domains,
        vec!["example.com".to_string()]
    );
    let custom = OAuthApp::google("id", "s")
        .for_environment_with_path("https://crm.contoso.com/", "/oauth/gmail")
        .unwrap();
    assert_eq!(
        custom.redirect_uri(),
        Some("https://crm.contoso.com/oauth/gmail")
    );
    app.validate().unwrap();
}

#[test]
fn google_uri_rules_give_field_level_errors() {
    let cases = [
        ("http://contoso.crm.example.com/cb", "https"),
        ("https://*.example.com/cb", "wildcard"),
        ("https://contoso.crm.example.com/cb#x", "fragment"),
        ("https://me@contoso.crm.example.com/cb", "user info"),
        ("https://contoso.crm.example.com/a/../cb", "/.."),
    ];
    for (uri, rule) in cases {
        let err = app().with_redirect_uri(uri).validate().unwrap_err();
        assert_eq!(err.code(), ErrorCode::Validation, "{uri}");
        assert_eq!(err.field(), Some("redirect_uris[1]"), "{uri}");
        assert!(err.message().contains(rule), "{uri}: {}", err.message());
    }
    let err = OAuthApp::google("id", "s")
        .for_environment("http://contoso.crm.example.com")
        .unwrap_err();
    assert_eq!(err.field(), Some("environment_url"));
    let err = OAuthApp::google("id", "s")
        .for_environment("https://contoso.crm.example.com/path")
        .unwrap_err();
    assert!(err.message().contains("path"));
    let mut bad_origin = app();
    bad_origin
        .javascript_origins
        .push("https://crm.example.com/?q=1".into());
    assert_eq!(
        bad_origin.validate().unwrap_err().field(),
        Some("javascript_origins[1]")
    );
    let mut missing_domain = app();
    missing_domain.consent_screen.authorized_domains.clear();
    assert_eq!(
        missing_domain.validate().unwrap_err().field(),
        Some("consent_screen.authorized_domains")
    );
}

#[tokio::test]
async fn hundred_mailboxes_fit_and_the_101st_is_refused_or_spills_over() {
    let sync = MailSync::open(StoreConfig::memory(), Options::default())
        .await
        .unwrap();
    let first = sync
        .directory()
        .create_profile(gmail("Gmail A").default_for_new_mailboxes())
        .await
        .unwrap();
    for i in 0..100 {
        sync.directory()
            .create_mailbox(MailboxSpec::user(format!("user{i:03}@example.com")))
            .await
            .unwrap();
    }
    let err = sync
        .directory()
        .create_mailbox(MailboxSpec::user("user100@example.com"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::CapacityExceeded);
    assert!(
        err.message().contains("Gmail A") && err.message().contains("100"),
        "{}",
        err.message()
    );

    // Spill-over with no sibling: the error says none has room.
    let err = sync
        .directory()
        .create_mailbox(MailboxSpec::user("user100@example.com").allow_spill_over())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::CapacityExceeded);
    assert!(err.message().contains("no other profile"));

    // A profile with another client does not take spill-over; one with the same client does.
    let other_client = ServerProfile::gmail(
        "Other client",
        OAuthApp::google("other-id", SECRET)
            .for_environment(ENV)
            .unwrap(),
    );
    sync.directory().create_profile(other_client).await.unwrap();
    let sibling = sync
        .directory()
        .create_profile(gmail("Gmail B"))
        .await
        .unwrap();
    let spilled = sync
        .directory()
        .create_mailbox(MailboxSpec::user("user100@example.com").allow_spill_over())
        .await
        .unwrap();
    assert_eq!(spilled.profile_id, Some(sibling.id.clone()));
    assert_eq!(
        sync.directory()
            .list_mailboxes(Some(&first.id))
            .await
            .unwrap()
            .len(),
        100
    );
}

#[tokio::test]
async fn capacity_holds_under_concurrent_creates_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let sync = MailSync::open(
        StoreConfig::sqlite(dir.path().join("m.db")),
        Options::default(),
    )
    .await
    .unwrap();
    let profile = sync
        .directory()
        .create_profile(
            gmail("Small")
                .with_mailbox_capacity(5)
                .default_for_new_mailboxes(),
        )
        .await
        .unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let sync = sync.clone();
            tokio::spawn(async move {
                sync.directory()
                    .create_mailbox(MailboxSpec::user(format!("u{i}@example.com")))
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), ErrorCode::CapacityExceeded),
        }
    }
    assert_eq!(ok, 5);
    assert_eq!(
        sync.directory()
            .list_mailboxes(Some(&profile.id))
            .await
            .unwrap()
            .len(),
        5
    );
}

#[tokio::test]
async fn a_second_default_replaces_the_first() {
    let sync = MailSync::open(StoreConfig::memory(), Options::default())
        .await
        .unwrap();
    let a = sync
        .directory()
        .create_profile(gmail("A").default_for_new_mailboxes())
        .await
        .unwrap();
    let b = sync
        .directory()
        .create_profile(gmail("B").default_for_new_mailboxes())
        .await
        .unwrap();
    assert_eq!(
        sync.directory()
            .default_profile()
            .await
            .unwrap()
            .unwrap()
            .id,
        b.id
    );
    assert!(
        !sync
            .directory()
            .get_profile(&a.id)
            .await
            .unwrap()
            .default_for_new_mailboxes
    );
    let m = sync
        .directory()
        .create_mailbox(MailboxSpec::user("x@example.com"))
        .await
        .unwrap();
    assert_eq!(m.profile_id, Some(b.id));
    sync.directory().set_default_profile(&a.id).await.unwrap();
    let defaults: Vec<_> = sync
        .directory()
        .list_profiles()
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.default_for_new_mailboxes)
        .collect();
    assert_eq!(defaults.len(), 1);
    assert_eq!(defaults[0].id, a.id);
}

#[tokio::test]
async fn external_testing_accepts_only_test_users() {
    let sync = MailSync::open(StoreConfig::memory(), Options::default())
        .await
        .unwrap();
    let testing = app()
        .with_audience(UserType::External, PublishingStatus::Testing)
        .with_test_users(["alice@gmail.com"]);
    assert_eq!(testing.warnings()[0].code, "testing_refresh_token_expiry");
    sync.directory()
        .create_profile(ServerProfile::gmail("Testing", testing).default_for_new_mailboxes())
        .await
        .unwrap();
    sync.directory()
        .create_mailbox(MailboxSpec::user("Alice@Gmail.com"))
        .await
        .unwrap();
    let err = sync
        .directory()
        .create_mailbox(MailboxSpec::user("mallory@gmail.com"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotATestUser);
    assert!(err.message().contains("mallory@gmail.com") && err.message().contains("test user"));

    let published = app().with_audience(UserType::External, PublishingStatus::Production);
    assert!(published.warnings().is_empty());
    published.ensure_may_connect("anyone@gmail.com").unwrap();
}

#[test]
fn more_than_100_test_users_are_refused() {
    let users: Vec<String> = (0..101).map(|i| format!("t{i}@gmail.com")).collect();
    let err = app().with_test_users(&users).validate().unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation);
    assert_eq!(err.field(), Some("consent_screen.test_users"));
    app().with_test_users(&users[..100]).validate().unwrap();
}

#[tokio::test]
async fn secrets_never_leave_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("secrets.db");
    let sync = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap();
    let profile = sync
        .directory()
        .create_profile(gmail("Gmail"))
        .await
        .unwrap();
    assert!(!format!("{profile:?}").contains(SECRET));
    assert!(!format!("{:?}", profile.oauth_app().unwrap()).contains(SECRET));
    let json = serde_json::to_string(&profile).unwrap();
    assert!(!json.contains(SECRET), "{json}");
    // Round trip: everything but the secret survives serde.
    let back: ServerProfile = serde_json::from_str(&json).unwrap();
    assert!(back.oauth_app().unwrap().client_secret.is_none());
    assert_eq!(back.name, profile.name);
    assert_eq!(back.incoming, profile.incoming);

    // Reopened from disk, the secret is there again.
    drop(sync);
    let sync = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap();
    let reopened = sync.directory().get_profile(&profile.id).await.unwrap();
    assert_eq!(
        reopened
            .oauth_app()
            .unwrap()
            .client_secret
            .as_ref()
            .unwrap()
            .expose(),
        SECRET
    );
    drop(sync);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "secret in clear in {}",
            path.display()
        );
    }
}

#[tokio::test]
async fn wrong_key_fails_clearly_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keyed.db");
    let key = SealKey::generate().unwrap();
    let sync = MailSync::open(
        StoreConfig::sqlite_with_key(&db, key.clone()),
        Options::default(),
    )
    .await
    .unwrap();
    let profile = sync
        .directory()
        .create_profile(gmail("Gmail"))
        .await
        .unwrap();
    sync.close().await;
    let fingerprint = |p: &std::path::Path| {
        use std::hash::{Hash, Hasher};
        let bytes = std::fs::read(p).unwrap();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        (bytes.len(), h.finish())
    };
    let before = fingerprint(&db);
    let err = MailSync::open(
        StoreConfig::sqlite_with_key(&db, SealKey::generate().unwrap()),
        Options::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::SealKeyMismatch);
    assert!(err.message().contains("keyed.db"));
    assert!(
        before == fingerprint(&db),
        "a wrong key must not modify the database file"
    );
    let sync = MailSync::open(StoreConfig::sqlite_with_key(&db, key), Options::default())
        .await
        .unwrap();
    assert_eq!(
        sync.directory()
            .get_profile(&profile.id)
            .await
            .unwrap()
            .name,
        "Gmail"
    );
}

#[tokio::test]
async fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("persist.db");
    let sync = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap();
    let profile = sync
        .directory()
        .create_profile(gmail("Gmail").default_for_new_mailboxes())
        .await
        .unwrap();
    let queue = sync
        .directory()
        .create_mailbox(MailboxSpec::queue("support@example.com", "Support"))
        .await
        .unwrap();
    drop(sync);
    let sync = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap();
    assert_eq!(
        sync.directory().default_profile().await.unwrap().unwrap(),
        profile
    );
    assert_eq!(
        sync.directory()
            .find_mailbox("SUPPORT@example.com")
            .await
            .unwrap(),
        queue
    );
    assert_eq!(
        sync.directory().find_profile("gmail").await.unwrap().id,
        profile.id
    );
}

#[tokio::test]
async fn bad_input_gets_typed_errors() {
    let sync = MailSync::open(StoreConfig::memory(), Options::default())
        .await
        .unwrap();
    let err = sync
        .directory()
        .create_profile(gmail("  "))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.field()),
        (ErrorCode::Validation, Some("name"))
    );
    let err = sync
        .directory()
        .create_profile(gmail(&"x".repeat(101)))
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("name"));
    let mut zero_port = gmail("Zero");
    zero_port.incoming.endpoint.port = 0;
    assert_eq!(
        sync.directory()
            .create_profile(zero_port)
            .await
            .unwrap_err()
            .field(),
        Some("incoming.port")
    );
    let mut plaintext = gmail("Plain");
    plaintext.outgoing.security = Security::Plaintext;
    assert_eq!(
        sync.directory()
            .create_profile(plaintext)
            .await
            .unwrap_err()
            .field(),
        Some("outgoing.security")
    );
    let mut timeout = gmail("Timeout");
    timeout.processing.connection_timeout_secs = 101;
    assert_eq!(
        sync.directory()
            .create_profile(timeout)
            .await
            .unwrap_err()
            .field(),
        Some("processing.connection_timeout_secs")
    );
    let mut conns = gmail("Conns");
    conns.processing.max_concurrent_connections = 301;
    assert_eq!(
        sync.directory()
            .create_profile(conns)
            .await
            .unwrap_err()
            .field(),
        Some("processing.max_concurrent_connections")
    );
    assert_eq!(
        sync.directory()
            .create_profile(gmail("Cap").with_mailbox_capacity(101))
            .await
            .unwrap_err()
            .field(),
        Some("mailbox_capacity")
    );

    for email in ["", "not-an-email", "a@b", "two@@example.com"] {
        let err = sync
            .directory()
            .create_mailbox(MailboxSpec::user(email))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), err.field()),
            (ErrorCode::Validation, Some("email")),
            "{email}"
        );
    }
    let unknown = ProfileId::new();
    let err = sync
        .directory()
        .create_mailbox(MailboxSpec::user("a@example.com").on_profile(unknown.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert!(err.message().contains(unknown.as_str()));
    assert_eq!(
        sync.directory()
            .delete_profile(&unknown)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::NotFound
    );
    assert_eq!(
        sync.directory()
            .find_profile("nope")
            .await
            .unwrap_err()
            .code(),
        ErrorCode::NotFound
    );

    let mut forward = MailboxSpec::forward("fwd@example.com");
    forward.outgoing_delivery = OutgoingDelivery::ServerSideSync;
    assert_eq!(
        sync.directory()
            .create_mailbox(forward)
            .await
            .unwrap_err()
            .field(),
        Some("outgoing_delivery")
    );
    let mut user_delete = MailboxSpec::user("del@example.com");
    user_delete.delete_after_processing = true;
    assert_eq!(
        sync.directory()
            .create_mailbox(user_delete)
            .await
            .unwrap_err()
            .field(),
        Some("delete_after_processing")
    );
    let forward = sync
        .directory()
        .create_mailbox(MailboxSpec::forward("fwd@example.com"))
        .await
        .unwrap();
    assert_eq!(forward.incoming_delivery, IncomingDelivery::ForwardMailbox);
}

#[tokio::test]
async fn profile_in_use_cannot_be_deleted() {
    let sync = MailSync::open(StoreConfig::memory(), Options::default())
        .await
        .unwrap();
    let p = sync
        .directory()
        .create_profile(gmail("Gmail").default_for_new_mailboxes())
        .await
        .unwrap();
    let m = sync
        .directory()
        .create_mailbox(MailboxSpec::user("a@example.com"))
        .await
        .unwrap();
    let err = sync.directory().delete_profile(&p.id).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ProfileInUse);
    assert!(err.message().contains("1 mailbox"));
    sync.directory().delete_mailbox(&m.id).await.unwrap();
    sync.directory().delete_profile(&p.id).await.unwrap();
    assert!(sync.directory().list_profiles().await.unwrap().is_empty());
}

#[tokio::test]
async fn duplicate_names_and_addresses_are_refused() {
    let sync = MailSync::open(StoreConfig::memory(), Options::default())
        .await
        .unwrap();
    sync.directory()
        .create_profile(gmail("Gmail"))
        .await
        .unwrap();
    assert_eq!(
        sync.directory()
            .create_profile(gmail("GMAIL"))
            .await
            .unwrap_err()
            .code(),
        ErrorCode::AlreadyExists
    );
    sync.directory()
        .create_mailbox(MailboxSpec::user("a@example.com"))
        .await
        .unwrap();
    assert_eq!(
        sync.directory()
            .create_mailbox(MailboxSpec::user("A@example.com"))
            .await
            .unwrap_err()
            .code(),
        ErrorCode::AlreadyExists
    );
}

#[tokio::test]
async fn unusable_settings_are_refused_before_the_database_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("never.db");
    let mut settings = Options::default();
    settings.extra_root_certs_pem = vec!["-----BEGIN NOTHING-----\n".into()];
    let err = MailSync::open(
        StoreConfig::sqlite_with_key(&db, SealKey::generate().unwrap()),
        settings,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation);
    let mut settings = Options::default();
    settings.http_timeout_secs = 0;
    let err = MailSync::open(
        StoreConfig::sqlite_with_key(&db, SealKey::generate().unwrap()),
        settings,
    )
    .await
    .unwrap_err();
    assert_eq!(err.field(), Some("http_timeout_secs"));
    assert!(
        !db.exists(),
        "nothing may be created for settings that cannot work"
    );
}

/// Names differing only by surrounding spaces or (Unicode) case are one
/// name, in both stores; names are stored trimmed.
#[tokio::test]
async fn profile_names_ignore_surrounding_spaces_and_case() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = MailSync::open(
        StoreConfig::sqlite(dir.path().join("names.db")),
        Options::default(),
    )
    .await
    .unwrap();
    for sync in [
        MailSync::open(StoreConfig::memory(), Options::default())
            .await
            .unwrap(),
        sqlite,
    ] {
        let v = sync.directory().create_profile(gmail(" V ")).await.unwrap();
        assert_eq!(v.name, "V");
        assert_eq!(sync.directory().find_profile("v ").await.unwrap().id, v.id);
        for clash in ["V", "  v", "V\t"] {
            let err = sync
                .directory()
                .create_profile(gmail(clash))
                .await
                .unwrap_err();
            assert_eq!(err.code(), ErrorCode::AlreadyExists, "{clash:?}");
        }
        sync.directory()
            .create_profile(gmail("Übersee"))
            .await
            .unwrap();
        let err = sync
            .directory()
            .create_profile(gmail("ÜBERSEE"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::AlreadyExists);
        // Renaming onto another profile's name is refused too.
        let mut other = sync.directory().create_profile(gmail("W")).await.unwrap();
        other.name = " übersee ".into();
        let err = sync.directory().update_profile(other).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::AlreadyExists);
        sync.close().await;
    }
}
