//! `mailsync profile …` and `mailsync mailbox …`: the admin's directory work.

use clap::{Subcommand, ValueEnum};
use mailsync::Error;
use mailsync::model::{
    Endpoint, MailboxSpec, OAuthApp, ProfileId, PublishingStatus, Security, ServerProfile, UserType,
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
    /// Creates a profile from a JSON document (as printed by `profile show --json`).
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
    /// Tests incoming and outgoing settings and enables what passes.
    TestEnable {
        /// Email address or id.
        mailbox: String,
        /// Also send a test message from the mailbox to itself.
        #[arg(long)]
        send_test_message: bool,
    },
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
    let count = ctx.sync.store().count_mailboxes(&profile.id).await?;
    if ctx.json {
        output::json_value(&output::profile_json(profile, count));
    } else {
        output::profile_details(profile, count);
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
            let (user_type, status) = match audience {
                AudienceArg::ExternalProduction => {
                    (UserType::External, PublishingStatus::Production)
                }
                AudienceArg::ExternalTesting => (UserType::External, PublishingStatus::Testing),
                AudienceArg::Internal => (UserType::Internal, PublishingStatus::Production),
            };
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
            let profile = ctx.sync.create_profile(profile).await?;
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
            let profile = ctx.sync.create_profile(profile).await?;
            show_profile(ctx, &profile).await
        }
        ProfileCmd::List => {
            let profiles = ctx.sync.list_profiles().await?;
            let mut rows = Vec::new();
            let mut values = Vec::new();
            for p in &profiles {
                let count = ctx.sync.store().count_mailboxes(&p.id).await?;
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
            let profile = ctx.sync.find_profile(&profile).await?;
            show_profile(ctx, &profile).await
        }
        ProfileCmd::SetDefault { profile } => {
            let profile = ctx.sync.find_profile(&profile).await?;
            let profile = ctx.sync.set_default_profile(&profile.id).await?;
            show_profile(ctx, &profile).await
        }
        ProfileCmd::TestAll {
            profile,
            send_test_message,
        } => crate::check_cmds::test_all(ctx, &profile, send_test_message).await,
        ProfileCmd::Delete { profile } => {
            let profile = ctx.sync.find_profile(&profile).await?;
            ctx.sync.delete_profile(&profile.id).await?;
            if ctx.json {
                output::json_value(&json!({"deleted": profile.id}));
            } else {
                println!("Deleted profile {}", profile.name);
            }
            Ok(())
        }
    }
}

fn set_secret(profile: &mut ServerProfile, secret: String) {
    use mailsync::model::Authentication;
    match &mut profile.authentication {
        Authentication::GmailOAuth { app } | Authentication::OAuthProvider { app, .. } => {
            app.client_secret = Some(secret.into())
        }
        Authentication::CredentialsInProfile { password, .. } => *password = Some(secret.into()),
        Authentication::CredentialsPerMailbox => {}
    }
}

async fn profile_name(ctx: &Ctx, id: Option<&ProfileId>) -> Result<String, Error> {
    match id {
        None => Ok("-".into()),
        Some(id) => Ok(ctx.sync.get_profile(id).await?.name),
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
        } => {
            let mut spec = match (queue, forward) {
                (Some(queue), _) => MailboxSpec::queue(email, queue),
                (None, true) => MailboxSpec::forward(email),
                (None, false) => MailboxSpec::user(email),
            };
            spec.name = name;
            spec.allow_spill_over = spill_over;
            if let Some(profile) = profile {
                spec.profile_id = Some(ctx.sync.find_profile(&profile).await?.id);
            }
            let mailbox = ctx.sync.create_mailbox(spec).await?;
            let name = profile_name(ctx, mailbox.profile_id.as_ref()).await?;
            if ctx.json {
                output::json_value(&json!(mailbox));
            } else {
                output::mailbox_details(&mailbox, &name);
            }
            Ok(())
        }
        MailboxCmd::List { profile } => {
            let profile = match profile {
                Some(p) => Some(ctx.sync.find_profile(&p).await?.id),
                None => None,
            };
            let mailboxes = ctx.sync.list_mailboxes(profile.as_ref()).await?;
            if ctx.json {
                output::json_value(&json!(mailboxes));
            } else {
                let names: std::collections::HashMap<_, _> = ctx
                    .sync
                    .list_profiles()
                    .await?
                    .into_iter()
                    .map(|p| (p.id, p.name))
                    .collect();
                let rows: Vec<_> = mailboxes
                    .iter()
                    .map(|m| {
                        let name = m
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
            let mailbox = ctx.sync.find_mailbox(&mailbox).await?;
            let name = profile_name(ctx, mailbox.profile_id.as_ref()).await?;
            if ctx.json {
                output::json_value(&json!(mailbox));
            } else {
                output::mailbox_details(&mailbox, &name);
            }
            Ok(())
        }
        MailboxCmd::TestEnable {
            mailbox,
            send_test_message,
        } => crate::check_cmds::test_enable(ctx, &mailbox, send_test_message).await,
        MailboxCmd::Delete { mailbox } => {
            let mailbox = ctx.sync.find_mailbox(&mailbox).await?;
            ctx.sync.delete_mailbox(&mailbox.id).await?;
            if ctx.json {
                output::json_value(&json!({"deleted": mailbox.id}));
            } else {
                println!("Deleted mailbox {}", mailbox.email);
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
