//! The routes and their handlers. Forms post, the handler acts and
//! redirects (303) to a page that shows the outcome (post/redirect/get);
//! failures are shown with their stable code and next action.

use axum::extract::{Extension, OriginalUri, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use mailsync::checks::TestOptions;
use mailsync::lifecycle::Direction;
use mailsync::model::{
    Authentication, Endpoint, IncomingDelivery, IncomingFilter, IncomingProtocol, Mailbox,
    MailboxId, MailboxSpec, OAuthApp, OutgoingDelivery, ProfileId, PublishingStatus, Secret,
    Security, ServerProfile, UserType,
};
use mailsync::sync::{OutgoingRecord, OutgoingState};
use mailsync::{Error, ErrorCode, Timestamp};
use serde::Deserialize;

use crate::AppState;
use crate::session::{Flash, SessionCtx};
use crate::store::OAuthClientSettings;
use crate::views::{self, *};

/// The redirect path (Dynamics' Gmail OAuth callback).
pub const CALLBACK_PATH: &str = mailsync::model::app::DEFAULT_REDIRECT_PATH;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/mailboxes", post(create_mailbox))
        .route("/mailboxes/{id}", get(mailbox_page))
        .route("/mailboxes/{id}/connect", post(connect))
        .route("/mailboxes/{id}/disconnect", post(disconnect))
        .route("/mailboxes/{id}/test", post(test_and_enable))
        .route("/mailboxes/{id}/sync", post(sync_now))
        .route("/mailboxes/{id}/outbox", post(compose))
        .route("/mailboxes/{id}/settings", post(mailbox_settings))
        .route("/admin", get(admin))
        .route("/admin/client", post(save_client))
        .route("/admin/audience", post(save_audience))
        .route("/admin/profiles", post(create_profile))
        .route(
            "/admin/profiles/{id}",
            get(profile_page).post(save_processing),
        )
        .route("/admin/profiles/{id}/default", post(make_default))
        .route(CALLBACK_PATH, get(oauth_callback))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::session::guard,
        ))
        .with_state(state)
}

/// A failure shown as a page.
struct PageError(Error);

impl From<Error> for PageError {
    fn from(e: Error) -> Self {
        PageError(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = match self.0.code() {
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Validation => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let page = ErrorPage {
            nav: Nav::none(),
            title: "Something went wrong".into(),
            code: self.0.code().as_str().into(),
            message: self.0.message().into(),
            next_action: self.0.next_action().into(),
        };
        (status, views::render(&page)).into_response()
    }
}

type PageResult = Result<Response, PageError>;

async fn not_found() -> Response {
    PageError(Error::new(ErrorCode::NotFound, "no such page")).into_response()
}

fn see_other(path: &str) -> Response {
    Redirect::to(path).into_response()
}

/// Acts, flashes the outcome, and redirects to `back`.
fn outcome<T>(
    app: &AppState,
    session: &SessionCtx,
    result: mailsync::Result<T>,
    ok: impl FnOnce(T) -> String,
    back: &str,
) -> Response {
    let flash = match result {
        Ok(v) => Flash::Notice(ok(v)),
        Err(e) => Flash::error(&e),
    };
    app.sessions.flash(session, flash);
    see_other(back)
}

fn filter_value(f: IncomingFilter) -> &'static str {
    match f {
        IncomingFilter::All => "all",
        IncomingFilter::RepliesToTrackedEmail => "replies_to_tracked_email",
        IncomingFilter::FromKnownRecords => "from_known_records",
        IncomingFilter::None => "none",
    }
}

fn filter_choices(current: IncomingFilter) -> Vec<Choice> {
    [
        (IncomingFilter::All, "All email messages"),
        (
            IncomingFilter::RepliesToTrackedEmail,
            "Email messages in response to CRM email",
        ),
        (
            IncomingFilter::FromKnownRecords,
            "Email messages from CRM leads, contacts and accounts",
        ),
        (IncomingFilter::None, "None"),
    ]
    .into_iter()
    .map(|(f, label)| Choice {
        value: filter_value(f).into(),
        label: label.into(),
        selected: f == current,
    })
    .collect()
}

fn parse_filter(value: &str) -> mailsync::Result<IncomingFilter> {
    match value {
        "all" => Ok(IncomingFilter::All),
        "replies_to_tracked_email" => Ok(IncomingFilter::RepliesToTrackedEmail),
        "from_known_records" => Ok(IncomingFilter::FromKnownRecords),
        "none" => Ok(IncomingFilter::None),
        _ => Err(Error::validation("incoming_filter", "unknown filter")),
    }
}

/// Now, to the whole second (servers stamp arrival in whole seconds).
fn now_seconds() -> Timestamp {
    let ms = Timestamp::now_utc().unix_millis();
    Timestamp::from_unix_millis(ms - ms.rem_euclid(1000))
}

fn parse_time(field: &str, value: &str) -> mailsync::Result<Option<Timestamp>> {
    let value = value.trim();
    if value.is_empty() || value.eq_ignore_ascii_case("any") {
        return Ok(None);
    }
    if value.eq_ignore_ascii_case("now") {
        return Ok(Some(now_seconds()));
    }
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map(|t| Some(Timestamp::from_datetime(t)))
        .map_err(|_| {
            Error::validation(
                field,
                "must be an RFC 3339 time like 2026-01-01T00:00:00Z, now, or empty",
            )
        })
}

fn endpoint_text(e: &Endpoint) -> String {
    let security = match e.security {
        Security::Tls => "TLS",
        Security::StartTls => "STARTTLS",
        Security::Plaintext => "plaintext",
    };
    format!("{}:{} {security}", e.host, e.port)
}

fn profile_kind(p: &ServerProfile) -> String {
    let auth = match &p.authentication {
        Authentication::GmailOAuth { .. } => "Gmail OAuth",
        Authentication::OAuthProvider { .. } => "OAuth",
        Authentication::CredentialsInProfile { .. } => "credentials in profile",
        Authentication::CredentialsPerMailbox {} => "credentials per mailbox",
    };
    format!("{:?}, {auth}", p.server_type)
}

async fn profile_row(app: &AppState, p: &ServerProfile) -> mailsync::Result<ProfileRow> {
    let used = app.sync.directory().mailbox_count(&p.id).await?;
    let o = &p.processing;
    let protocol = match p.incoming.protocol {
        IncomingProtocol::Imap => "IMAP",
        IncomingProtocol::Pop3 => "POP3",
    };
    Ok(ProfileRow {
        id: p.id.as_str().to_owned(),
        name: p.name.clone(),
        kind: profile_kind(p),
        incoming: format!("{protocol} {}", endpoint_text(&p.incoming.endpoint)),
        outgoing: format!("SMTP {}", endpoint_text(&p.outgoing)),
        used,
        capacity: p.mailbox_capacity,
        default: p.default_for_new_mailboxes,
        processing: format!(
            "poll ≥ {} min, ≤ {} connections, timeout {} s, from {}{}{}",
            o.min_polling_interval_minutes,
            o.max_concurrent_connections,
            o.connection_timeout_secs,
            o.process_email_received_after
                .map(|t| t.to_rfc3339_seconds())
                .unwrap_or_else(|| "any time".into()),
            if o.move_failed_to_undeliverable {
                ", failed → Undeliverable"
            } else {
                ""
            },
            if o.alert_owner_on_major_events {
                ", alerts owner"
            } else {
                ""
            },
        ),
    })
}

fn direction_label(d: Direction) -> &'static str {
    match d {
        Direction::Incoming => "incoming",
        Direction::Outgoing => "outgoing",
    }
}

