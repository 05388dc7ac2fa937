//! Key rotation ([`Store::rotate_key`], [`MailSync::rotate_key`]): every
//! sealed value is re-sealed with the new key in one transaction, nothing is
//! lost, the old key no longer opens the store, a rotation run again is a
//! no-op, and a rotation cut short between the database commit and the key
//! file's rename is finished at the next open. SQLite and PostgreSQL (the
//! test stack's server, or `MAILSYNC_TEST_POSTGRES_URL`).

use std::sync::{Arc, OnceLock};

use mailsync::model::{
    MailboxCredentials, MailboxId, MailboxSpec, OAuthApp, ProfileId, Secret, ServerProfile,
    Timestamp,
};
use mailsync::store::{
    Commit, CommitOutcome, Grant, GrantChange, PendingAuthorization, PendingChange,
    PendingRevocation,
};
use mailsync::{
    ErrorCode, MailSync, Options, PostgresConfig, PostgresStore, SealKey, SqliteStore, Store,
    StoreConfig,
};
use sqlx::Connection;

fn t(seconds: u64) -> Timestamp {
    Timestamp::from_unix_millis(1_800_000_000_000).plus(std::time::Duration::from_secs(seconds))
}

struct Filled {
    profile: ProfileId,
    mailbox: MailboxId,
}

/// Sealed values of every kind: a profile's client secret, a mailbox
/// password, a grant's two tokens, a pending consent, a queued revocation.
/// With the key check, 7 sealed values.
async fn fill(store: &dyn Store) -> Filled {
    let app = OAuthApp::google("1234-abc.apps.googleusercontent.com", "client-secret-1")
        .for_environment("https://contoso.crm.example.com")
        .unwrap();
    let profile = store
        .insert_profile(&ServerProfile::gmail("P", app))
        .await
        .unwrap();
    let mut spec = MailboxSpec::user("alice@example.com");
    spec.credentials = Some(MailboxCredentials {
        username: "alice".into(),
        password: Some(Secret::new("mailbox-password")),
    });
    let m = mailsync::model::Mailbox::from_spec(spec, Some(profile.id.clone()), t(0)).unwrap();
    let m = store.insert_mailbox(&m, Some(100)).await.unwrap();
    let grant = Grant {
        mailbox_id: m.id.clone(),
        issuer: "https://accounts.google.com".into(),
        client_id: "1234-abc.apps.googleusercontent.com".into(),
        token_endpoint: "https://oauth2.googleapis.com/token".into(),
        account: "alice@example.com".into(),
        access_token: Secret::new("access-1"),
        refresh_token: Some(Secret::new("refresh-1")),
        expires_at: Some(t(3600)),
        scopes: vec!["https://mail.google.com/".into()],
        obtained_at: t(0),
        version: 0,
    };
    let pending = PendingAuthorization {
        state: Secret::new("state-1"),
        mailbox_id: m.id.clone(),
        pkce_verifier: Secret::new("verifier-1"),
        redirect_uri: "https://contoso.crm.example.com/_grid/cmds/dlg_gmailoauth.aspx".into(),
        issuer: grant.issuer.clone(),
        client_id: grant.client_id.clone(),
        created_at: t(0),
        expires_at: t(600),
    };
    let state = store.get_state(&m.id).await.unwrap().unwrap();
    let outcome = store
        .commit(&Commit {
            mailbox_id: &m.id,
            expected_state_version: state.version,
            state: None,
            grant: GrantChange::Put {
                grant: &grant,
                expected: None,
            },
            pending: PendingChange::Put(&pending),
            alerts: &[],
        })
        .await
        .unwrap();
    assert!(matches!(outcome, CommitOutcome::Committed { .. }));
    store
        .queue_revocation(&PendingRevocation {
            id: "rev-1".into(),
            mailbox_id: m.id.clone(),
            issuer: grant.issuer.clone(),
            client_id: grant.client_id.clone(),
            client_secret: Some(Secret::new("client-secret-1")),
            endpoint: "https://oauth2.googleapis.com/revoke".into(),
            token: Secret::new("refresh-0"),
            token_type_hint: "refresh_token".into(),
            attempts: 1,
            last_error: None,
            created_at: t(0),
            next_attempt_at: t(60),
        })
        .await
        .unwrap();
    Filled {
        profile: profile.id,
        mailbox: m.id,
    }
}

const SEALED_VALUES: u32 = 7;

/// Every secret reads back as written. Takes the pending consent (last).
async fn verify(store: &dyn Store, filled: &Filled) {
    let profile = store.get_profile(&filled.profile).await.unwrap().unwrap();
    assert_eq!(
        profile
            .oauth_app()
            .unwrap()
            .client_secret
            .as_ref()
            .unwrap()
            .expose(),
        "client-secret-1"
    );
    let m = store.get_mailbox(&filled.mailbox).await.unwrap().unwrap();
    assert_eq!(
        m.credentials.unwrap().password.unwrap().expose(),
        "mailbox-password"
    );
    let g = store.get_grant(&filled.mailbox).await.unwrap().unwrap();
    assert_eq!(g.access_token.expose(), "access-1");
    assert_eq!(g.refresh_token.unwrap().expose(), "refresh-1");
    let r = store.list_revocations().await.unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].token.expose(), "refresh-0");
    assert_eq!(
        r[0].client_secret.as_ref().unwrap().expose(),
        "client-secret-1"
    );
    let p = store
        .take_pending(&Secret::new("state-1"))
        .await
        .unwrap()
        .expect("pending consent kept");
    assert_eq!(p.pkce_verifier.expose(), "verifier-1");
}

