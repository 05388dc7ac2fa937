//! `mailsync profile …` and `mailsync mailbox …`: the admin's directory work.

use clap::{Subcommand, ValueEnum};
use mailsync::Error;
use mailsync::Timestamp;
use mailsync::model::{
    Endpoint, IncomingFilter, MailboxSpec, OAuthApp, ProfileId, PublishingStatus, Security,
    ServerProfile, UserType,
};
use serde_json::json;
use std::path::PathBuf;

use crate::output;
use crate::{Ctx, read_secret};

#[derive(Clone, Copy, ValueEnum)]
pub enum SecurityArg {
    Tls,
    Starttls,
    Plaintext,
}

impl From<SecurityArg> for Security {
    fn from(value: SecurityArg) -> Self {
        match value {
            SecurityArg::Tls => Security::Tls,
            SecurityArg::Starttls => Security::StartTls,
            SecurityArg::Plaintext => Security::Plaintext,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum AudienceArg {
    /// Any Google account (published app).
    ExternalProduction,
    /// Only listed test users; refresh tokens expire after 7 days.
    ExternalTesting,
    /// Only accounts of the Google Cloud organization.
    Internal,
}

#[derive(Subcommand)]
pub enum ProfileCmd {
    /// Creates a Gmail profile (Gmail OAuth; IMAP 993 TLS, SMTP 587 STARTTLS).
    CreateGmail {
        /// Profile name (1–100 characters).
        #[arg(long)]
        name: String,
        /// OAuth client id from Google Cloud.
        #[arg(long)]
        client_id: String,
        /// Environment variable holding the client secret.
        #[arg(
            long,
            default_value = "MAILSYNC_CLIENT_SECRET",
            conflicts_with = "client_secret_file"
        )]
        client_secret_env: String,
        /// File holding the client secret (`-` for stdin).
        #[arg(long)]
        client_secret_file: Option<PathBuf>,
        /// The CRM environment URL; the redirect URI is derived from it.
        #[arg(long)]
        environment_url: String,
        /// Redirect path, if the CRM routes the callback elsewhere.
        #[arg(long, default_value = mailsync::model::app::DEFAULT_REDIRECT_PATH)]
        redirect_path: String,
        /// Read incoming mail over POP3 (pop.gmail.com:995) instead of IMAP.
        #[arg(long)]
        pop3: bool,
        /// Send over implicit TLS on 465 instead of STARTTLS on 587.
        #[arg(long)]
        smtp_465: bool,
        /// Make it the default profile for new mailboxes.
        #[arg(long)]
        default: bool,
        /// Maximum mailboxes (at most 100).
        #[arg(long)]
        capacity: Option<u32>,
        /// Consent screen audience.
        #[arg(long, value_enum, default_value = "external-production")]
        audience: AudienceArg,
        /// A test user (repeatable); only they may connect in Testing.
        #[arg(long = "test-user")]
        test_users: Vec<String>,
        /// Override the incoming host (e.g. a local test server).
        #[arg(long)]
        incoming_host: Option<String>,
        /// Override the incoming port.
        #[arg(long, allow_negative_numbers = true)]
        incoming_port: Option<i64>,
        /// Override the incoming security.
        #[arg(long, value_enum)]
        incoming_security: Option<SecurityArg>,
        /// Override the outgoing host.
        #[arg(long)]
        outgoing_host: Option<String>,
        /// Override the outgoing port.
        #[arg(long, allow_negative_numbers = true)]
        outgoing_port: Option<i64>,
        /// Override the outgoing security.
        #[arg(long, value_enum)]
        outgoing_security: Option<SecurityArg>,
        /// Allow plaintext endpoints on loopback hosts (tests only).
        #[arg(long)]
        allow_plaintext_on_loopback: bool,
    },
    /// Changes an existing profile: only the options given change.
    Update {
        /// Name or id.
        profile: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// Incoming host.
        #[arg(long)]
        incoming_host: Option<String>,
        /// Incoming port.
        #[arg(long, allow_negative_numbers = true)]
        incoming_port: Option<i64>,
        /// Incoming security.
        #[arg(long, value_enum)]
        incoming_security: Option<SecurityArg>,
        /// Outgoing host.
        #[arg(long)]
        outgoing_host: Option<String>,
        /// Outgoing port.
        #[arg(long, allow_negative_numbers = true)]
        outgoing_port: Option<i64>,
        /// Outgoing security.
        #[arg(long, value_enum)]
        outgoing_security: Option<SecurityArg>,
        /// Connection timeout in seconds (1–100).
        #[arg(long, allow_negative_numbers = true)]
        connection_timeout: Option<i64>,
        /// Minimum polling interval in minutes (0–1440).
        #[arg(long, allow_negative_numbers = true)]
        polling_interval: Option<i64>,
        /// Maximum concurrent connections (1–300).
        #[arg(long, allow_negative_numbers = true)]
        max_connections: Option<i64>,
        /// Maximum mailboxes (at most 100 for OAuth profiles).
        #[arg(long, allow_negative_numbers = true)]
        capacity: Option<i64>,
        /// OAuth client id.
        #[arg(long)]
        client_id: Option<String>,
        /// Replace the client secret (or password) from this environment variable.
        #[arg(long, conflicts_with = "secret_file")]
        secret_env: Option<String>,
        /// Replace the client secret (or password) from this file (`-` for stdin).
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// Consent screen audience.
        #[arg(long, value_enum)]
        audience: Option<AudienceArg>,
        /// Add a test user (repeatable).
        #[arg(long = "add-test-user")]
        add_test_users: Vec<String>,
        /// Remove a test user (repeatable).
        #[arg(long = "remove-test-user")]
        remove_test_users: Vec<String>,
        /// Allow plaintext endpoints on loopback hosts (tests only).
        #[arg(long)]
        allow_plaintext_on_loopback: Option<bool>,
    },
    /// Creates a profile from a JSON document (as printed by `profile show
    /// --json`, or written by hand: `id` and most fields may be left out).
    Import {
        /// JSON file (`-` for stdin).
        file: PathBuf,
        /// Environment variable holding the client secret or password.
        #[arg(long, conflicts_with = "secret_file")]
        secret_env: Option<String>,
        /// File holding the client secret or password (`-` for stdin).
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// Lists profiles.
    List,
    /// Shows one profile.
    Show {
        /// Name or id.
        profile: String,
    },
    /// Makes a profile the default for new mailboxes.
    SetDefault {
        /// Name or id.
        profile: String,
    },
    /// Deletes a profile that has no mailboxes.
    Delete {
        /// Name or id.
        profile: String,
    },
    /// Tests and enables every mailbox of the profile.
    TestAll {
        /// Name or id.
        profile: String,
        /// Also send a test message from each mailbox to itself.
        #[arg(long)]
        send_test_message: bool,
    },
}

#[derive(Subcommand)]
pub enum MailboxCmd {
    /// Adds a mailbox (to the default profile unless --profile is given).
    Add {
        /// Email address.
        email: String,
        /// Profile name or id.
        #[arg(long)]
        profile: Option<String>,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Owning queue (a user mailbox otherwise).
        #[arg(long)]
        queue: Option<String>,
        /// A forward mailbox (incoming only).
        #[arg(long, conflicts_with = "queue")]
        forward: bool,
        /// If the profile is full, use another one with the same OAuth client.
        #[arg(long)]
        spill_over: bool,
        /// Which incoming mail is taken in (default: replies to tracked email).
        #[arg(long, value_enum)]
        incoming_filter: Option<IncomingFilterArg>,
        /// Only take in mail received from then on: an RFC 3339 instant
        /// (2026-12-01T09:00:00Z) or `now`.
        #[arg(long, value_name = "WHEN")]
        process_from: Option<String>,
    },
    /// Lists mailboxes.
    List {
        /// Only this profile's mailboxes.
        #[arg(long)]
        profile: Option<String>,
    },
    /// Shows one mailbox.
    Show {
        /// Email address or id.
        mailbox: String,
    },
    /// Deletes a mailbox.
    Delete {
        /// Email address or id.
        mailbox: String,
    },
    /// Changes a mailbox: only the options given change.
    Update {
        /// Email address or id.
        mailbox: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Incoming delivery.
        #[arg(long, value_enum)]
        incoming: Option<IncomingArg>,
        /// Outgoing delivery.
        #[arg(long, value_enum)]
        outgoing: Option<OutgoingArg>,
        /// Which incoming mail is taken in.
        #[arg(long, value_enum)]
        incoming_filter: Option<IncomingFilterArg>,
        /// Only take in mail received from then on: an RFC 3339 instant,
        /// `now`, or `any` to take in everything.
        #[arg(long, value_name = "WHEN")]
        process_from: Option<String>,
        /// Email address approval.
        #[arg(long, value_enum)]
        approval: Option<ApprovalArg>,
        /// Delete mail from the server after processing (forward and queue mailboxes).
        #[arg(long)]
        delete_after_processing: Option<bool>,
        /// User name for profiles with per-mailbox credentials.
        #[arg(long)]
        username: Option<String>,
        /// Environment variable holding the mailbox password.
        #[arg(long, conflicts_with = "password_file", requires = "username")]
        password_env: Option<String>,
        /// File holding the mailbox password (`-` for stdin).
        #[arg(long, requires = "username")]
        password_file: Option<PathBuf>,
    },
    /// Moves a mailbox to another profile (its capacity is checked).
    Move {
        /// Email address or id.
        mailbox: String,
        /// Target profile name or id.
        #[arg(long)]
        profile: String,
    },
    /// Tests incoming and outgoing settings and enables what passes.
    TestEnable {
        /// Email address or id.
        mailbox: String,
        /// Also send a test message from the mailbox to itself.
        #[arg(long)]
        send_test_message: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum IncomingArg {
    None,
    ServerSideSync,
    EmailRouter,
    ForwardMailbox,
}

/// Which incoming mail is taken in (Dynamics' "Track incoming email").
#[derive(Clone, Copy, ValueEnum)]
pub enum IncomingFilterArg {
    /// Every message.
    All,
    /// Only replies to email the CRM tracks (In-Reply-To or References
    /// names a tracked Message-ID); the default.
    RepliesToTrackedEmail,
    /// Only mail from senders the CRM knows.
    FromKnownRecords,
    /// Nothing.
    None,
}

impl From<IncomingFilterArg> for IncomingFilter {
    fn from(value: IncomingFilterArg) -> Self {
        match value {
            IncomingFilterArg::All => IncomingFilter::All,
            IncomingFilterArg::RepliesToTrackedEmail => IncomingFilter::RepliesToTrackedEmail,
            IncomingFilterArg::FromKnownRecords => IncomingFilter::FromKnownRecords,
            IncomingFilterArg::None => IncomingFilter::None,
        }
    }
}

/// `--process-from`: an RFC 3339 instant, `now` (to the whole second, as
/// servers stamp arrival), or with `allow_any` also `any` (no limit).
fn process_from(value: &str, allow_any: bool) -> Result<Option<Timestamp>, Error> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("now") {
        let now = Timestamp::now_utc().unix_millis();
        return Ok(Some(Timestamp::from_unix_millis(
            now - now.rem_euclid(1000),
        )));
    }
    if allow_any && value.eq_ignore_ascii_case("any") {
        return Ok(None);
    }
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map(|t| Some(Timestamp::from_datetime(t)))
        .map_err(|e| {
            Error::validation(
                "process_email_received_after",
                format!("'{value}' is not an RFC 3339 instant or `now`: {e}"),
            )
        })
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OutgoingArg {
    None,
    ServerSideSync,
    EmailRouter,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ApprovalArg {
    Empty,
    Approved,
    PendingApproval,
    Rejected,
}

/// An integer option within `range`, else a validation error naming `field`.
fn ranged<T: TryFrom<i64>>(
    field: &str,
    value: Option<i64>,
    range: std::ops::RangeInclusive<i64>,
) -> Result<Option<T>, Error> {
    match value {
        None => Ok(None),
        Some(v) if range.contains(&v) => T::try_from(v)
            .map(Some)
            .map_err(|_| Error::validation(field, format!("{v} is out of range"))),
        Some(v) => Err(Error::validation(
            field,
            format!(
                "{v} is out of range; use {} to {}",
                range.start(),
                range.end()
            ),
        )),
    }
}

fn port(field: &str, value: Option<i64>) -> Result<Option<u16>, Error> {
    match value {
        None => Ok(None),
        Some(p) if (1..=65535).contains(&p) => Ok(Some(p as u16)),
        Some(p) => Err(Error::validation(
            field,
            format!("{p} is not a port; use 1 to 65535"),
        )),
    }
}

fn endpoint(
    base: &Endpoint,
    host: Option<String>,
    port: Option<u16>,
    security: Option<SecurityArg>,
) -> Endpoint {
    Endpoint {
        host: host.unwrap_or_else(|| base.host.clone()),
        port: port.unwrap_or(base.port),
        security: security.map(Security::from).unwrap_or(base.security),
    }
}

async fn show_profile(ctx: &Ctx, profile: &ServerProfile) -> Result<(), Error> {
    let count = ctx.sync.directory().mailbox_count(&profile.id).await?;
    let last_test = ctx.sync.checks().last_profile_test(&profile.id).await?;
    if ctx.json {
        let mut value = output::profile_json(profile, count);
        value["last_test"] = json!(last_test);
        output::json_value(&value);
    } else {
        output::profile_details(profile, count, last_test.as_ref());
    }
    Ok(())
}

/// Prints a mailbox with its state and alerts.
async fn show_mailbox(ctx: &Ctx, mailbox: &mailsync::model::Mailbox) -> Result<(), Error> {
    let status = ctx.sync.directory().status(&mailbox.id).await?;
    if ctx.json {
        output::json_value(&json!(status));
    } else {
        let name = profile_name(ctx, status.mailbox.profile_id.as_ref()).await?;
        output::mailbox_details(&status, &name);
    }
    Ok(())
}

pub async fn run_profile(ctx: &Ctx, cmd: ProfileCmd) -> Result<(), Error> {
    match cmd {
        ProfileCmd::CreateGmail {
            name,
            client_id,
            client_secret_env,
            client_secret_file,
            environment_url,
            redirect_path,
            pop3,
            smtp_465,
            default,
            capacity,
            audience,
            test_users,
            incoming_host,
            incoming_port,
            incoming_security,
            outgoing_host,
            outgoing_port,
            outgoing_security,
            allow_plaintext_on_loopback,
        } => {
            let env = client_secret_file
                .is_none()
                .then_some(client_secret_env.as_str());
            let secret = read_secret(env, client_secret_file.as_ref(), "client_secret")?
                .ok_or_else(|| Error::validation("client_secret", "is required"))?;
            let (user_type, status) = audience_parts(audience);
            let app = OAuthApp::google(client_id, secret)
                .for_environment_with_path(&environment_url, &redirect_path)?
                .with_audience(user_type, status)
                .with_test_users(&test_users);
            let mut profile = ServerProfile::gmail(name, app);
            if pop3 {
                profile = profile.use_pop3();
            }
            if smtp_465 {
                profile = profile.use_smtp_tls_465();
            }
            if default {
                profile = profile.default_for_new_mailboxes();
            }
            if let Some(capacity) = capacity {
                profile = profile.with_mailbox_capacity(capacity);
            }
            profile.incoming.endpoint = endpoint(
                &profile.incoming.endpoint,
                incoming_host,
                port("incoming.port", incoming_port)?,
                incoming_security,
            );
            profile.outgoing = endpoint(
                &profile.outgoing,
                outgoing_host,
                port("outgoing.port", outgoing_port)?,
                outgoing_security,
            );
            profile.allow_plaintext_on_loopback = allow_plaintext_on_loopback;
            let profile = ctx.sync.directory().create_profile(profile).await?;
            show_profile(ctx, &profile).await
        }
        ProfileCmd::Update {
            profile,
            name,
            incoming_host,
            incoming_port,
            incoming_security,
            outgoing_host,
            outgoing_port,
            outgoing_security,
            connection_timeout,
            polling_interval,
            max_connections,
            capacity,
            client_id,
            secret_env,
            secret_file,
            audience,
            add_test_users,
            remove_test_users,
            allow_plaintext_on_loopback,
        } => {
            let mut profile = ctx.sync.directory().find_profile(&profile).await?;
            if let Some(name) = name {
                profile.name = name;
            }
            profile.incoming.endpoint = endpoint(
                &profile.incoming.endpoint,
                incoming_host,
                port("incoming.port", incoming_port)?,
                incoming_security,
            );
            profile.outgoing = endpoint(
                &profile.outgoing,
                outgoing_host,
                port("outgoing.port", outgoing_port)?,
                outgoing_security,
            );
            let p = &mut profile.processing;
            if let Some(v) = ranged(
                "processing.connection_timeout_secs",
                connection_timeout,
                1..=100,
            )? {
                p.connection_timeout_secs = v;
            }
            if let Some(v) = ranged(
                "processing.min_polling_interval_minutes",
                polling_interval,
                0..=1440,
            )? {
                p.min_polling_interval_minutes = v;
            }
            if let Some(v) = ranged(
                "processing.max_concurrent_connections",
                max_connections,
                1..=300,
            )? {
                p.max_concurrent_connections = v;
            }
            if let Some(v) = ranged("mailbox_capacity", capacity, 1..=i64::from(u32::MAX))? {
                profile.mailbox_capacity = v;
            }
            if let Some(flag) = allow_plaintext_on_loopback {
                profile.allow_plaintext_on_loopback = flag;
            }
            let secret = read_secret(secret_env.as_deref(), secret_file.as_ref(), "secret")?;
            let oauth_change = client_id.is_some()
                || audience.is_some()
                || !add_test_users.is_empty()
                || !remove_test_users.is_empty();
            match profile.authentication.oauth_app_mut() {
                Some(app) => {
                    if let Some(id) = client_id {
                        app.client_id = id.trim().to_owned();
                    }
                    if let Some(audience) = audience {
                        let (user_type, status) = audience_parts(audience);
                        app.consent_screen.user_type = user_type;
                        app.consent_screen.publishing_status = status;
                    }
                    let remove: Vec<String> = remove_test_users
                        .iter()
                        .map(|u| u.trim().to_ascii_lowercase())
                        .collect();
                    app.consent_screen
                        .test_users
                        .retain(|u| !remove.contains(u));
                    for user in add_test_users {
                        let user = user.trim().to_ascii_lowercase();
                        if !app.consent_screen.test_users.contains(&user) {
                            app.consent_screen.test_users.push(user);
                        }
                    }
                }
                None if oauth_change => {
                    return Err(Error::validation(
                        "authentication",
                        format!(
                            "profile '{}' does not use OAuth; client id, audience and test users do not apply",
                            profile.name
                        ),
                    ));
                }
                None => {}
            }
            if let Some(secret) = secret {
                set_secret(&mut profile, secret);
            }
            let profile = ctx.sync.directory().update_profile(profile).await?;
            show_profile(ctx, &profile).await
        }
        ProfileCmd::Import {
            file,
            secret_env,
            secret_file,
        } => {
            let text = read_secret(None, Some(&file), "file")?.unwrap_or_default();
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::validation("file", format!("is not valid JSON: {e}")))?;
            // Accept both the bare record and `profile show --json` output.
            let record = value.get("profile").cloned().unwrap_or(value);
            let mut profile: ServerProfile = serde_json::from_value(record)
                .map_err(|e| Error::validation("file", format!("is not a server profile: {e}")))?;
            profile.id = ProfileId::new();
            if let Some(secret) =
                read_secret(secret_env.as_deref(), secret_file.as_ref(), "secret")?
            {
                set_secret(&mut profile, secret);
            }
            let profile = ctx.sync.directory().create_profile(profile).await?;
            show_profile(ctx, &profile).await
        }
        ProfileCmd::List => {
            let profiles = ctx.sync.directory().list_profiles().await?;
            let mut rows = Vec::new();
            let mut values = Vec::new();
            for p in &profiles {
                let count = ctx.sync.directory().mailbox_count(&p.id).await?;
                rows.push(output::profile_row(p, count));
                values.push(output::profile_json(p, count));
            }
            if ctx.json {
                output::json_value(&serde_json::Value::Array(values));
            } else {
                output::table(
                    &[
                        "NAME",
                        "TYPE",
                        "AUTH",
                        "INCOMING",
                        "OUTGOING",
                        "MAILBOXES",
                        "DEFAULT",
                    ],
                    &rows,
                );
            }
            Ok(())
        }
        ProfileCmd::Show { profile } => {
            let profile = ctx.sync.directory().find_profile(&profile).await?;
            show_profile(ctx, &profile).await
        }
        ProfileCmd::SetDefault { profile } => {
            let profile = ctx.sync.directory().find_profile(&profile).await?;
            let profile = ctx
                .sync
                .directory()
                .set_default_profile(&profile.id)
                .await?;
            show_profile(ctx, &profile).await
        }
        ProfileCmd::TestAll {
            profile,
            send_test_message,
        } => crate::check_cmds::test_all(ctx, &profile, send_test_message).await,
        ProfileCmd::Delete { profile } => {
            let profile = ctx.sync.directory().find_profile(&profile).await?;
            ctx.sync.directory().delete_profile(&profile.id).await?;
            if ctx.json {
                output::json_value(&json!({"deleted": profile.id}));
            } else {
                outln!("Deleted profile {}", profile.name);
            }
            Ok(())
        }
    }
}

fn audience_parts(audience: AudienceArg) -> (UserType, PublishingStatus) {
    match audience {
        AudienceArg::ExternalProduction => (UserType::External, PublishingStatus::Production),
        AudienceArg::ExternalTesting => (UserType::External, PublishingStatus::Testing),
        AudienceArg::Internal => (UserType::Internal, PublishingStatus::Production),
    }
}

fn set_secret(profile: &mut ServerProfile, secret: String) {
    use mailsync::model::Authentication;
    match &mut profile.authentication {
        Authentication::GmailOAuth { app } | Authentication::OAuthProvider { app, .. } => {
            app.client_secret = Some(secret.into())
        }
        Authentication::CredentialsInProfile { password, .. } => *password = Some(secret.into()),
        Authentication::CredentialsPerMailbox {} => {}
    }
}

async fn profile_name(ctx: &Ctx, id: Option<&ProfileId>) -> Result<String, Error> {
    match id {
        None => Ok("-".into()),
        Some(id) => Ok(ctx.sync.directory().get_profile(id).await?.name),
    }
}

pub async fn run_mailbox(ctx: &Ctx, cmd: MailboxCmd) -> Result<(), Error> {
    match cmd {
        MailboxCmd::Add {
            email,
            profile,
            name,
            queue,
            forward,
            spill_over,
            incoming_filter,
            process_from: from,
        } => {
            let mut spec = match (queue, forward) {
                (Some(queue), _) => MailboxSpec::queue(email, queue),
                (None, true) => MailboxSpec::forward(email),
                (None, false) => MailboxSpec::user(email),
            };
            spec.name = name;
            spec.allow_spill_over = spill_over;
            if let Some(filter) = incoming_filter {
                spec.incoming_filter = filter.into();
            }
            if let Some(from) = from {
                spec.process_email_received_after = process_from(&from, false)?;
            }
            if let Some(profile) = profile {
                spec.profile_id = Some(ctx.sync.directory().find_profile(&profile).await?.id);
            }
            let mailbox = ctx.sync.directory().create_mailbox(spec).await?;
            show_mailbox(ctx, &mailbox).await
        }
        MailboxCmd::List { profile } => {
            let profile = match profile {
                Some(p) => Some(ctx.sync.directory().find_profile(&p).await?.id),
                None => None,
            };
            let mailboxes = ctx
                .sync
                .directory()
                .list_mailboxes(profile.as_ref())
                .await?;
            let mut statuses = Vec::new();
            for m in mailboxes {
                let state = ctx.sync.directory().state(&m.id).await?;
                statuses.push(mailsync::directory::MailboxStatus {
                    mailbox: m,
                    state,
                    alerts: Vec::new(),
                });
            }
            if ctx.json {
                let rows: Vec<_> = statuses
                    .iter()
                    .map(|s| json!({"mailbox": s.mailbox, "state": s.state}))
                    .collect();
                output::json_value(&serde_json::Value::Array(rows));
            } else {
                let names: std::collections::HashMap<_, _> = ctx
                    .sync
                    .directory()
                    .list_profiles()
                    .await?
                    .into_iter()
                    .map(|p| (p.id, p.name))
                    .collect();
                let rows: Vec<_> = statuses
                    .iter()
                    .map(|m| {
                        let name = m
                            .mailbox
                            .profile_id
                            .as_ref()
                            .and_then(|id| names.get(id))
                            .map(String::as_str);
                        output::mailbox_row(m, name.unwrap_or("-"))
                    })
                    .collect();
                output::table(
                    &[
                        "EMAIL",
                        "PROFILE",
                        "INCOMING",
                        "OUTGOING",
                        "CONNECTION",
                        "TESTS IN/OUT",
                    ],
                    &rows,
                );
            }
            Ok(())
        }
        MailboxCmd::Show { mailbox } => {
            let mailbox = ctx.sync.directory().find_mailbox(&mailbox).await?;
            show_mailbox(ctx, &mailbox).await
        }
        MailboxCmd::TestEnable {
            mailbox,
            send_test_message,
        } => crate::check_cmds::test_enable(ctx, &mailbox, send_test_message).await,
        MailboxCmd::Update {
            mailbox,
            name,
            incoming,
            outgoing,
            incoming_filter,
            process_from: from,
            approval,
            delete_after_processing,
            username,
            password_env,
            password_file,
        } => {
            use mailsync::model::{
                ApprovalStatus, IncomingDelivery, MailboxCredentials, OutgoingDelivery,
            };
            let mut record = ctx.sync.directory().find_mailbox(&mailbox).await?;
            if let Some(name) = name {
                record.name = name;
            }
            if let Some(incoming) = incoming {
                record.incoming_delivery = match incoming {
                    IncomingArg::None => IncomingDelivery::None,
                    IncomingArg::ServerSideSync => IncomingDelivery::ServerSideSync,
                    IncomingArg::EmailRouter => IncomingDelivery::EmailRouter,
                    IncomingArg::ForwardMailbox => IncomingDelivery::ForwardMailbox,
                };
            }
            if let Some(filter) = incoming_filter {
                record.incoming_filter = filter.into();
            }
            if let Some(from) = from {
                record.process_email_received_after = process_from(&from, true)?;
            }
            if let Some(outgoing) = outgoing {
                record.outgoing_delivery = match outgoing {
                    OutgoingArg::None => OutgoingDelivery::None,
                    OutgoingArg::ServerSideSync => OutgoingDelivery::ServerSideSync,
                    OutgoingArg::EmailRouter => OutgoingDelivery::EmailRouter,
                };
            }
            if let Some(approval) = approval {
                record.approval = match approval {
                    ApprovalArg::Empty => ApprovalStatus::Empty,
                    ApprovalArg::Approved => ApprovalStatus::Approved,
                    ApprovalArg::PendingApproval => ApprovalStatus::PendingApproval,
                    ApprovalArg::Rejected => ApprovalStatus::Rejected,
                };
            }
            if let Some(flag) = delete_after_processing {
                record.delete_after_processing = flag;
            }
            if let Some(username) = username {
                let password =
                    read_secret(password_env.as_deref(), password_file.as_ref(), "password")?
                        .map(Into::into)
                        .or_else(|| record.credentials.take().and_then(|c| c.password));
                record.credentials = Some(MailboxCredentials { username, password });
            }
            let record = ctx.sync.directory().update_mailbox(record).await?;
            show_mailbox(ctx, &record).await
        }
        MailboxCmd::Move { mailbox, profile } => {
            let record = ctx.sync.directory().find_mailbox(&mailbox).await?;
            let target = ctx.sync.directory().find_profile(&profile).await?;
            let record = ctx
                .sync
                .directory()
                .move_mailbox(&record.id, &target.id)
                .await?;
            show_mailbox(ctx, &record).await
        }
        MailboxCmd::Delete { mailbox } => {
            let mailbox = ctx.sync.directory().find_mailbox(&mailbox).await?;
            ctx.sync.directory().delete_mailbox(&mailbox.id).await?;
            if ctx.json {
                output::json_value(&json!({"deleted": mailbox.id}));
            } else {
                outln!("Deleted mailbox {}", mailbox.email);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailsync::ErrorCode;

    #[test]
    fn ports_outside_range_are_validation_errors() {
        assert_eq!(port("p", Some(443)).unwrap(), Some(443));
        for bad in [0, -1, 70000] {
            let err = port("incoming.port", Some(bad)).unwrap_err();
            assert_eq!(err.code(), ErrorCode::Validation);
            assert_eq!(err.field(), Some("incoming.port"));
        }
    }
}