// ---------------------------------------------------------------- home

async fn home(State(app): State<AppState>, Extension(s): Extension<SessionCtx>) -> PageResult {
    let (nav, _) = Nav::new(&s.csrf, app.sessions.take_flash(&s));
    let directory = app.sync.directory();
    let profiles = directory.list_profiles().await?;
    let mut mailboxes = Vec::new();
    for m in directory.list_mailboxes(None).await? {
        let state = directory.state(&m.id).await?;
        let profile = profiles
            .iter()
            .find(|p| Some(&p.id) == m.profile_id.as_ref())
            .map(|p| p.name.clone())
            .unwrap_or_else(|| "—".into());
        mailboxes.push(MailboxRow {
            id: m.id.as_str().to_owned(),
            email: m.email.clone(),
            profile,
            grant: grant_status(&state.grant).0,
            incoming: direction_status(&state.incoming.status).0,
            outgoing: direction_status(&state.outgoing.status).0,
            messages: app.db.message_count(&m.id).await?,
        });
    }
    let mut choices: Vec<Choice> = profiles
        .iter()
        .map(|p| Choice {
            value: p.id.as_str().to_owned(),
            label: p.name.clone(),
            selected: p.default_for_new_mailboxes,
        })
        .collect();
    choices.insert(
        0,
        Choice {
            value: String::new(),
            label: "(the default profile)".into(),
            selected: false,
        },
    );
    Ok(views::render(&HomePage {
        nav,
        mailboxes,
        profiles: choices,
        filters: filter_choices(IncomingFilter::default()),
    }))
}

#[derive(Deserialize)]
struct NewMailbox {
    email: String,
    #[serde(default)]
    profile: String,
    incoming_filter: String,
    process_from_now: Option<String>,
}

async fn create_mailbox(
    State(app): State<AppState>,
    Extension(s): Extension<SessionCtx>,
    Form(form): Form<NewMailbox>,
) -> Response {
    let result = async {
        let mut spec = MailboxSpec::user(form.email.trim());
        spec.incoming_filter = parse_filter(&form.incoming_filter)?;
        if !form.profile.is_empty() {
            spec.profile_id = Some(ProfileId::parse(&form.profile)?);
        }
        if form.process_from_now.is_some() {
            spec.process_email_received_after = Some(now_seconds());
        }
        app.sync.directory().create_mailbox(spec).await
    }
    .await;
    match result {
        Ok(m) => {
            app.sessions.flash(
                &s,
                Flash::Notice(format!(
                    "Mailbox {} created. Next: Connect to Gmail.",
                    m.email
                )),
            );
            see_other(&format!("/mailboxes/{}", m.id.as_str()))
        }
        Err(e) => {
            app.sessions.flash(&s, Flash::error(&e));
            see_other("/")
        }
    }
}

