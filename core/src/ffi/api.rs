//! The public operations as one description, from which every binding
//! generates its surface.
//!
//! [`for_each_operation!`](crate::for_each_operation) hands the list of
//! area operations (async, on [`crate::Directory`], [`crate::Connections`]
//! and [`crate::Checks`]) to a binding's macro, and
//! [`for_each_function!`](crate::for_each_function) the list of plain
//! functions (presets and rules of the model). A binding writes one macro
//! that turns one entry into a function of its host language; adding an
//! operation here adds it to Python, Node and Kotlin at once, with the same
//! name and arguments.
//!
//! Arguments are written `kind name: Type`, where `kind` says how the
//! binding passes its owned value to the core call: `val` (by value), `ref`
//! (by reference) or `opt` (an `Option` passed as `Option<&T>`); see
//! [`ffi_arg!`](crate::ffi_arg).

use crate::error::Result;
use crate::lifecycle::FailurePolicy;
use crate::model::{
    Authentication, Endpoint, IncomingEndpoint, MailboxSpec, OAuthApp, PublishingStatus,
    ServerProfile, UserType, Warning,
};
use crate::options::Options;

/// Passes a binding's owned argument to a core call as the operation list
/// says: `val x` → `x`, `ref x` → `&x`, `opt x` → `x.as_ref()`.
#[macro_export]
macro_rules! ffi_arg {
    (val $name:ident) => {
        $name
    };
    (ref $name:ident) => {
        &$name
    };
    (opt $name:ident) => {
        $name.as_ref()
    };
}

/// Calls `$callback!` with every async operation of the areas, one entry
/// per line: `Area name(kind arg: Type, ...) -> Return;`, where `Area` is
/// the area's type name (`Directory`, `Connections`, `Checks`) and the core
/// call is `mailsync::Area::name`. See the module docs.
#[macro_export]
macro_rules! for_each_operation {
    ($callback:ident) => {
        $callback! {
            Directory create_profile(val profile: $crate::model::ServerProfile) -> $crate::model::ServerProfile;
            Directory update_profile(val profile: $crate::model::ServerProfile) -> $crate::model::ServerProfile;
            Directory get_profile(ref id: $crate::model::ProfileId) -> $crate::model::ServerProfile;
            Directory find_profile(ref id_or_name: String) -> $crate::model::ServerProfile;
            Directory list_profiles() -> Vec<$crate::model::ServerProfile>;
            Directory default_profile() -> Option<$crate::model::ServerProfile>;
            Directory set_default_profile(ref id: $crate::model::ProfileId) -> $crate::model::ServerProfile;
            Directory mailbox_count(ref profile: $crate::model::ProfileId) -> u32;
            Directory delete_profile(ref id: $crate::model::ProfileId) -> ();
            Directory create_mailbox(val spec: $crate::model::MailboxSpec) -> $crate::model::Mailbox;
            Directory get_mailbox(ref id: $crate::model::MailboxId) -> $crate::model::Mailbox;
            Directory find_mailbox(ref id_or_email: String) -> $crate::model::Mailbox;
            Directory list_mailboxes(opt profile: Option<$crate::model::ProfileId>) -> Vec<$crate::model::Mailbox>;
            Directory update_mailbox(val mailbox: $crate::model::Mailbox) -> $crate::model::Mailbox;
            Directory move_mailbox(ref mailbox: $crate::model::MailboxId, ref profile: $crate::model::ProfileId) -> $crate::model::Mailbox;
            Directory delete_mailbox(ref id: $crate::model::MailboxId) -> ();
            Directory state(ref id: $crate::model::MailboxId) -> $crate::lifecycle::MailboxState;
            Directory alerts(ref id: $crate::model::MailboxId) -> Vec<$crate::model::Alert>;
            Directory status(ref id: $crate::model::MailboxId) -> $crate::directory::MailboxStatus;
            Directory rotate_key(ref new_key: $crate::model::Secret) -> $crate::store::KeyRotation;
            Connections connect(ref mailbox: $crate::model::MailboxId) -> $crate::connections::ConsentRequest;
            Connections complete(ref callback_url: String) -> $crate::directory::MailboxStatus;
            Connections access_token(ref mailbox: $crate::model::MailboxId) -> $crate::connections::AccessToken;
            Connections refresh_access_token(ref mailbox: $crate::model::MailboxId, ref rejected: $crate::model::Secret) -> $crate::connections::AccessToken;
            Connections grant_info(ref mailbox: $crate::model::MailboxId) -> Option<$crate::connections::GrantInfo>;
            Connections disconnect(ref mailbox: $crate::model::MailboxId) -> $crate::directory::MailboxStatus;
            Connections retry_revocations() -> u32;
            Connections pending_revocations() -> u32;
            Checks test_and_enable(ref mailbox: $crate::model::MailboxId, ref options: $crate::checks::TestOptions) -> $crate::checks::TestReport;
            Checks test_all(ref profile: $crate::model::ProfileId, ref options: $crate::checks::TestOptions) -> Vec<$crate::checks::TestReport>;
            Checks last_profile_test(ref profile: $crate::model::ProfileId) -> Option<$crate::model::LastTestResult>;
        }
    };
}

