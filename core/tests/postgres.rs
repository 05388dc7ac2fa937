//! The PostgreSQL store beyond the conformance suite: the key check before
//! migrations, workers sharing one schema (capacity under concurrency,
//! opening together), secrets sealed exactly as in SQLite, and
//! `MailSync::open`. Against the test stack's PostgreSQL (started if not
//! running) or the server `MAILSYNC_TEST_POSTGRES_URL` names; each test
//! works in a schema of its own, dropped at its end.

use std::sync::{Arc, OnceLock};

use mailsync::model::{
    MailboxCredentials, MailboxId, MailboxSpec, OAuthApp, ProfileId, Secret, ServerProfile,
    Timestamp,
};
use mailsync::store::{
    Commit, CommitOutcome, DirectoryStore, Grant, GrantChange, GrantStore, PendingAuthorization,
    PendingChange, StateStore,
};
use mailsync::{
    ErrorCode, MailSync, Options, PostgresConfig, PostgresStore, SealKey, SqliteStore, Store,
    StoreConfig,
};
use sqlx::{Connection, Row};

fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("MAILSYNC_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => mailsync_e2e::Stack::get().postgres.url,
    })
}

async fn admin() -> sqlx::PgConnection {
    sqlx::PgConnection::connect(server_url()).await.unwrap()
}

async fn run(conn: &mut sqlx::PgConnection, sql: String) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(conn)
        .await
        .unwrap();
}

/// A schema of the test's own; dropped when the guard is (also when the
/// test fails). Tests run on a multi-threaded runtime.
struct Schema {
    name: String,
}

impl Schema {
    async fn new() -> Schema {
        let name = format!("pgtest_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin().await;
        run(&mut conn, format!("CREATE SCHEMA \"{name}\"")).await;
        conn.close().await.unwrap();
        Schema { name }
    }

    /// The server URL with this schema as the `search_path`.
    fn url(&self) -> String {
        let url = server_url();
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options[search_path]={}", self.name)
    }

    async fn tables(&self) -> Vec<String> {
        let mut conn = admin().await;
        let names = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_catalog.pg_tables WHERE schemaname = $1 ORDER BY 1",
        )
        .bind(&self.name)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        names
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                let mut conn = admin().await;
                run(
                    &mut conn,
                    format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"),
                )
                .await;
                let _ = conn.close().await;
            })
        });
    }
}

fn app() -> OAuthApp {
    OAuthApp::google("1234-abc.apps.googleusercontent.com", "client-secret")
        .for_environment("https://contoso.crm.example.com")
        .unwrap()
}

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_unix_millis(1_800_000_000_000 + seconds * 1000)
}

fn mailbox(email: &str, profile: &ProfileId) -> mailsync::model::Mailbox {
    mailsync::model::Mailbox::from_spec(MailboxSpec::user(email), Some(profile.clone()), t(0))
        .unwrap()
}

/// The key is checked before any migration runs: a schema holding only a
/// `key_check` row of another key is refused and left exactly as it was
/// (no migrations table, no tables created).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_changes_nothing() {
    let schema = Schema::new().await;
    let created_with = SealKey::generate().unwrap();
    let sealed = created_with
        .seal("meta:key_check", b"mailsync key check v1")
        .unwrap();
    let mut conn = admin().await;
    run(
        &mut conn,
        format!(
            "CREATE TABLE \"{}\".meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL)",
            schema.name
        ),
    )
    .await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{}\".meta (key, value) VALUES ('key_check', $1)",
        schema.name
    )))
    .bind(&sealed)
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let err = PostgresStore::open(&schema.url(), SealKey::generate().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::SealKeyMismatch, "{err}");
    assert!(
        !err.message().contains(server_url()),
        "no URL (password) in {err}"
    );
    assert_eq!(schema.tables().await, ["meta"], "nothing was migrated");

    // A migrated store refuses the wrong key too, and still opens with its own.
    let full = Schema::new().await;
    let key = SealKey::generate().unwrap();
    let store = PostgresStore::open(&full.url(), key.clone()).await.unwrap();
    let p = store
        .insert_profile(&ServerProfile::gmail("P", app()))
        .await
        .unwrap();
    store.close().await;
    let tables = full.tables().await;
    let err = PostgresStore::open(&full.url(), SealKey::generate().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::SealKeyMismatch, "{err}");
    assert_eq!(full.tables().await, tables);
    let store = PostgresStore::open(&full.url(), key).await.unwrap();
    assert_eq!(store.get_profile(&p.id).await.unwrap(), Some(p));
    store.close().await;
}

