//! `mailsync-crm`: runs the reference CRM (see the crate docs).
//!
//! ```text
//! mailsync-crm [--data DIR] [--listen 127.0.0.1:PORT] [--base-url URL]
//!              [--stack tests/stack/run/stack.json] [--postpone-secs N] [--max-idle-secs N]
//!              [--url-file FILE]
//! ```
//!
//! `--stack` points Gmail OAuth at the local test stack (its OAuth server
//! plays Google, its CA is trusted, new profiles default to its Dovecot and
//! Postfix). Without it, `MAILSYNC_GOOGLE_ISSUER_OVERRIDE` and
//! `MAILSYNC_EXTRA_ROOT_CERT` (a PEM file) do the same by hand. The
//! environment URL defaults to the app's own URL, so the redirect URI
//! `<URL>/_grid/cmds/dlg_gmailoauth.aspx` comes back to it.

use std::path::PathBuf;
use std::time::Duration;

use mailsync::{EngineOptions, Options};
use mailsync_crm::{App, Config, StackDefaults};

struct Args {
    data: PathBuf,
    listen: String,
    base_url: Option<String>,
    stack: Option<PathBuf>,
    postpone_secs: u32,
    max_idle_secs: u64,
    url_file: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: mailsync-crm [--data DIR] [--listen 127.0.0.1:PORT] [--base-url URL] [--stack STACK_JSON]\n\
         \x20                   [--postpone-secs N] [--max-idle-secs N] [--url-file FILE]"
    );
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args {
        data: PathBuf::from("crm-data"),
        listen: "127.0.0.1:0".into(),
        base_url: None,
        stack: None,
        postpone_secs: 300,
        max_idle_secs: 30,
        url_file: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--data" => a.data = value().into(),
            "--listen" => a.listen = value(),
            "--base-url" => a.base_url = Some(value()),
            "--stack" => a.stack = Some(value().into()),
            "--postpone-secs" => a.postpone_secs = value().parse().unwrap_or_else(|_| usage()),
            "--max-idle-secs" => a.max_idle_secs = value().parse().unwrap_or_else(|_| usage()),
            "--url-file" => a.url_file = Some(value().into()),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    a
}

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("mailsync-crm: {message}");
    std::process::exit(1)
}

/// Options and profile defaults from the local stack's `stack.json`.
fn from_stack(path: &PathBuf, options: &mut Options) -> StackDefaults {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| fail(format!("cannot read {}: {e}", path.display())));
    let stack: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let port = |v: &serde_json::Value| u16::try_from(v.as_u64().unwrap_or(0)).unwrap_or(0);
    let ca = std::fs::read_to_string(s(&stack["ca_cert"]))
        .unwrap_or_else(|e| fail(format!("cannot read the stack's CA: {e}")));
    options.extra_root_certs_pem.push(ca);
    options.google_issuer_override = Some(s(&stack["oauth"]["issuer"]));
    StackDefaults {
        imap_host: s(&stack["imap"]["host"]),
        imap_port: port(&stack["imap"]["tls_port"]),
        smtp_host: s(&stack["smtp"]["host"]),
        smtp_port: port(&stack["smtp"]["starttls_port"]),
        client_id: s(&stack["oauth"]["client_id"]),
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,mailsync=info,mailsync_crm=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = args();
    let mut options = Options::default();
    if let Ok(issuer) = std::env::var("MAILSYNC_GOOGLE_ISSUER_OVERRIDE") {
        options.google_issuer_override = Some(issuer);
    }
    if let Ok(path) = std::env::var("MAILSYNC_EXTRA_ROOT_CERT") {
        let pem = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| fail(format!("cannot read {path}: {e}")));
        options.extra_root_certs_pem.push(pem);
    }
    let stack = args.stack.as_ref().map(|p| from_stack(p, &mut options));
    let mut engine_options = EngineOptions::default();
    engine_options.postpone_secs = args.postpone_secs;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(e));
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .unwrap_or_else(|e| fail(format!("cannot listen on {}: {e}", args.listen)));
        let local = listener.local_addr().unwrap_or_else(|e| fail(e));
        let base_url = args
            .base_url
            .clone()
            .unwrap_or_else(|| format!("http://{local}"));
        let mut config = Config::new(&base_url);
        config.stack = stack;
        let app = App::open(&args.data, config, options, engine_options)
            .await
            .unwrap_or_else(|e| fail(e));
        let engine = app.start_engine(Duration::from_secs(args.max_idle_secs.max(1)));
        let url = format!("{}/", base_url.trim_end_matches('/'));
        println!("CRM running at {url}  (data: {})", args.data.display());
        if let Some(file) = &args.url_file {
            std::fs::write(file, &url).unwrap_or_else(|e| fail(e));
        }
        let served = axum::serve(listener, app.router())
            .with_graceful_shutdown(shutdown())
            .await;
        engine.stop().await;
        app.close().await;
        if let Err(e) = served {
            fail(e);
        }
    });
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