/// Calls `$callback!` with every plain function, one entry per line:
/// `name(arg: Type, ...) -> Return;` for the functions of [`self`] (each
/// returns `Result<Return>`). See the module docs.
#[macro_export]
macro_rules! for_each_function {
    ($callback:ident) => {
        $callback! {
            google_app(client_id: String, client_secret: String) -> $crate::model::OAuthApp;
            web_app(client_id: String, client_secret: String) -> $crate::model::OAuthApp;
            app_for_environment(app: $crate::model::OAuthApp, environment_url: String, redirect_path: Option<String>) -> $crate::model::OAuthApp;
            app_with_audience(app: $crate::model::OAuthApp, user_type: $crate::model::UserType, publishing_status: $crate::model::PublishingStatus) -> $crate::model::OAuthApp;
            app_with_test_users(app: $crate::model::OAuthApp, users: Vec<String>) -> $crate::model::OAuthApp;
            app_warnings(app: $crate::model::OAuthApp) -> Vec<$crate::model::Warning>;
            app_ensure_may_connect(app: $crate::model::OAuthApp, email: String) -> ();
            gmail_profile(name: String, app: $crate::model::OAuthApp) -> $crate::model::ServerProfile;
            generic_profile(name: String, incoming: $crate::model::IncomingEndpoint, outgoing: $crate::model::Endpoint, authentication: $crate::model::Authentication) -> $crate::model::ServerProfile;
            profile_use_pop3(profile: $crate::model::ServerProfile) -> $crate::model::ServerProfile;
            profile_use_smtp_tls_465(profile: $crate::model::ServerProfile) -> $crate::model::ServerProfile;
            validate_profile(profile: $crate::model::ServerProfile) -> ();
            user_mailbox(email: String) -> $crate::model::MailboxSpec;
            queue_mailbox(email: String, queue: String) -> $crate::model::MailboxSpec;
            forward_mailbox(email: String) -> $crate::model::MailboxSpec;
            default_options() -> $crate::options::Options;
            default_failure_policy() -> $crate::lifecycle::FailurePolicy;
            validate_options(options: $crate::options::Options) -> ();
            error_codes() -> Vec<$crate::ErrorCode>;
            error_next_action(code: $crate::ErrorCode) -> String;
            error_is_transient(code: $crate::ErrorCode) -> bool;
        }
    };
}

/// Calls `$callback!` with every record and enum type of core that carries
/// binding derives, comma-separated. Node and UniFFI find derived types on
/// their own; a Python module must register each class, which the Python
/// binding does from this list. A type added to core with its derives is
/// added here, never in a binding.
#[macro_export]
macro_rules! for_each_record {
    ($callback:ident) => {
        $callback!(
            $crate::model::OAuthApp,
            $crate::model::ConsentScreen,
            $crate::model::Warning,
            $crate::model::Endpoint,
            $crate::model::IncomingEndpoint,
            $crate::model::Authentication,
            $crate::model::ProcessingOptions,
            $crate::model::LastTestResult,
            $crate::model::ServerProfile,
            $crate::model::Owner,
            $crate::model::MailboxCredentials,
            $crate::model::Alert,
            $crate::model::Mailbox,
            $crate::model::MailboxSpec,
            $crate::lifecycle::PendingConsent,
            $crate::lifecycle::GrantStatus,
            $crate::lifecycle::TestStatus,
            $crate::lifecycle::DirectionStatus,
            $crate::lifecycle::DirectionState,
            $crate::lifecycle::MailboxState,
            $crate::lifecycle::FailurePolicy,
            $crate::directory::MailboxStatus,
            $crate::connections::ConsentRequest,
            $crate::connections::AccessToken,
            $crate::connections::GrantInfo,
            $crate::store::KeyRotation,
            $crate::checks::TestOptions,
            $crate::checks::StepResult,
            $crate::checks::Diagnosis,
            $crate::checks::DirectionReport,
            $crate::checks::TestReport,
            $crate::events::MailboxEvent,
            $crate::options::RetryPolicy,
            $crate::options::Options,
            $crate::sync::EngineOptions,
            $crate::sync::MailAddress,
            $crate::sync::IncomingMessage,
            $crate::sync::CycleReport,
            $crate::sync::SyncProgress,
            $crate::sync::SyncStatus,
            $crate::sync::ImapCursor,
            $crate::sync::SyncCursor,
            $crate::sync::OutgoingMessage,
            $crate::sync::OutgoingContent,
            $crate::sync::ComposedMessage,
            $crate::sync::OutgoingAttachment,
            $crate::sync::RecipientRefusal,
            $crate::sync::SendOutcome,
            $crate::sync::SendReport,
            $crate::sync::OutgoingRecord,
            $crate::sync::OutboxCursor,
        )
    };
}

