//! The README's example, compiled by `cargo test` so it cannot rot.
//! Run: `cargo run -p mailsync --example readme -- '<redirect URL>'`

use mailsync::checks::TestOptions;
use mailsync::model::{MailboxSpec, OAuthApp, ServerProfile};
use mailsync::{ErrorCode, MailSync, Options, StoreConfig};

async fn connect_a_gmail_mailbox(callback_url_from_browser: &str) -> mailsync::Result<()> {
    // Embedded store; a new database gets its seal key next to it (mode 0600).
    let sync = MailSync::open(StoreConfig::sqlite("mailsync.db"), Options::default()).await?;

    // Admin: the Google Cloud Web client; origin and redirect URI derive from the CRM URL.
    let app = OAuthApp::google("1234-abc.apps.googleusercontent.com", "GOCSPX-…")
        .for_environment("https://contoso.crm.example.com")?;
    sync.directory()
        .create_profile(ServerProfile::gmail("Gmail - sales", app).default_for_new_mailboxes())
        .await?; // imap.gmail.com:993 TLS, smtp.gmail.com:587 STARTTLS, Gmail OAuth, ≤100 mailboxes

    // User: a mailbox on the default profile, consent, then Test & Enable.
    let alice = sync
        .directory()
        .create_mailbox(MailboxSpec::user("alice@gmail.com"))
        .await?;
    let consent = sync.connections().connect(&alice.id).await?; // PKCE + single-use state, stored
    println!("send the user to {}", consent.url);
    // …Google redirects to <env>/_grid/cmds/dlg_gmailoauth.aspx?code=…&state=…
    sync.connections()
        .complete(callback_url_from_browser)
        .await?;
    let report = sync
        .checks()
        .test_and_enable(&alice.id, &TestOptions::default())
        .await?;
    if let Some(failure) = report.first_failure() {
        println!(
            "{} failed: {} [{}] — {}",
            failure.step, failure.message, failure.code, failure.next_action
        );
    }

    // Every failure has a stable code, the same in Python, Node and Kotlin.
    match sync
        .directory()
        .create_mailbox(MailboxSpec::user("alice@gmail.com"))
        .await
    {
        Err(e) if e.code() == ErrorCode::AlreadyExists => {}
        other => drop(other?),
    }
    sync.close().await;
    Ok(())
}

fn main() {
    let Some(callback) = std::env::args().nth(1) else {
        eprintln!("usage: readme '<redirect URL from the browser>'");
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = runtime.block_on(connect_a_gmail_mailbox(&callback)) {
        eprintln!("{e}");
    }
}
