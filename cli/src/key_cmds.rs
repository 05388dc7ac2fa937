//! `mailsync key rotate` and `mailsync revocations list|retry`: the seal
//! key's rotation and the queue of revocations that failed transiently
//! (docs/security.md).

use std::io::Read as _;
use std::path::PathBuf;

use clap::Subcommand;
use mailsync::{Error, SealKey};

use crate::Ctx;
use crate::output;

/// The seal key that protects the secrets in the database.
#[derive(Subcommand)]
pub enum KeyCmd {
    /// Re-seals every secret with a new key in one transaction and replaces
    /// the key file <db>.key. Stop other processes using the database first.
    /// An interrupted rotation is finished the next time the database opens;
    /// running it again is safe.
    Rotate {
        /// Read the new key from this file (32 raw bytes, or their base64 or
        /// hex text; `-` reads the text from standard input) instead of
        /// generating a random one.
        #[arg(long, value_name = "FILE")]
        new_key: Option<PathBuf>,
    },
}

/// Revocations (RFC 7009) that failed for now and are queued.
#[derive(Subcommand)]
pub enum RevocationsCmd {
    /// Lists the queued revocations (never the tokens).
    List,
    /// Sends the due ones again (run it every few minutes, e.g. from cron).
    Retry,
}

fn read_key(path: &PathBuf) -> Result<SealKey, Error> {
    let bytes = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| {
            Error::validation("new_key", format!("cannot read standard input: {e}"))
        })?;
        text.trim().as_bytes().to_vec()
    } else {
        std::fs::read(path).map_err(|e| {
            Error::validation("new_key", format!("cannot read {}: {e}", path.display()))
        })?
    };
    if bytes.len() == 32 {
        return SealKey::from_bytes(&bytes);
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        Error::validation("new_key", "must be 32 bytes, or their base64 or hex text")
    })?;
    SealKey::from_text(text)
}

pub async fn run_key(ctx: &Ctx, cmd: KeyCmd) -> Result<(), Error> {
    match cmd {
        KeyCmd::Rotate { new_key } => {
            let key = match &new_key {
                Some(path) => read_key(path)?,
                None => SealKey::generate()?,
            };
            let done = ctx.sync.rotate_key(key).await?;
            if ctx.json {
                output::json_value(&serde_json::json!({
                    "resealed": done.resealed,
                    "already_rotated": done.already_rotated,
                }));
            } else if done.already_rotated {
                outln!("the database already uses this key; nothing to do");
            } else {
                outln!(
                    "re-sealed {} values with the new key; {} now holds it",
                    done.resealed,
                    mailsync::default_key_path(&ctx.db).display()
                );
            }
            Ok(())
        }
    }
}

pub async fn run_revocations(ctx: &Ctx, cmd: RevocationsCmd) -> Result<(), Error> {
    match cmd {
        RevocationsCmd::List => {
            let all = ctx.sync.store().list_revocations().await?;
            if ctx.json {
                let rows: Vec<serde_json::Value> = all
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "id": r.id,
                            "mailbox_id": r.mailbox_id.to_string(),
                            "issuer": r.issuer,
                            "endpoint": r.endpoint,
                            "attempts": r.attempts,
                            "last_error": r.last_error,
                            "next_attempt_at": output::timestamp(r.next_attempt_at),
                        })
                    })
                    .collect();
                output::json_value(&serde_json::Value::Array(rows));
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|r| {
                        vec![
                            r.mailbox_id.to_string(),
                            r.endpoint.clone(),
                            r.attempts.to_string(),
                            r.last_error.clone().unwrap_or_default(),
                            output::timestamp(r.next_attempt_at),
                        ]
                    })
                    .collect();
                output::table(
                    &["MAILBOX", "ENDPOINT", "ATTEMPTS", "LAST ERROR", "NEXT"],
                    &rows,
                );
            }
            Ok(())
        }
        RevocationsCmd::Retry => {
            let sent = ctx.sync.connections().retry_revocations().await?;
            let left = ctx.sync.connections().pending_revocations().await?;
            if ctx.json {
                output::json_value(&serde_json::json!({ "sent": sent, "queued": left }));
            } else {
                outln!("sent {sent}; {left} still queued");
            }
            Ok(())
        }
    }
}
