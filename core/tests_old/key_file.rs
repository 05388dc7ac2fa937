//! The embedded store's key file: created only with a new database, never
//! silently replaced.

use mailsync::model::{OAuthApp, ServerProfile};
use mailsync::{ErrorCode, MailSync, default_key_path};

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
    let sync = MailSync::open_sqlite(&db).await.unwrap();
    sync.create_profile(profile()).await.unwrap();
    sync.close().await;
    let key = default_key_path(&db);
    assert!(key.exists());
    std::fs::remove_file(&key).unwrap();

    let err = MailSync::open_sqlite(&db).await.unwrap_err();
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
    let sync = MailSync::open_sqlite(&db).await.unwrap();
    sync.create_profile(profile()).await.unwrap();
    sync.close().await;
    // Truncated (e.g. a failed copy): the key is still there.
    std::fs::write(&db, b"").unwrap();
    let err = MailSync::open_sqlite(&db).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Store, "{err}");
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "nothing written");
}

#[tokio::test]
async fn a_new_database_gets_a_new_key_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crm.db");
    let sync = MailSync::open_sqlite(&db).await.unwrap();
    let created = sync.create_profile(profile()).await.unwrap();
    sync.close().await;
    assert!(default_key_path(&db).exists());
    let sync = MailSync::open_sqlite(&db).await.unwrap();
    let back = sync.get_profile(&created.id).await.unwrap();
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