// ---------------------------------------------------------------- admin

/// The app built from the admin's settings (`secret` stands in when none is
/// stored yet, to derive and check the rest).
fn build_app(settings: &OAuthClientSettings, secret: Secret) -> mailsync::Result<OAuthApp> {
    Ok(OAuthApp::google(settings.client_id.trim(), secret)
        .for_environment(&settings.environment_url)?
        .with_audience(settings.user_type, settings.publishing_status)
        .with_test_users(&settings.test_users))
}

async fn admin(State(app): State<AppState>, Extension(s): Extension<SessionCtx>) -> PageResult {
    let (nav, _) = Nav::new(&s.csrf, app.sessions.take_flash(&s));
    let base_url = app.config.base_url.clone();
    let settings = app.db.oauth_client().await?;
    let (client_id, secret_stored, environment_url, internal, testing, test_users) = match &settings
    {
        Some(c) => (
            c.client_id.clone(),
            c.client_secret.is_some(),
            c.environment_url.clone(),
            c.user_type == UserType::Internal,
            c.publishing_status == PublishingStatus::Testing,
            c.test_users.clone(),
        ),
        None => (
            String::new(),
            false,
            base_url.clone(),
            false,
            true,
            Vec::new(),
        ),
    };
    let derived = OAuthApp::google("derive", "derive").for_environment(&environment_url);
    let (origin, redirect_uri) = match &derived {
        Ok(a) => (
            a.javascript_origins.first().cloned().unwrap_or_default(),
            a.redirect_uri().unwrap_or_default().to_owned(),
        ),
        Err(e) => (format!("({})", e.message()), String::new()),
    };
    let redirect_elsewhere =
        !redirect_uri.is_empty() && redirect_uri != format!("{base_url}{CALLBACK_PATH}");
    let warnings = match &settings {
        Some(c) => build_app(c, Secret::from("x".to_owned()))
            .map(|a| a.warnings().into_iter().map(|w| w.message).collect())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let mut profiles = Vec::new();
    for p in app.sync.directory().list_profiles().await? {
        profiles.push(profile_row(&app, &p).await?);
    }
    let defaults = match &app.config.stack {
        Some(stack) => ProfileDefaults {
            imap_host: stack.imap_host.clone(),
            imap_port: stack.imap_port,
            smtp_host: stack.smtp_host.clone(),
            smtp_port: stack.smtp_port,
            note: "Endpoints: the local test stack's Dovecot and Postfix stand in for imap.gmail.com and smtp.gmail.com.".into(),
        },
        None => ProfileDefaults {
            imap_host: "imap.gmail.com".into(),
            imap_port: 993,
            smtp_host: "smtp.gmail.com".into(),
            smtp_port: 587,
            note: "Endpoints: imap.gmail.com:993 (TLS), smtp.gmail.com:587 (STARTTLS).".into(),
        },
    };
    Ok(views::render(&AdminPage {
        nav,
        client_ready: settings.as_ref().is_some_and(|c| c.client_secret.is_some()),
        client_id,
        secret_stored,
        mask: Secret::MASK,
        environment_url,
        origin,
        redirect_uri,
        redirect_elsewhere,
        base_url,
        internal,
        testing,
        test_user_count: test_users.len(),
        test_users: test_users.join("\n"),
        warnings,
        profiles,
        defaults,
        stack_hint: app
            .config
            .stack
            .as_ref()
            .map(|s| s.client_id.clone())
            .unwrap_or_default(),
    }))
}

/// Saves the client settings and applies them to every Gmail OAuth profile.
async fn apply_client(app: &AppState, settings: OAuthClientSettings) -> mailsync::Result<usize> {
    let secret = settings
        .client_secret
        .clone()
        .unwrap_or_else(|| Secret::from("(none yet)".to_owned()));
    // Check before storing: the errors name the field.
    build_app(&settings, secret)?.validate()?;
    app.db.put_oauth_client(&settings).await?;
    let Some(secret) = settings.client_secret.clone() else {
        return Ok(0);
    };
    let mut updated = 0;
    for mut profile in app.sync.directory().list_profiles().await? {
        if let Authentication::GmailOAuth { app: current } = &profile.authentication {
            let next = build_app(&settings, secret.clone())?;
            if current.client_id == next.client_id
                && current.redirect_uris == next.redirect_uris
                && current.consent_screen == next.consent_screen
                && current.client_secret == next.client_secret
            {
                continue;
            }
            profile.authentication = Authentication::GmailOAuth { app: next };
            app.sync.directory().update_profile(profile).await?;
            updated += 1;
        }
    }
    Ok(updated)
}

#[derive(Deserialize)]
struct ClientForm {
    client_id: String,
    #[serde(default)]
    client_secret: String,
    environment_url: String,
}

async fn save_client(
    State(app): State<AppState>,
    Extension(s): Extension<SessionCtx>,
    Form(form): Form<ClientForm>,
) -> Response {
    let result = async {
        let mut settings = app
            .db
            .oauth_client()
            .await?
            .unwrap_or_else(|| OAuthClientSettings {
                client_id: String::new(),
                client_secret: None,
                environment_url: app.config.base_url.clone(),
                user_type: UserType::External,
                publishing_status: PublishingStatus::Testing,
                test_users: Vec::new(),
            });
        settings.client_id = form.client_id.trim().to_owned();
        settings.environment_url = form.environment_url.trim().to_owned();
        let secret = form.client_secret.trim();
        // Write-only: empty (or the mask) keeps the stored secret.
        if !secret.is_empty() && secret != Secret::MASK {
            settings.client_secret = Some(Secret::from(secret.to_owned()));
        }
        apply_client(&app, settings).await
    }
    .await;
    outcome(
        &app,
        &s,
        result,
        |n| format!("OAuth client saved; {n} profile(s) updated."),
        "/admin",
    )
}

#[derive(Deserialize)]
struct AudienceForm {
    user_type: String,
    publishing_status: String,
    #[serde(default)]
    test_users: String,
}

async fn save_audience(
    State(app): State<AppState>,
    Extension(s): Extension<SessionCtx>,
    Form(form): Form<AudienceForm>,
) -> Response {
    let result = async {
        let Some(mut settings) = app.db.oauth_client().await? else {
            return Err(Error::validation(
                "client_id",
                "enter the OAuth client first",
            ));
        };
        settings.user_type = match form.user_type.as_str() {
            "internal" => UserType::Internal,
            _ => UserType::External,
        };
        settings.publishing_status = match form.publishing_status.as_str() {
            "production" => PublishingStatus::Production,
            _ => PublishingStatus::Testing,
        };
        let mut users: Vec<String> = form
            .test_users
            .split(|c: char| c == '\n' || c == ',' || c.is_whitespace())
            .map(|u| u.trim().to_ascii_lowercase())
            .filter(|u| !u.is_empty())
            .collect();
        users.dedup();
        settings.test_users = users;
        apply_client(&app, settings).await
    }
    .await;
    outcome(
        &app,
        &s,
        result,
        |n| format!("Audience saved; {n} profile(s) updated."),
        "/admin",
    )
}

#[derive(Deserialize)]
struct ProfileForm {
    name: String,
    default: Option<String>,
    protocol: String,
    incoming_host: String,
    incoming_port: String,
    outgoing_host: String,
    outgoing_port: String,
    outgoing_security: String,
    capacity: String,
    /// Flattened: its fields reach serde as buffered text, so its numbers
    /// are `String`s parsed with [`form_number`] (as are the ones above, so
    /// a bad number is the app's validation error on the page, not a 422).
    #[serde(flatten)]
    processing: ProcessingForm,
}

/// A whole number from a form field.
fn form_number<T: std::str::FromStr>(field: &str, value: &str) -> mailsync::Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| Error::validation(field, "must be a whole number in range"))
}

