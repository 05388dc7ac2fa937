//! # The reference CRM
//!
//! A small CRM web app (axum, server-rendered askama pages, no JavaScript)
//! that embeds mailsync the way a real CRM would, following Dynamics 365's
//! "server-side synchronization with Gmail":
//!
//! * **Settings › Email configuration** (`/admin`): the Google OAuth client
//!   (client id, write-only secret, environment URL with the origin and
//!   redirect URI derived from it), the consent screen's audience and test
//!   users, and the Gmail server profiles with their capacity (n of 100),
//!   default flag and processing options.
//! * **A mailbox** (`/mailboxes/{id}`): Connect to Gmail (consent, then the
//!   redirect back to `/_grid/cmds/dlg_gmailoauth.aspx`), Test & Enable with
//!   its per-step report, each direction's status, the alerts, and the mail
//!   the engine synced into the CRM with its correlation keys.
//! * **Compose and the outbox** (on the mailbox page): a message the user
//!   writes is queued in the CRM's `outbox` table ([`outbox::CrmOutbox`]);
//!   the engine sends it over SMTP from the mailbox, and the page lists
//!   each message's state, Message-ID and last error.
//! * **The sync engine** runs inside the app ([`App::start_engine`]): it
//!   delivers incoming mail into the CRM's own SQLite table
//!   ([`sink::CrmSink`]) and sends the outbox ([`mailsync::Engine::with_outbox`]).
//!
//! Data lives in one directory: `mailsync.db` (+ `mailsync.db.key`, the seal
//! key) for mailsync, `crm.db` for the CRM's own tables.

pub mod outbox;
pub mod session;
pub mod sink;
pub mod store;
pub mod views;
mod web;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use mailsync::sync::EngineHandle;
use mailsync::{Engine, EngineOptions, MailSync, Options, SealKey, StoreConfig};

use crate::outbox::CrmOutbox;
use crate::session::Sessions;
use crate::sink::CrmSink;
use crate::store::CrmDb;

/// Defaults for new profiles when the app runs against the local test
/// stack (its mail servers stand in for Gmail's).
#[derive(Debug, Clone)]
pub struct StackDefaults {
    /// IMAP host.
    pub imap_host: String,
    /// IMAP TLS port.
    pub imap_port: u16,
    /// SMTP host.
    pub smtp_host: String,
    /// SMTP STARTTLS port.
    pub smtp_port: u16,
    /// The stack's web client id (shown as a hint).
    pub client_id: String,
}

/// How the app is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// The app's own base URL, e.g. `http://127.0.0.1:8080` (no trailing `/`):
    /// the default environment URL, so the redirect URI comes back here.
    pub base_url: String,
    /// Set `Secure` on the session cookie (the app is served over https).
    pub secure_cookies: bool,
    /// Running against the local test stack.
    pub stack: Option<StackDefaults>,
}

impl Config {
    /// A config for `base_url` (cookies `Secure` when it is https).
    pub fn new(base_url: &str) -> Config {
        let base_url = base_url.trim_end_matches('/').to_owned();
        Config {
            secure_cookies: base_url.starts_with("https://"),
            base_url,
            stack: None,
        }
    }
}

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The library.
    pub sync: MailSync,
    /// The CRM's own database.
    pub db: CrmDb,
    /// The sync engine, with the CRM's outbox (also used for "Sync now"
    /// and status).
    pub engine: Engine,
    /// Browser sessions.
    pub sessions: Sessions,
    /// Setup.
    pub config: Arc<Config>,
}

/// The app: state plus the router.
pub struct App {
    /// Shared state.
    pub state: AppState,
}

impl App {
    /// Opens (or creates) the app's data in `data_dir`.
    pub async fn open(
        data_dir: &Path,
        config: Config,
        options: Options,
        engine_options: EngineOptions,
    ) -> mailsync::Result<App> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            mailsync::Error::new(
                mailsync::ErrorCode::Store,
                format!("cannot create {}: {e}", data_dir.display()),
            )
        })?;
        let db_path = data_dir.join("mailsync.db");
        let sync = MailSync::open(StoreConfig::sqlite(&db_path), options).await?;
        // The CRM seals its own copy of the client secret with mailsync's key.
        let seal = SealKey::from_file(mailsync::default_key_path(&db_path))?;
        let db = CrmDb::open(&data_dir.join("crm.db"), seal).await?;
        let engine = Engine::with_outbox(
            sync.clone(),
            Arc::new(CrmSink::new(db.clone())),
            Arc::new(CrmOutbox::new(db.clone())),
            engine_options,
        )?;
        Ok(App {
            state: AppState {
                sync,
                db,
                engine,
                sessions: Sessions::default(),
                config: Arc::new(config),
            },
        })
    }

    /// The routes.
    pub fn router(&self) -> Router {
        web::router(self.state.clone())
    }

    /// Starts the sync engine: every due mailbox, checked at least every
    /// `max_idle` (so mailboxes enabled meanwhile are picked up).
    pub fn start_engine(&self, max_idle: Duration) -> EngineHandle {
        self.state.engine.start(max_idle)
    }

    /// Closes the databases.
    pub async fn close(&self) {
        self.state.db.close().await;
        self.state.sync.close().await;
    }
}