/// A host-supplied key: rotate, read everything back, the old key is
/// refused, the new one opens, a second rotation is a no-op, and a third
/// key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rotation_reseals_everything_and_retires_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crm.db");
    let old = SealKey::generate().unwrap();
    let new = SealKey::generate().unwrap();
    let store = SqliteStore::open(&db, old.clone()).await.unwrap();
    let filled = fill(&store).await;
    let done = store.rotate_key(&new).await.unwrap();
    assert_eq!(done.resealed, SEALED_VALUES);
    assert!(!done.already_rotated);
    // Again: already done, nothing re-sealed.
    let again = store.rotate_key(&new).await.unwrap();
    assert!(again.already_rotated);
    assert_eq!(again.resealed, 0);
    store.close().await;

    let refused = SqliteStore::open(&db, old.clone()).await.unwrap_err();
    assert_eq!(refused.code(), ErrorCode::SealKeyMismatch, "{refused}");
    let reopened = SqliteStore::open(&db, new.clone()).await.unwrap();
    verify(&reopened, &filled).await;
    reopened.close().await;

    // The live store reads everything with the key it rotated to.
    let dir2 = tempfile::tempdir().unwrap();
    let db2 = dir2.path().join("crm.db");
    let store = SqliteStore::open(&db2, old.clone()).await.unwrap();
    let filled2 = fill(&store).await;
    let next = SealKey::generate().unwrap();
    store.rotate_key(&next).await.unwrap();
    verify(&store, &filled2).await;
    store.close().await;
}

/// A store whose key opens nothing is refused with `seal_key_mismatch`
/// and left unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_from_a_wrong_key_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crm.db");
    let key = SealKey::generate().unwrap();
    let store = SqliteStore::open(&db, key.clone()).await.unwrap();
    let filled = fill(&store).await;
    store.close().await;
    // Tamper: the grant's access token sealed under a third key.
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let third = SealKey::generate().unwrap();
    let g: Vec<u8> = sqlx::query_scalar("SELECT access_token FROM grants")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    sqlx::query("UPDATE grants SET access_token = ?")
        .bind(third.seal("x", b"y").unwrap())
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let store = SqliteStore::open(&db, key.clone()).await.unwrap();
    let e = store
        .rotate_key(&SealKey::generate().unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::SealKeyMismatch, "{e}");
    store.close().await;
    // Restore the grant: everything still opens with the original key.
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE grants SET access_token = ?")
        .bind(g)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let store = SqliteStore::open(&db, key).await.unwrap();
    verify(&store, &filled).await;
    store.close().await;
}

/// The SQLite key file next to the database: `MailSync::rotate_key`
/// replaces it; a rotation cut short after the commit (the new key still
/// in `<db>.key.new`) is finished at the next open, one cut short before
/// the commit is undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_file_follows_the_rotation_and_an_interrupted_one_is_finished() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crm.db");
    let key_path = mailsync::default_key_path(&db);
    let pending_path = {
        let mut p = key_path.as_os_str().to_owned();
        p.push(".new");
        std::path::PathBuf::from(p)
    };
    let sync = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap();
    let filled = fill(sync.store().as_ref()).await;
    let old = SealKey::from_file(&key_path).unwrap();
    let new = SealKey::generate().unwrap();
    let done = sync.rotate_key(new.clone()).await.unwrap();
    assert_eq!(done.resealed, SEALED_VALUES);
    assert!(!pending_path.exists());
    sync.close().await;
    // The key file now holds the new key.
    let sealed = new.seal("probe", b"x").unwrap();
    let in_file = SealKey::from_file(&key_path).unwrap();
    assert!(
        in_file.open("probe", &sealed).is_ok(),
        "the key file holds the new key"
    );
    let refused = SqliteStore::open(&db, old).await.unwrap_err();
    assert_eq!(refused.code(), ErrorCode::SealKeyMismatch);

    // Cut short before the commit: a stray `.key.new` is dropped.
    std::fs::write(&pending_path, [9u8; 32]).unwrap();
    set_private(&pending_path);
    let sync = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap();
    assert!(!pending_path.exists());
    sync.close().await;

    // Cut short after the commit: the store is on the key in `.key.new`.
    let third = [7u8; 32];
    let store = SqliteStore::open(&db, new).await.unwrap();
    store
        .rotate_key(&SealKey::from_bytes(&third).unwrap())
        .await
        .unwrap();
    store.close().await;
    std::fs::write(&pending_path, third).unwrap();
    set_private(&pending_path);
    let sync = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap();
    assert!(!pending_path.exists());
    assert_eq!(std::fs::read(&key_path).unwrap(), third);
    verify(sync.store().as_ref(), &filled).await;
    sync.close().await;
}

fn set_private(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

fn postgres_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("MAILSYNC_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => mailsync_e2e::Stack::get().postgres.url,
    })
}

/// PostgreSQL: the same, in a schema of the test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rotation_reseals_everything_and_retires_the_old_key() {
    let url = postgres_url();
    let schema = format!("rotation_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&mut admin)
        .await
        .unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{sep}options[search_path]={schema}");
    let old = SealKey::generate().unwrap();
    let new = SealKey::generate().unwrap();
    let store = Arc::new(
        PostgresStore::open_with(PostgresConfig::new(&scoped, old.clone()))
            .await
            .unwrap(),
    );
    let filled = fill(store.as_ref()).await;
    let done = store.rotate_key(&new).await.unwrap();
    assert_eq!(done.resealed, SEALED_VALUES);
    assert!(store.rotate_key(&new).await.unwrap().already_rotated);
    store.close().await;
    let refused = PostgresStore::open(&scoped, old).await.unwrap_err();
    assert_eq!(refused.code(), ErrorCode::SealKeyMismatch, "{refused}");
    let reopened = PostgresStore::open(&scoped, new).await.unwrap();
    verify(&reopened, &filled).await;
    reopened.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    admin.close().await.unwrap();
}