/// The processing options as posted. Numbers arrive as text: they are
/// parsed here, not by serde, because `ProfileForm` flattens this struct and
/// serde hands a flattened struct its form fields as buffered strings (a
/// `u16` there made axum's `Form` refuse every post with a plain-text 422).
#[derive(Deserialize)]
struct ProcessingForm {
    min_polling: String,
    max_connections: String,
    timeout: String,
    #[serde(default)]
    process_after: String,
    move_failed: Option<String>,
    alert_owner: Option<String>,
}

impl ProcessingForm {
    fn apply(&self, profile: &mut ServerProfile) -> mailsync::Result<()> {
        let min_polling =
            form_number("processing.min_polling_interval_minutes", &self.min_polling)?;
        let max_connections = form_number(
            "processing.max_concurrent_connections",
            &self.max_connections,
        )?;
        let timeout = form_number("processing.connection_timeout_secs", &self.timeout)?;
        let o = &mut profile.processing;
        o.min_polling_interval_minutes = min_polling;
        o.max_concurrent_connections = max_connections;
        o.connection_timeout_secs = timeout;
        o.process_email_received_after = parse_time(
            "processing.process_email_received_after",
            &self.process_after,
        )?;
        o.move_failed_to_undeliverable = self.move_failed.is_some();
        o.alert_owner_on_major_events = self.alert_owner.is_some();
        Ok(())
    }
}