/// Workers that open a new schema at the same moment take turns: all
/// succeed, the schema is migrated once, they share one key check.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_opening_a_new_schema_together_take_turns() {
    let schema = Schema::new().await;
    let key = SealKey::generate().unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(6));
    let opening: Vec<_> = (0..6)
        .map(|_| {
            let url = schema.url();
            let key = key.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                PostgresStore::open_with(PostgresConfig::new(url, key).pool_size(2)).await
            })
        })
        .collect();
    let mut stores = Vec::new();
    for task in opening {
        stores.push(task.await.unwrap().unwrap());
    }
    let p = stores[0]
        .insert_profile(&ServerProfile::gmail("P", app()))
        .await
        .unwrap();
    for store in &stores {
        assert_eq!(store.get_profile(&p.id).await.unwrap().as_ref(), Some(&p));
        store.close().await;
    }
    let mut conn = admin().await;
    let migrations: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM \"{}\"._sqlx_migrations",
        schema.name
    )))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    assert_eq!(
        migrations as usize,
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
            .unwrap()
            .count()
    );
}

/// Workers (two stores, two pools) add the 100th mailbox of a profile at
/// the same moment: exactly one succeeds, the others get
/// `capacity_exceeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_adding_the_last_mailbox_at_once_one_succeeds() {
    const RACERS: usize = 8;
    let schema = Schema::new().await;
    let key = SealKey::generate().unwrap();
    let one = Arc::new(
        PostgresStore::open(&schema.url(), key.clone())
            .await
            .unwrap(),
    );
    let two = Arc::new(PostgresStore::open(&schema.url(), key).await.unwrap());
    for round in 0..5 {
        let p = one
            .insert_profile(&ServerProfile::gmail(format!("P{round}"), app()))
            .await
            .unwrap();
        for n in 0..99 {
            one.insert_mailbox(
                &mailbox(&format!("m{n}.{round}@example.com"), &p.id),
                Some(100),
            )
            .await
            .unwrap();
        }
        let start = Arc::new(tokio::sync::Barrier::new(RACERS));
        let tasks: Vec<_> = (0..RACERS)
            .map(|i| {
                let store = if i % 2 == 0 { one.clone() } else { two.clone() };
                let m = mailbox(&format!("last{i}.{round}@example.com"), &p.id);
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    store.insert_mailbox(&m, Some(100)).await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        let added = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(added, 1, "{outcomes:?}");
        for e in outcomes.iter().filter_map(|o| o.as_ref().err()) {
            assert_eq!(e.code(), ErrorCode::CapacityExceeded, "{e}");
        }
        assert_eq!(one.count_mailboxes(&p.id).await.unwrap(), 100);
    }
    one.close().await;
    two.close().await;
}

/// Sealed values written by the SQLite store open in the PostgreSQL store
/// with the same key: the same envelope, the same associated data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_exactly_as_in_sqlite() {
    let key = SealKey::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crm.db");
    let sqlite = SqliteStore::open(&db, key.clone()).await.unwrap();
    let profile = sqlite
        .insert_profile(&ServerProfile::gmail("P", app()))
        .await
        .unwrap();
    let mut spec = MailboxSpec::user("alice@example.com");
    spec.credentials = Some(MailboxCredentials {
        username: "alice".into(),
        password: Some(Secret::new("mailbox-password")),
    });
    let m = mailsync::model::Mailbox::from_spec(spec, Some(profile.id.clone()), t(0)).unwrap();
    let m = sqlite.insert_mailbox(&m, Some(100)).await.unwrap();
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
    let state = sqlite.get_state(&m.id).await.unwrap().unwrap();
    let outcome = sqlite
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
    sqlite.close().await;

    // Copy the rows over as they are, sealed values included.
    let schema = Schema::new().await;
    let pg = PostgresStore::open(&schema.url(), key.clone())
        .await
        .unwrap();
    let mut lite = sqlx::SqliteConnection::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let mut conn = sqlx::PgConnection::connect(&schema.url()).await.unwrap();
    let p =
        sqlx::query("SELECT id, name, name_key, is_default, version, data, secret FROM profiles")
            .fetch_one(&mut lite)
            .await
            .unwrap();
    sqlx::query(
        "INSERT INTO profiles (id, name, name_key, is_default, version, data, secret) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(p.get::<String, _>("id"))
    .bind(p.get::<String, _>("name"))
    .bind(p.get::<String, _>("name_key"))
    .bind(p.get::<bool, _>("is_default"))
    .bind(p.get::<i64, _>("version"))
    .bind(p.get::<String, _>("data"))
    .bind(p.get::<Option<Vec<u8>>, _>("secret"))
    .execute(&mut conn)
    .await
    .unwrap();
    let r = sqlx::query("SELECT id, email, profile_id, version, data, secret FROM mailboxes")
        .fetch_one(&mut lite)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO mailboxes (id, email, profile_id, version, data, secret) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(r.get::<String, _>("id"))
    .bind(r.get::<String, _>("email"))
    .bind(r.get::<Option<String>, _>("profile_id"))
    .bind(r.get::<i64, _>("version"))
    .bind(r.get::<String, _>("data"))
    .bind(r.get::<Option<Vec<u8>>, _>("secret"))
    .execute(&mut conn)
    .await
    .unwrap();
    let g = sqlx::query(
        "SELECT mailbox_id, version, issuer, client_id, token_endpoint, account, scopes, expires_at, \
         obtained_at, access_token, refresh_token FROM grants",
    )
    .fetch_one(&mut lite)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO grants (mailbox_id, version, issuer, client_id, token_endpoint, account, scopes, \
         expires_at, obtained_at, access_token, refresh_token) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(g.get::<String, _>("mailbox_id"))
    .bind(g.get::<i64, _>("version"))
    .bind(g.get::<String, _>("issuer"))
    .bind(g.get::<String, _>("client_id"))
    .bind(g.get::<String, _>("token_endpoint"))
    .bind(g.get::<String, _>("account"))
    .bind(g.get::<String, _>("scopes"))
    .bind(g.get::<Option<i64>, _>("expires_at"))
    .bind(g.get::<i64, _>("obtained_at"))
    .bind(g.get::<Vec<u8>, _>("access_token"))
    .bind(g.get::<Option<Vec<u8>>, _>("refresh_token"))
    .execute(&mut conn)
    .await
    .unwrap();
    let o = sqlx::query(
        "SELECT state_key, mailbox_id, sealed, redirect_uri, created_at, expires_at, issuer, client_id \
         FROM oauth_pending",
    )
    .fetch_one(&mut lite)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO oauth_pending (state_key, mailbox_id, sealed, redirect_uri, created_at, \
         expires_at, issuer, client_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(o.get::<String, _>("state_key"))
    .bind(o.get::<String, _>("mailbox_id"))
    .bind(o.get::<Vec<u8>, _>("sealed"))
    .bind(o.get::<String, _>("redirect_uri"))
    .bind(o.get::<i64, _>("created_at"))
    .bind(o.get::<i64, _>("expires_at"))
    .bind(o.get::<String, _>("issuer"))
    .bind(o.get::<String, _>("client_id"))
    .execute(&mut conn)
    .await
    .unwrap();
    lite.close().await.unwrap();
    conn.close().await.unwrap();

    let back = pg.get_profile(&profile.id).await.unwrap().unwrap();
    assert_eq!(back, profile);
    assert_eq!(
        back.oauth_app()
            .unwrap()
            .client_secret
            .as_ref()
            .unwrap()
            .expose(),
        "client-secret"
    );
    let back = pg.get_mailbox(&m.id).await.unwrap().unwrap();
    assert_eq!(
        back.credentials
            .as_ref()
            .and_then(|c| c.password.as_ref())
            .map(Secret::expose),
        Some("mailbox-password")
    );
    let back = pg.get_grant(&m.id).await.unwrap().unwrap();
    assert_eq!(back.access_token.expose(), "access-1");
    assert_eq!(back.refresh_token.as_ref().unwrap().expose(), "refresh-1");
    let taken = pg.take_pending(&pending.state).await.unwrap().unwrap();
    assert_eq!(taken.pkce_verifier.expose(), "verifier-1");
    pg.close().await;
}

/// `MailSync::open` with `StoreConfig::postgres`: data survives a reopen,
/// a wrong key is refused, a pool of no connections is invalid, and the
/// configuration never shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_sync_opens_a_postgres_store() {
    let schema = Schema::new().await;
    let key = SealKey::generate().unwrap();
    let config = StoreConfig::postgres(schema.url(), key.clone());
    let password = mailsync_password(server_url());
    assert!(
        password.is_empty() || !format!("{config:?}").contains(&password),
        "{config:?} shows the password"
    );
    let sync = MailSync::open(config, Options::default()).await.unwrap();
    let profile = sync
        .directory()
        .create_profile(ServerProfile::gmail("Gmail", app()).default_for_new_mailboxes())
        .await
        .unwrap();
    let m = sync
        .directory()
        .create_mailbox(MailboxSpec::user("alice@example.com"))
        .await
        .unwrap();
    assert_eq!(m.profile_id.as_ref(), Some(&profile.id));
    sync.close().await;

    let sync = MailSync::open(
        PostgresConfig::new(schema.url(), key).pool_size(2).into(),
        Options::default(),
    )
    .await
    .unwrap();
    let back: Vec<MailboxId> = sync
        .directory()
        .list_mailboxes(None)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(back, std::slice::from_ref(&m.id));
    sync.close().await;

    let err = MailSync::open(
        StoreConfig::postgres(schema.url(), SealKey::generate().unwrap()),
        Options::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::SealKeyMismatch, "{err}");
    let err = MailSync::open(
        PostgresConfig::new(schema.url(), SealKey::generate().unwrap())
            .pool_size(0)
            .into(),
        Options::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Validation, "{err}");
}

/// The password part of a `postgres://user:password@host/db` URL.
fn mailsync_password(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or_default();
    let userinfo = rest.split('@').next().unwrap_or_default();
    userinfo.split(':').nth(1).unwrap_or_default().to_owned()
}

/// An unreachable server is `store_unavailable` (transient), not a
/// configuration error.
#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let started = std::time::Instant::now();
    let err = PostgresStore::open_with(
        PostgresConfig::new(
            format!("postgres://mailsync:secret@127.0.0.1:{port}/mailsync"),
            SealKey::generate().unwrap(),
        )
        .acquire_timeout(std::time::Duration::from_secs(1)),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(err.code(), ErrorCode::StoreUnavailable, "{err}");
    assert!(err.is_transient());
    assert!(!err.message().contains("secret"), "{err}");
}

/// The sync store (cursor and message outcomes, written together under the
/// sync lease) behaves the same in all three stores.
async fn sync_store_round_trip(store: Arc<dyn Store>) {
    use mailsync::store::LeaseKind;
    use mailsync::sync::{ImapCursor, MessageRecord, RecordedOutcome, SyncCursor};
    use std::collections::HashSet;

    let p = store
        .insert_profile(&ServerProfile::gmail("P", app()))
        .await
        .unwrap();
    let m = store
        .insert_mailbox(&mailbox("a@example.com", &p.id), Some(100))
        .await
        .unwrap();
    assert!(store.get_cursor(&m.id).await.unwrap().is_none());
    assert!(store.list_cursors().await.unwrap().is_empty());
    let lease = store
        .acquire_lease(&m.id, LeaseKind::Sync, "one", t(0), t(10))
        .await
        .unwrap()
        .unwrap();
    let record = |key: &str, uid: Option<u32>, uidl: Option<&str>, outcome| MessageRecord {
        key: key.into(),
        uid,
        uidl: uidl.map(str::to_owned),
        outcome,
    };
    let mut cursor = SyncCursor::new(m.id.clone());
    cursor.imap = Some(ImapCursor {
        uid_validity: 7,
        last_uid: 2,
        highest_modseq: Some(99),
    });
    cursor.delivered = 1;
    cursor.skipped = 1;
    cursor.last_cycle_at = Some(t(1));
    let first = [
        record("k1", Some(1), None, RecordedOutcome::Stored),
        record("k2", None, Some("u2"), RecordedOutcome::Skipped),
        record("k2", None, Some("u2-again"), RecordedOutcome::Stored),
    ];
    let v1 = store
        .commit_sync(&cursor, 0, &first, &lease)
        .await
        .unwrap()
        .unwrap();
    let stored = store.get_cursor(&m.id).await.unwrap().unwrap();
    assert_eq!(stored.version, v1);
    let mut expected = cursor.clone();
    expected.version = v1;
    assert_eq!(stored, expected);
    assert_eq!(store.list_cursors().await.unwrap(), [expected.clone()]);
    // A stale expected version writes nothing, records included.
    assert!(
        store
            .commit_sync(
                &cursor,
                0,
                &[record("k9", None, None, RecordedOutcome::Stored)],
                &lease
            )
            .await
            .unwrap()
            .is_none()
    );
    cursor.delivered = 2;
    let v2 = store
        .commit_sync(
            &cursor,
            v1,
            &[
                record("k1", Some(1), Some("u1"), RecordedOutcome::Filtered),
                record("k3", Some(3), None, RecordedOutcome::Oversized),
            ],
            &lease,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(v2 > v1);
    let keys: Vec<String> = ["k1", "k2", "k3", "k4", "k9"].map(String::from).to_vec();
    assert_eq!(
        store.recorded_keys(&m.id, &keys).await.unwrap(),
        HashSet::from(["k1", "k2", "k3"].map(String::from))
    );
    assert!(store.recorded_keys(&m.id, &[]).await.unwrap().is_empty());
    let many: Vec<String> = (0..1000)
        .map(|n| format!("x{n}"))
        .chain(["k3".into()])
        .collect();
    assert_eq!(
        store.recorded_keys(&m.id, &many).await.unwrap(),
        HashSet::from(["k3".to_owned()])
    );
    // The first record of a key is kept (k1 had no UIDL, k2's is u2).
    assert_eq!(
        store.recorded_uidls(&m.id).await.unwrap(),
        HashSet::from(["u2".to_owned()])
    );
    // A holder whose lease was taken over cannot write.
    let next = store
        .acquire_lease(&m.id, LeaseKind::Sync, "two", t(11), t(20))
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .commit_sync(&cursor, v2, &[], &lease)
            .await
            .unwrap()
            .is_none()
    );
    let v3 = store
        .commit_sync(&cursor, v2, &[], &next)
        .await
        .unwrap()
        .unwrap();
    assert!(v3 > v2);
    store.delete_mailbox(&m.id).await.unwrap();
    assert!(store.list_cursors().await.unwrap().is_empty());
    assert!(store.recorded_uidls(&m.id).await.unwrap().is_empty());
    assert_eq!(
        store
            .commit_sync(&cursor, v3, &[], &next)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_store_behaves_alike_in_every_store() {
    sync_store_round_trip(Arc::new(mailsync::MemoryStore::new())).await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path().join("crm.db"), SealKey::generate().unwrap())
        .await
        .unwrap();
    sync_store_round_trip(Arc::new(sqlite)).await;
    let schema = Schema::new().await;
    let pg = PostgresStore::open(&schema.url(), SealKey::generate().unwrap())
        .await
        .unwrap();
    sync_store_round_trip(Arc::new(pg.clone())).await;
    pg.close().await;
}