/// A Google "Web application" client ([`OAuthApp::google`]).
pub fn google_app(client_id: String, client_secret: String) -> Result<OAuthApp> {
    Ok(OAuthApp::google(client_id, client_secret))
}

/// A confidential web client of any provider ([`OAuthApp::web`]).
pub fn web_app(client_id: String, client_secret: String) -> Result<OAuthApp> {
    Ok(OAuthApp::web(client_id, client_secret))
}

/// The origin and redirect URI derived from the CRM's environment URL
/// ([`OAuthApp::for_environment`]); `redirect_path` replaces
/// `/_grid/cmds/dlg_gmailoauth.aspx`.
pub fn app_for_environment(
    app: OAuthApp,
    environment_url: String,
    redirect_path: Option<String>,
) -> Result<OAuthApp> {
    match redirect_path {
        Some(path) => app.for_environment_with_path(&environment_url, &path),
        None => app.for_environment(&environment_url),
    }
}

/// Sets the consent screen's audience ([`OAuthApp::with_audience`]).
pub fn app_with_audience(
    app: OAuthApp,
    user_type: UserType,
    publishing_status: PublishingStatus,
) -> Result<OAuthApp> {
    Ok(app.with_audience(user_type, publishing_status))
}

/// Adds test users, lower-cased ([`OAuthApp::with_test_users`]).
pub fn app_with_test_users(app: OAuthApp, users: Vec<String>) -> Result<OAuthApp> {
    Ok(app.with_test_users(users))
}

/// Consequences of the app's configuration that are not errors.
pub fn app_warnings(app: OAuthApp) -> Result<Vec<Warning>> {
    Ok(app.warnings())
}

/// `not_a_test_user` if the address may not consent ([`OAuthApp::ensure_may_connect`]).
pub fn app_ensure_may_connect(app: OAuthApp, email: String) -> Result<()> {
    app.ensure_may_connect(&email)
}

/// The Gmail profile preset ([`ServerProfile::gmail`]).
pub fn gmail_profile(name: String, app: OAuthApp) -> Result<ServerProfile> {
    Ok(ServerProfile::gmail(name, app))
}

/// A profile for any IMAP or POP3 server plus SMTP ([`ServerProfile::generic`]).
pub fn generic_profile(
    name: String,
    incoming: IncomingEndpoint,
    outgoing: Endpoint,
    authentication: Authentication,
) -> Result<ServerProfile> {
    Ok(ServerProfile::generic(
        name,
        incoming,
        outgoing,
        authentication,
    ))
}

/// Reads incoming mail over POP3 ([`ServerProfile::use_pop3`]).
pub fn profile_use_pop3(profile: ServerProfile) -> Result<ServerProfile> {
    Ok(profile.use_pop3())
}

/// Sends over implicit TLS on 465 ([`ServerProfile::use_smtp_tls_465`]).
pub fn profile_use_smtp_tls_465(profile: ServerProfile) -> Result<ServerProfile> {
    Ok(profile.use_smtp_tls_465())
}

/// Checks every field of a profile ([`ServerProfile::validate`]).
pub fn validate_profile(profile: ServerProfile) -> Result<()> {
    profile.validate()
}

/// A user's mailbox with server-side sync both ways ([`MailboxSpec::user`]).
pub fn user_mailbox(email: String) -> Result<MailboxSpec> {
    Ok(MailboxSpec::user(email))
}

/// A queue's mailbox ([`MailboxSpec::queue`]).
pub fn queue_mailbox(email: String, queue: String) -> Result<MailboxSpec> {
    Ok(MailboxSpec::queue(email, queue))
}

/// A forward mailbox, incoming only ([`MailboxSpec::forward`]).
pub fn forward_mailbox(email: String) -> Result<MailboxSpec> {
    Ok(MailboxSpec::forward(email))
}

/// The default options ([`Options::default`]).
pub fn default_options() -> Result<Options> {
    Ok(Options::default())
}

/// The default failure policy ([`FailurePolicy::default`]).
pub fn default_failure_policy() -> Result<FailurePolicy> {
    Ok(FailurePolicy::default())
}

/// Checks options ([`Options::validate`]).
pub fn validate_options(options: Options) -> Result<()> {
    options.validate()
}

/// Every error code, in documentation order.
pub fn error_codes() -> Result<Vec<crate::ErrorCode>> {
    Ok(crate::ErrorCode::ALL.to_vec())
}

/// What to do about an error code, in one sentence.
pub fn error_next_action(code: crate::ErrorCode) -> Result<String> {
    Ok(code.next_action().to_owned())
}

/// Whether an error code may succeed when retried later unchanged.
pub fn error_is_transient(code: crate::ErrorCode) -> Result<bool> {
    Ok(code.is_transient())
}