async fn create_profile(
    State(app): State<AppState>,
    Extension(s): Extension<SessionCtx>,
    Form(form): Form<ProfileForm>,
) -> Response {
    let result = async {
        let settings = app.db.oauth_client().await?;
        let Some((settings, secret)) =
            settings.and_then(|c| c.client_secret.clone().map(|secret| (c, secret)))
        else {
            return Err(Error::validation(
                "client_secret",
                "enter the Google OAuth client (id and secret) before creating a profile",
            ));
        };
        let mut profile = ServerProfile::gmail(form.name.trim(), build_app(&settings, secret)?);
        if form.protocol == "pop3" {
            profile = profile.use_pop3();
        }
        let security = if form.outgoing_security == "tls" {
            Security::Tls
        } else {
            Security::StartTls
        };
        profile = profile
            .with_incoming(Endpoint::new(
                form.incoming_host.trim(),
                form_number("incoming.port", &form.incoming_port)?,
                Security::Tls,
            ))
            .with_outgoing(Endpoint::new(
                form.outgoing_host.trim(),
                form_number("outgoing.port", &form.outgoing_port)?,
                security,
            ))
            .with_mailbox_capacity(form_number("mailbox_capacity", &form.capacity)?);
        if form.default.is_some() {
            profile = profile.default_for_new_mailboxes();
        }
        form.processing.apply(&mut profile)?;
        app.sync.directory().create_profile(profile).await
    }
    .await;
    outcome(
        &app,
        &s,
        result,
        |p| format!("Profile {} created.", p.name),
        "/admin",
    )
}

async fn profile_page(
    State(app): State<AppState>,
    Extension(s): Extension<SessionCtx>,
    Path(id): Path<String>,
) -> PageResult {
    let (nav, _) = Nav::new(&s.csrf, app.sessions.take_flash(&s));
    let directory = app.sync.directory();
    let profile = directory.get_profile(&ProfileId::parse(&id)?).await?;
    let row = profile_row(&app, &profile).await?;
    let last_test = match app.sync.checks().last_profile_test(&profile.id).await? {
        Some(t) => format!(
            "{:?} at {} ({} ms): {}",
            t.outcome, t.at, t.duration_ms, t.message
        ),
        None => "never run".into(),
    };
    let mailboxes = directory
        .list_mailboxes(Some(&profile.id))
        .await?
        .into_iter()
        .map(|m| ProfileMailbox {
            id: m.id.as_str().to_owned(),
            email: m.email,
        })
        .collect();
    let o = &profile.processing;
    Ok(views::render(&ProfilePage {
        nav,
        row,
        min_polling: o.min_polling_interval_minutes,
        max_connections: o.max_concurrent_connections,
        timeout: o.connection_timeout_secs,
        process_after: o
            .process_email_received_after
            .map(|t| t.to_rfc3339_seconds())
            .unwrap_or_default(),
        move_failed: o.move_failed_to_undeliverable,
        alert_owner: o.alert_owner_on_major_events,
        last_test,
        mailboxes,
    }))
}

async fn save_processing(
    State(app): State<AppState>,
    Extension(s): Extension<SessionCtx>,
    Path(id): Path<String>,
    Form(form): Form<ProcessingForm>,
) -> Response {
    let back = format!("/admin/profiles/{}", url_segment(&id));
    let result = async {
        let mut profile = app
            .sync
            .directory()
            .get_profile(&ProfileId::parse(&id)?)
            .await?;
        form.apply(&mut profile)?;
        app.sync.directory().update_profile(profile).await
    }
    .await;
    outcome(
        &app,
        &s,
        result,
        |p| format!("Processing options of {} saved.", p.name),
        &back,
    )
}

async fn make_default(
    State(app): State<AppState>,
    Extension(s): Extension<SessionCtx>,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        app.sync
            .directory()
            .set_default_profile(&ProfileId::parse(&id)?)
            .await
    }
    .await;
    outcome(
        &app,
        &s,
        result,
        |p| format!("{} is now the default profile for new mailboxes.", p.name),
        "/admin",
    )
}

