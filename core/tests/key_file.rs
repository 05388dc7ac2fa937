//! The embedded store's key file: created only with a new database, never
//! silently replaced.

use mailsync::model::{OAuthApp, ServerProfile};
use mailsync::{ErrorCode, MailSync, Options, StoreConfig, default_key_path};

fn profile() -> ServerProfile {
    let app = OAuthApp::google("1234-abc.apps.googleusercontent.com", "secret")
        .for_environment("https://contoso.crm.example.com")
        .unwrap();
    ServerProfile::gmail("Gmail", app)
}

#[tokio::test]
async fn a_missing_key_file_is_not_recreated_for_an_existing_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crm.db");
    let sync = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap();
    sync.directory().create_profile(profile()).await.unwrap();
    sync.close().await;
    let key = default_key_path(&db);
    assert!(key.exists());
    std::fs::remove_file(&key).unwrap();

    let err = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::SealKeyMismatch, "{err}");
    assert!(err.message().contains("missing"), "{}", err.message());
    assert!(
        !key.exists(),
        "no new key file may appear beside the database"
    );
}

#[tokio::test]
async fn an_empty_database_file_next_to_a_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crm.db");
    let sync = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap();
    sync.directory().create_profile(profile()).await.unwrap();
    sync.close().await;
    // Truncated (e.g. a failed copy): the key is still there.
    std::fs::write(&db, b"").unwrap();
    let err = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Store, "{err}");
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "nothing written");
}

#[tokio::test]
async fn a_new_database_gets_a_new_key_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crm.db");
    let sync = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap();
    let created = sync.directory().create_profile(profile()).await.unwrap();
    sync.close().await;
    assert!(default_key_path(&db).exists());
    let sync = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap();
    let back = sync.directory().get_profile(&created.id).await.unwrap();
    assert_eq!(
        back.oauth_app()
            .unwrap()
            .client_secret
            .as_ref()
            .unwrap()
            .expose(),
        "secret"
    );
    sync.close().await;
}

/// The database, its write-ahead log and its shared-memory file are the
/// owner's alone (0600) from their creation, as is the key file; neither a
/// temporary key file nor anything else is left beside them.
#[cfg(unix)]
#[tokio::test]
async fn database_wal_shm_and_key_are_created_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crm.db");
    let sync = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap();
    sync.directory().create_profile(profile()).await.unwrap();
    let key = default_key_path(&db);
    let with = |suffix: &str| {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        std::path::PathBuf::from(p)
    };
    for path in [db.clone(), with("-wal"), with("-shm"), key.clone()] {
        let meta = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{} must exist while open: {e}", path.display()));
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{}",
            path.display()
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "crm.db",
            "crm.db-shm",
            "crm.db-wal",
            "crm.db.key",
            "crm.db.key.lock"
        ]
    );
    sync.close().await;

    // A database opened with a key of the host's is private too.
    let hosted = dir.path().join("hosted.db");
    let sync = MailSync::open(
        StoreConfig::sqlite_with_key(&hosted, mailsync::SealKey::generate().unwrap()),
        Options::default(),
    )
    .await
    .unwrap();
    sync.directory().create_profile(profile()).await.unwrap();
    assert_eq!(
        std::fs::metadata(&hosted).unwrap().permissions().mode() & 0o777,
        0o600
    );
    sync.close().await;
}

/// A key file that group or others can read is refused when the database
/// opens (`store`), and nothing is changed.
#[cfg(unix)]
#[tokio::test]
async fn a_key_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crm.db");
    let sync = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap();
    sync.directory().create_profile(profile()).await.unwrap();
    sync.close().await;
    let key = default_key_path(&db);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Store, "{err}");
    assert!(err.message().contains("0644"), "{}", err.message());
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o644,
        "left as it was"
    );
}

/// A key file that is a symbolic link is refused (`store`), even when it
/// points at the right key: whoever controls the link controls the key.
#[cfg(unix)]
#[tokio::test]
async fn a_key_file_that_is_a_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crm.db");
    let sync = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap();
    sync.directory().create_profile(profile()).await.unwrap();
    sync.close().await;
    let key = default_key_path(&db);
    let real = dir.path().join("elsewhere.key");
    std::fs::rename(&key, &real).unwrap();
    std::os::unix::fs::symlink(&real, &key).unwrap();
    let err = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Store, "{err}");
    assert!(err.message().contains("link"), "{}", err.message());
    assert!(
        std::fs::symlink_metadata(&key)
            .unwrap()
            .file_type()
            .is_symlink(),
        "left as it was"
    );
}

/// A key file owned by another user is refused (`store`). Needs root to
/// give the file away; skipped otherwise.
#[cfg(unix)]
#[tokio::test]
async fn a_key_file_owned_by_another_user_is_refused() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    if std::fs::metadata(dir.path()).unwrap().uid() != 0 {
        eprintln!("skipped: needs root to chown the key file");
        return;
    }
    let db = dir.path().join("crm.db");
    let sync = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap();
    sync.directory().create_profile(profile()).await.unwrap();
    sync.close().await;
    let key = default_key_path(&db);
    std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
    let err = MailSync::open(StoreConfig::sqlite(&db), Options::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Store, "{err}");
    assert!(err.message().contains("owned"), "{}", err.message());
}
