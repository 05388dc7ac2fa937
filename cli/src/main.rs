//! `mailsync`: every admin and user step of Gmail server-side sync from a
//! terminal, over the embedded SQLite store.
//!
//! Output is a human table by default and JSON with `--json`. Every failure
//! prints one line, `mailsync: <message> [<code>]`, and exits with status 1
//! (2 for command-line usage errors). Secrets are never taken from the
//! command line, where other users could see them in the process list: pass
//! them through an environment variable or a file (`-` for stdin).

/// `println!` for command output. When stdout is closed early (`mailsync
/// mailbox list | head -1`) the command ends quietly with status 141, as
/// if killed by SIGPIPE like other Unix tools, instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*) {
            $crate::stdout_failed(e)
        }
    }};
}

mod check_cmds;
mod key_cmds;
mod oauth_cmds;
mod outbox_cmds;
mod output;
mod profile_cmds;
mod sync_cmds;
mod sync_progress;
mod sync_sink;
mod worker_cmds;

/// Set when a command was interrupted (Ctrl-C, SIGTERM) and stopped
/// cleanly: the process exits with status 130.
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Ends the process after a failed write to stdout (see `outln!`).
pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    eprintln!("mailsync: cannot write to standard output: {e} [internal]");
    std::process::exit(1);
}

use clap::{Parser, Subcommand};
use mailsync::{Error, ErrorCode, MailSync, Options, StoreConfig};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mailsync",
    version,
    about = "Gmail OAuth server-side mail sync for CRMs"
)]
struct Cli {
    /// SQLite database file (its seal key lives next to it as <db>.key).
    #[arg(
        long,
        global = true,
        env = "MAILSYNC_DB",
        default_value = "mailsync.db"
    )]
    db: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Also trust this CA certificate (PEM) for TLS to mail and OAuth servers.
    #[arg(long, global = true, env = "MAILSYNC_EXTRA_ROOT_CERT")]
    extra_root_cert: Option<PathBuf>,
    /// Send Gmail OAuth to this issuer instead of Google (local test stacks, proxies).
    #[arg(long, global = true, env = "MAILSYNC_GOOGLE_ISSUER_OVERRIDE")]
    google_issuer_override: Option<String>,
    /// Refresh access tokens this many seconds before they expire (default
    /// 300; never more than half a token's lifetime).
    #[arg(
        long,
        global = true,
        env = "MAILSYNC_REFRESH_SKEW",
        value_name = "SECONDS"
    )]
    refresh_skew: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Email server profiles.
    #[command(subcommand)]
    Profile(profile_cmds::ProfileCmd),
    /// Mailboxes.
    #[command(subcommand)]
    Mailbox(oauth_cmds::MailboxAll),
    /// Sync enabled mailboxes: incoming mail into a directory (or onto the
    /// terminal), and the CLI's outbox out over SMTP.
    ///
    /// The files sink's index.jsonl is the CLI's tracked email: with the
    /// default incoming filter (replies-to-tracked-email) only replies to
    /// mail already in the index are taken in; `mailbox update EMAIL
    /// --incoming-filter all` takes in everything. Mail queued with
    /// `mailsync send` goes out from mailboxes whose outgoing direction is
    /// enabled.
    #[command(subcommand)]
    Sync(sync_cmds::SyncCmd),
    /// The seal key of the database's secrets.
    #[command(subcommand)]
    Key(key_cmds::KeyCmd),
    /// Revocations that failed for now, queued to be sent again.
    #[command(subcommand)]
    Revocations(key_cmds::RevocationsCmd),
    /// Queues one message in the CLI's outbox, sent from the mailbox by the
    /// next `mailsync sync once|run`.
    Send(outbox_cmds::SendArgs),
    /// The CLI's outbox.
    #[command(subcommand)]
    Outbox(outbox_cmds::OutboxCmd),
    /// Lists every error code with what to do about it.
    ErrorCodes,
    #[command(flatten)]
    Workers(worker_cmds::WorkerCmd),
}

/// What a command printed, for the two output styles.
pub struct Ctx {
    pub sync: MailSync,
    pub json: bool,
    /// The database file (`--db`).
    pub db: PathBuf,
}

async fn run(cli: Cli) -> Result<(), Error> {
    if let Command::ErrorCodes = cli.command {
        output::error_codes(cli.json);
        return Ok(());
    }
    let mut options = Options::default();
    if let Some(path) = &cli.extra_root_cert {
        let pem = std::fs::read_to_string(path).map_err(|e| {
            Error::validation(
                "extra_root_cert",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        options.extra_root_certs_pem.push(pem);
    }
    if let Some(issuer) = &cli.google_issuer_override {
        options.google_issuer_override = Some(issuer.clone());
    }
    if let Some(seconds) = cli.refresh_skew {
        options.token_refresh_skew_secs = seconds;
    }
    let command = match cli.command {
        // Workers share a PostgreSQL store (`--db postgres://…`).
        Command::Workers(cmd) => return worker_cmds::run(&cli.db, cli.json, options, cmd).await,
        command => command,
    };
    let sync = MailSync::open(StoreConfig::sqlite(&cli.db), options).await?;
    let ctx = Ctx {
        sync,
        json: cli.json,
        db: cli.db.clone(),
    };
    let result = match command {
        Command::Profile(cmd) => profile_cmds::run_profile(&ctx, cmd).await,
        Command::Mailbox(oauth_cmds::MailboxAll::Directory(cmd)) => {
            profile_cmds::run_mailbox(&ctx, cmd).await
        }
        Command::Mailbox(oauth_cmds::MailboxAll::OAuth(cmd)) => oauth_cmds::run(&ctx, cmd).await,
        Command::Sync(cmd) => sync_cmds::run(&ctx, cmd).await,
        Command::Key(cmd) => key_cmds::run_key(&ctx, cmd).await,
        Command::Revocations(cmd) => key_cmds::run_revocations(&ctx, cmd).await,
        Command::Send(args) => outbox_cmds::send(&ctx, args).await,
        Command::Outbox(cmd) => outbox_cmds::run(&ctx, cmd).await,
        Command::ErrorCodes | Command::Workers(_) => Ok(()),
    };
    ctx.sync.close().await;
    result
}

fn main() -> ExitCode {
    // async-imap logs raw commands (including the SASL line that carries the
    // token) at trace level; keep that target off whatever MAILSYNC_LOG says.
    let filter = tracing_subscriber::EnvFilter::from_env("MAILSYNC_LOG")
        .add_directive("async_imap=off".parse().expect("static directive"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mailsync: cannot start the async runtime: {e} [internal]");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) => ExitCode::from(130),
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            output::error(&err, json);
            ExitCode::FAILURE
        }
    }
}

/// Reads a secret from an environment variable or a file (`-` = stdin).
pub fn read_secret(
    env: Option<&str>,
    file: Option<&PathBuf>,
    what: &str,
) -> Result<Option<String>, Error> {
    if let Some(name) = env {
        return std::env::var(name)
            .map(|v| Some(v.trim_end_matches(['\r', '\n']).to_owned()))
            .map_err(|_| {
                Error::validation(what, format!("environment variable {name} is not set"))
            });
    }
    if let Some(path) = file {
        let text = if path.as_os_str() == "-" {
            let mut buf = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf).map_err(|e| {
                Error::new(
                    ErrorCode::Validation,
                    format!("{what}: cannot read stdin: {e}"),
                )
            })?;
            buf
        } else {
            std::fs::read_to_string(path).map_err(|e| {
                Error::validation(what, format!("cannot read {}: {e}", path.display()))
            })?
        };
        return Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()));
    }
    Ok(None)
}