/// An id from a path, kept to the characters ids use (for redirects).
fn url_segment(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

// ---------------------------------------------------------------- mailbox

async fn mailbox_of(app: &AppState, id: &str) -> mailsync::Result<Mailbox> {
    app.sync
        .directory()
        .get_mailbox(&MailboxId::parse(id)?)
        .await
}

async fn mailbox_page(
    State(app): State<AppState>,
    Extension(s): Extension<SessionCtx>,
    Path(id): Path<String>,
) -> PageResult {
    let (nav, report) = Nav::new(&s.csrf, app.sessions.take_flash(&s));
    let mailbox = mailbox_of(&app, &id).await?;
    let directory = app.sync.directory();
    let status = directory.status(&mailbox.id).await?;
    let state = &status.state;
    let (profile, profile_id) = match &mailbox.profile_id {
        Some(pid) => match directory.get_profile(pid).await {
            Ok(p) => (p.name, pid.as_str().to_owned()),
            Err(_) => ("(missing)".into(), String::new()),
        },
        None => ("(none: add a default profile)".into(), String::new()),
    };
    let (grant, grant_text) = grant_status(&state.grant);
    let now = Timestamp::now_utc();
    let pending_consent = match &state.pending_consent {
        Some(p) if p.expires_at > now => format!(
            "A consent link is out (until {}); it stops working when you connect again.",
            p.expires_at
        ),
        _ => String::new(),
    };
    let sync_status = app
        .engine
        .status()
        .await?
        .into_iter()
        .find(|st| st.mailbox_id == mailbox.id);
    let incoming_sync = match &sync_status {
        Some(st) => {
            let (delivered, skipped, last) = st
                .cursor
                .as_ref()
                .map(|c| (c.delivered, c.skipped, when(c.last_cycle_at)))
                .unwrap_or((0, 0, "—".into()));
            format!(
                "{delivered} delivered, {skipped} skipped; last cycle {last}; next due {}",
                when(st.next_due)
            )
        }
        None => String::new(),
    };
    let delivery_in = match mailbox.incoming_delivery {
        IncomingDelivery::None => "none",
        IncomingDelivery::ServerSideSync => "server-side sync",
        IncomingDelivery::EmailRouter => "email router",
        IncomingDelivery::ForwardMailbox => "forward mailbox",
    };
    let delivery_out = match mailbox.outgoing_delivery {
        OutgoingDelivery::None => "none",
        OutgoingDelivery::ServerSideSync => "server-side sync",
        OutgoingDelivery::EmailRouter => "email router",
    };
    let outgoing_sync = match &sync_status {
        Some(st) => {
            let (sent, failed, last) = st
                .outbox
                .as_ref()
                .map(|c| (c.sent, c.failed, when(c.last_cycle_at)))
                .unwrap_or((0, 0, "—".into()));
            format!(
                "{sent} sent, {failed} failed; last cycle {last}; next due {}",
                when(st.next_send_due)
            )
        }
        None => String::new(),
    };
    let mut directions = Vec::new();
    for (direction, delivery, sync) in [
        (Direction::Incoming, delivery_in, incoming_sync),
        (Direction::Outgoing, delivery_out, outgoing_sync),
    ] {
        let d = state.direction(direction);
        let (st, detail) = direction_status(&d.status);
        directions.push(DirectionStatusView {
            direction: direction_label(direction).into(),
            delivery: delivery.into(),
            status: st,
            detail,
            last_test: test_status(&d.last_test),
            sync,
        });
    }
    let alerts = status
        .alerts
        .iter()
        .rev()
        .map(|a| AlertView {
            level: format!("{:?}", a.level).to_lowercase(),
            code: a.code.clone(),
            message: a.message.clone(),
            at: a.at.to_rfc3339_seconds(),
        })
        .collect();
    let mut messages = Vec::new();
    for m in app.db.messages(&mailbox.id, 200).await? {
        let mut replies_to = String::new();
        for parent in m.in_reply_to.iter().chain(m.references.iter().rev()) {
            if let Some(subject) = app.db.subject_of(parent).await? {
                replies_to = subject;
                break;
            }
        }
        let brackets = |ids: &[String]| {
            if ids.is_empty() {
                "—".to_owned()
            } else {
                ids.iter()
                    .map(|i| format!("<{i}>"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        messages.push(MessageView {
            subject: m.subject.unwrap_or_else(|| "(no subject)".into()),
            from: m.from,
            to: m.to,
            date: when(m.date),
            message_id: m
                .message_id
                .map(|i| format!("<{i}>"))
                .unwrap_or_else(|| "—".into()),
            in_reply_to: brackets(&m.in_reply_to),
            references: brackets(&m.references),
            thread: m.thread_id.unwrap_or_else(|| "— (not Gmail)".into()),
            key: m.key,
            size: m.size,
            replies_to,
        });
    }
    Ok(views::render(&MailboxPage {
        nav,
        id: mailbox.id.as_str().to_owned(),
        email: mailbox.email.clone(),
        profile,
        profile_id,
        grant,
        grant_text,
        pending_consent,
        directions,
        report: report.as_ref().map(ReportView::from),
        alerts,
        message_count: app.db.message_count(&mailbox.id).await?,
        messages,
        filters: filter_choices(mailbox.incoming_filter),
        process_from: mailbox
            .process_email_received_after
            .map(|t| t.to_rfc3339_seconds())
            .unwrap_or_default(),
        outgoing_enabled: matches!(
            state.outgoing.status,
            mailsync::lifecycle::DirectionStatus::Enabled { .. }
                | mailsync::lifecycle::DirectionStatus::Retrying { .. }
        ),
        outbox: outbox_views(&app, &mailbox.id).await?,
    }))
}

/// The mailbox's outbox as the page shows it: each queued message with the
/// engine's record of it (state, Message-ID, attempts, last error).
async fn outbox_views(app: &AppState, mailbox: &MailboxId) -> mailsync::Result<Vec<OutboxView>> {
    let queued = app.db.outbox(mailbox, 200).await?;
    let ids: Vec<String> = queued.iter().map(|e| e.id.clone()).collect();
    let mut records: std::collections::HashMap<String, OutgoingRecord> = app
        .sync
        .store()
        .get_outgoing(mailbox, &ids)
        .await?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let one_line = |text: &str| text.replace(['\r', '\n'], " ");
    Ok(queued
        .into_iter()
        .map(|email| {
            let record = records.remove(&email.id);
            let mut view = OutboxView {
                id: email.id,
                to: email.to.join(", "),
                subject: email.subject,
                queued_at: email.queued_at.to_rfc3339_seconds(),
                state: "queued".into(),
                message_id: "—".into(),
                attempts: 0,
                error_code: String::new(),
                detail: String::new(),
            };
            if let Some(r) = record {
                view.state = r.state.as_str().into();
                view.message_id = format!("<{}>", r.message_id);
                view.attempts = r.attempts;
                if r.state != OutgoingState::Sent {
                    view.error_code = r.code.map(|c| c.as_str().to_owned()).unwrap_or_default();
                }
                let mut detail = match (r.smtp_code, &r.reply) {
                    (Some(code), Some(reply)) if !reply.starts_with(&code.to_string()) => {
                        format!("{code} {}", one_line(reply))
                    }
                    (_, Some(reply)) => one_line(reply),
                    (Some(code), None) => code.to_string(),
                    (None, None) => String::new(),
                };
                for refusal in &r.refused {
                    detail.push_str(&format!(
                        "; {} refused: {} {}",
                        refusal.address,
                        refusal.smtp_code,
                        one_line(&refusal.reply)
                    ));
                }
                if r.state == OutgoingState::Deferred
                    && let Some(at) = r.next_attempt
                {
                    detail.push_str(&format!(" (next attempt {})", at.to_rfc3339_seconds()));
                }
                view.detail = detail;
            }
            view
        })
        .collect())
}

#[derive(Deserialize)]
struct ComposeForm {
    to: String,
    subject: String,
    #[serde(default)]
    body: String,
}

/// Most recipients one composed message may have.
const MAX_RECIPIENTS: usize = 50;

/// The recipients of the compose form: addresses separated by commas,
/// semicolons or white space; each `local@domain`, nothing else.
fn parse_recipients(text: &str) -> mailsync::Result<Vec<String>> {
    let to: Vec<String> = text
        .split([',', ';', ' ', '\t', '\r', '\n'])
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    if to.is_empty() {
        return Err(Error::validation("to", "enter at least one recipient"));
    }
    if to.len() > MAX_RECIPIENTS {
        return Err(Error::validation(
            "to",
            format!("at most {MAX_RECIPIENTS} recipients"),
        ));
    }
    for address in &to {
        let well_formed = address.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && address
                    .chars()
                    .all(|c| c.is_ascii_graphic() && !"<>()[]\\\",:;".contains(c))
        });
        if !well_formed {
            return Err(Error::validation(
                "to",
                format!("not an email address: {address}"),
            ));
        }
    }
    Ok(to)
}

/// Queues a composed message in the CRM's outbox; the engine sends it.
async fn compose(
    State(app): State<AppState>,
    Extension(s): Extension<SessionCtx>,
    Path(id): Path<String>,
    Form(form): Form<ComposeForm>,
) -> Response {
    let back = format!("/mailboxes/{}", url_segment(&id));
    let result = async {
        let mailbox = mailbox_of(&app, &id).await?;
        let to = parse_recipients(&form.to)?;
        let subject = form.subject.trim();
        if subject.is_empty() {
            return Err(Error::validation("subject", "enter a subject"));
        }
        if subject.chars().any(char::is_control) {
            return Err(Error::validation("subject", "must be one line"));
        }
        app.db
            .queue_email(&mailbox.id, &to, subject, &form.body)
            .await?;
        Ok((mailbox.email, to.join(", ")))
    }
    .await;
    outcome(
        &app,
        &s,
        result,
        |(from, to)| {
            format!(
                "Queued: from {from} to {to}. The sync engine sends it in the mailbox's next cycle."
            )
        },
        &back,
    )
}

async fn connect(
    State(app): State<AppState>,
    Extension(s): Extension<SessionCtx>,
    Path(id): Path<String>,
) -> Response {
    let back = format!("/mailboxes/{}", url_segment(&id));
    let result = async {
        let mailbox = mailbox_of(&app, &id).await?;
        app.sync.connections().connect(&mailbox.id).await
    }
    .await;
    match result {
        Ok(consent) => {
            // Remember which mailbox this consent is for, so the callback
            // can lead back to it whatever the outcome.
            if let Some(state) = url::Url::parse(&consent.url).ok().and_then(|u| {
                u.query_pairs()
                    .find(|(k, _)| k == "state")
                    .map(|(_, v)| v.into_owned())
            }) {
                app.sessions
                    .remember_consent(&s, state, consent.mailbox_id.clone());
            }
            see_other(&consent.url)
        }
        Err(e) => {
            app.sessions.flash(&s, Flash::error(&e));
            see_other(&back)
        }
    }
}

async fn disconnect(
    State(app): State<AppState>,
    Extension(s): Extension<SessionCtx>,
    Path(id): Path<String>,
) -> Response {
    let back = format!("/mailboxes/{}", url_segment(&id));
    let result = async {
        let mailbox = mailbox_of(&app, &id).await?;
        app.sync.connections().disconnect(&mailbox.id).await
    }
    .await;
    outcome(
        &app,
        &s,
        result,
        |st| {
            format!(
                "{} disconnected; the grant was revoked at the provider.",
                st.mailbox.email
            )
        },
        &back,
    )
}

#[derive(Deserialize)]
struct TestForm {
    send_test_message: Option<String>,
}

async fn test_and_enable(
    State(app): State<AppState>,
    Extension(s): Extension<SessionCtx>,
    Path(id): Path<String>,
    Form(form): Form<TestForm>,
) -> Response {
    let back = format!("/mailboxes/{}", url_segment(&id));
    let result = async {
        let mailbox = mailbox_of(&app, &id).await?;
        let options = TestOptions {
            send_test_message: form.send_test_message.is_some(),
        };
        app.sync
            .checks()
            .test_and_enable(&mailbox.id, &options)
            .await
    }
    .await;
    let flash = match result {
        Ok(report) => Flash::Report(Box::new(report)),
        Err(e) => Flash::error(&e),
    };
    app.sessions.flash(&s, flash);
    see_other(&back)
}

async fn sync_now(
    State(app): State<AppState>,
    Extension(s): Extension<SessionCtx>,
    Path(id): Path<String>,
) -> Response {
    let back = format!("/mailboxes/{}", url_segment(&id));
    let result = async {
        let mailbox = mailbox_of(&app, &id).await?;
        app.engine.run_once(&mailbox.id).await
    }
    .await;
    let flash = match result {
        Ok(r) => match (&r.error_code, &r.error_message) {
            (Some(code), message) => Flash::Error {
                code: code.as_str().into(),
                message: message.clone().unwrap_or_default(),
                next_action: code.next_action().into(),
            },
            _ => match (&r.outgoing_error_code, &r.outgoing_error_message) {
                (Some(code), message) => Flash::Error {
                    code: code.as_str().into(),
                    message: message.clone().unwrap_or_default(),
                    next_action: code.next_action().into(),
                },
                _ => Flash::Notice(format!(
                    "Synced: {} new, {} skipped, {} filtered, {} already had; \
                     {} sent, {} failed, {} deferred ({} ms).",
                    r.delivered,
                    r.skipped,
                    r.filtered,
                    r.already_had,
                    r.sent,
                    r.send_failed,
                    r.send_deferred,
                    r.duration_ms
                )),
            },
        },
        Err(e) => Flash::error(&e),
    };
    app.sessions.flash(&s, flash);
    see_other(&back)
}

#[derive(Deserialize)]
struct SettingsForm {
    incoming_filter: String,
    #[serde(default)]
    process_from: String,
}

async fn mailbox_settings(
    State(app): State<AppState>,
    Extension(s): Extension<SessionCtx>,
    Path(id): Path<String>,
    Form(form): Form<SettingsForm>,
) -> Response {
    let back = format!("/mailboxes/{}", url_segment(&id));
    let result = async {
        let mut mailbox = mailbox_of(&app, &id).await?;
        mailbox.incoming_filter = parse_filter(&form.incoming_filter)?;
        mailbox.process_email_received_after =
            parse_time("process_email_received_after", &form.process_from)?;
        app.sync.directory().update_mailbox(mailbox).await
    }
    .await;
    outcome(
        &app,
        &s,
        result,
        |m| format!("Settings of {} saved.", m.email),
        &back,
    )
}

// ---------------------------------------------------------------- callback

/// `GET /_grid/cmds/dlg_gmailoauth.aspx?code=…&state=…` (or `?error=…`):
/// the provider sends the browser back here after consent.
async fn oauth_callback(
    State(app): State<AppState>,
    Extension(s): Extension<SessionCtx>,
    OriginalUri(uri): OriginalUri,
) -> Response {
    let (nav, _) = Nav::new(&s.csrf, app.sessions.take_flash(&s));
    let query = uri.query().unwrap_or("");
    let state = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned());
    let remembered = state
        .as_deref()
        .and_then(|st| app.sessions.consent_mailbox(&s, st));
    let callback_url = format!("{}{CALLBACK_PATH}?{query}", app.config.base_url);
    let result = app.sync.connections().complete(&callback_url).await;
    let mut page = CallbackPage {
        nav,
        success: false,
        account: String::new(),
        email: String::new(),
        mailbox_id: remembered
            .as_ref()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default(),
        code: String::new(),
        message: String::new(),
        next_action: String::new(),
    };
    if let Some(m) = &remembered
        && let Ok(mailbox) = app.sync.directory().get_mailbox(m).await
    {
        page.email = mailbox.email;
    }
    let status = match result {
        Ok(status) => {
            page.success = true;
            page.mailbox_id = status.mailbox.id.as_str().to_owned();
            page.email = status.mailbox.email.clone();
            page.account = match &status.state.grant {
                mailsync::lifecycle::GrantStatus::Connected { account, .. } => account.clone(),
                _ => status.mailbox.email.clone(),
            };
            StatusCode::OK
        }
        Err(e) => {
            page.code = e.code().as_str().to_owned();
            page.message = e.message().to_owned();
            page.next_action = e.next_action().to_owned();
            StatusCode::OK
        }
    };
    (status, views::render(&page)).into_response()
}
