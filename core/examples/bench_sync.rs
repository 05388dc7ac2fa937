//! The library's side of `scripts/bench`.
//!
//! ```text
//! bench_sync setup STACK_JSON DB [--from-now] EMAIL...
//!     A SQLite store with one password profile (generic IMAP/SMTP over TLS
//!     to the stack's Dovecot, credentials per mailbox from stack.json,
//!     minimum polling interval 0) and, per address, a mailbox with the
//!     incoming filter `all`, outgoing off, tested and enabled. Without
//!     --from-now the first cycle takes every message in the INBOX; with it,
//!     only mail received from now on.
//! bench_sync sync STACK_JSON DB EMAIL OUT_DIR
//!     One `run_once` of that mailbox with default EngineOptions and a
//!     minimal sink: each message as OUT_DIR/<uid>.eml (written on a
//!     blocking thread, no fsync). Prints the cycle report as JSON.
//! bench_sync idle STACK_JSON ROUNDS DB...
//!     Opens every store (each a copy of a `setup --from-now` store for
//!     sync01…sync20, so each address appears once per store), runs one
//!     untimed `run_due` per store (the first sync; nothing but the cursor),
//!     then ROUNDS rounds of `run_due` on all stores at once and ROUNDS
//!     rounds of `run_once` per mailbox one after the other, with this
//!     process's CPU time (getrusage) around each round. Prints JSON.
//! bench_sync idle-worker STACK_JSON DB ROUNDS
//!     One worker (`Engine::start`, default EngineOptions but postponement
//!     0, so every mailbox is due again at once) over every mailbox of the
//!     store (a `setup --from-now` store: nothing new arrives). After each
//!     mailbox's first cycle, ROUNDS more cycles of every mailbox, with this
//!     process's CPU time around them; then its resident memory. Prints
//!     JSON.
//! ```
//!
//! DB is a SQLite path, or a `postgres://` URL (then BENCH_KEY_FILE names
//! the seal key file, created if missing). Addresses of the stack's bulk
//! accounts (`bulk001@…`) use the bulk password.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt as _;
use mailsync::checks::TestOptions;
use mailsync::model::{
    Authentication, Endpoint, IncomingEndpoint, IncomingFilter, IncomingProtocol,
    MailboxCredentials, MailboxSpec, OutgoingDelivery, Security, ServerProfile,
};
use mailsync::sync::{DeliveryOutcome, IncomingMessage, MessageSink};
use mailsync::{Engine, EngineOptions, MailSync, Options, StoreConfig, Timestamp};

type Failure = Box<dyn std::error::Error + Send + Sync>;

struct Stack(serde_json::Value);

impl Stack {
    fn load(path: &str) -> Result<Stack, Failure> {
        Ok(Stack(serde_json::from_slice(&std::fs::read(path)?)?))
    }

    fn str(&self, a: &str, b: &str) -> String {
        self.0[a][b].as_str().unwrap_or_default().to_owned()
    }

    fn port(&self, a: &str, b: &str) -> u16 {
        self.0[a][b].as_u64().unwrap_or_default() as u16
    }

    fn password(&self, email: &str) -> Result<String, Failure> {
        let bulk = &self.0["bulk"];
        if let (Some(prefix), Some(password)) = (bulk["prefix"].as_str(), bulk["password"].as_str())
            && email.starts_with(prefix)
        {
            return Ok(password.to_owned());
        }
        Ok(self.0["accounts"]
            .as_array()
            .ok_or("accounts")?
            .iter()
            .find(|a| a["email"].as_str() == Some(email))
            .and_then(|a| a["password"].as_str())
            .ok_or_else(|| format!("{email} is not an account of the stack"))?
            .to_owned())
    }

    fn options(&self) -> Result<Options, Failure> {
        let mut options = Options::default();
        let ca = self.0["ca_cert"].as_str().ok_or("ca_cert")?;
        options.extra_root_certs_pem = vec![std::fs::read_to_string(ca)?];
        Ok(options)
    }
}

/// A SQLite path, or a `postgres://` URL with the key file in BENCH_KEY_FILE.
fn store_config(db: &str) -> Result<StoreConfig, Failure> {
    if db.starts_with("postgres://") {
        let key = std::env::var("BENCH_KEY_FILE").map_err(|_| "BENCH_KEY_FILE is not set")?;
        let key = mailsync::store::SealKey::load_or_create(std::path::Path::new(&key))?;
        Ok(StoreConfig::postgres(db, key))
    } else {
        Ok(StoreConfig::sqlite(db))
    }
}

async fn setup(stack: &Stack, db: &str, from_now: bool, emails: &[String]) -> Result<(), Failure> {
    let sync = MailSync::open(store_config(db)?, stack.options()?).await?;
    let incoming = IncomingEndpoint {
        protocol: IncomingProtocol::Imap,
        endpoint: Endpoint::new(
            stack.str("imap", "host"),
            stack.port("imap", "tls_port"),
            Security::Tls,
        ),
    };
    let outgoing = Endpoint::new(
        stack.str("smtp", "host"),
        stack.port("smtp", "starttls_port"),
        Security::StartTls,
    );
    let mut profile = ServerProfile::generic(
        "Stack passwords (bench)",
        incoming,
        outgoing,
        Authentication::CredentialsPerMailbox {},
    )
    .default_for_new_mailboxes();
    profile.processing.min_polling_interval_minutes = 0;
    profile.processing.max_concurrent_connections = 300;
    let profile = sync.directory().create_profile(profile).await?;
    // Up to 16 mailboxes are set up at once.
    let one = |email: String| {
        let (sync, profile_id) = (sync.clone(), profile.id.clone());
        async move { setup_mailbox(stack, &sync, profile_id, &email, from_now).await }
    };
    let mut setups = futures::stream::iter(emails.iter().cloned().map(one)).buffer_unordered(16);
    while let Some(done) = setups.next().await {
        done?;
    }
    drop(setups);
    sync.close().await;
    Ok(())
}

async fn setup_mailbox(
    stack: &Stack,
    sync: &MailSync,
    profile: mailsync::model::ProfileId,
    email: &str,
    from_now: bool,
) -> Result<(), Failure> {
    let mut spec = MailboxSpec::user(email)
        .on_profile(profile)
        .with_incoming_filter(IncomingFilter::All);
    spec.outgoing_delivery = OutgoingDelivery::None;
    spec.credentials = Some(MailboxCredentials {
        username: email.to_owned(),
        password: Some(stack.password(email)?.into()),
    });
    if from_now {
        spec.process_email_received_after = Some(Timestamp::now_utc());
    }
    let mailbox = sync.directory().create_mailbox(spec).await?;
    let report = sync
        .checks()
        .test_and_enable(&mailbox.id, &TestOptions::default())
        .await?;
    if !report.is_success() {
        return Err(format!("Test & Enable of {email} failed: {report:?}").into());
    }
    Ok(())
}

/// Each message as `<dir>/<uid>.eml`, nothing else.
struct FilesSink {
    dir: PathBuf,
}

#[async_trait]
impl MessageSink for FilesSink {
    async fn deliver(&self, batch: Vec<IncomingMessage>) -> mailsync::Result<Vec<DeliveryOutcome>> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            for m in &batch {
                let name = format!("{}.eml", m.uid.unwrap_or_default());
                std::fs::write(dir.join(name), &m.raw[..])
                    .map_err(|e| mailsync::Error::new(mailsync::ErrorCode::Store, e.to_string()))?;
            }
            Ok(vec![DeliveryOutcome::Stored; batch.len()])
        })
        .await
        .map_err(|e| mailsync::Error::new(mailsync::ErrorCode::Internal, e.to_string()))?
    }
}

async fn sync_once(stack: &Stack, db: &str, email: &str, out: &str) -> Result<(), Failure> {
    std::fs::create_dir_all(out)?;
    let sync = MailSync::open(StoreConfig::sqlite(db), stack.options()?).await?;
    let mailbox = sync.directory().find_mailbox(email).await?;
    let sink = Arc::new(FilesSink { dir: out.into() });
    let engine = Engine::new(sync.clone(), sink, EngineOptions::default())?;
    let report = if std::env::var_os("BENCH_SPAWN").is_some() {
        let (engine, id) = (engine.clone(), mailbox.id.clone());
        tokio::spawn(async move { engine.run_once(&id).await }).await??
    } else {
        engine.run_once(&mailbox.id).await?
    };
    sync.close().await;
    println!(
        "{}",
        serde_json::json!({
            "delivered": report.delivered,
            "bytes": report.bytes,
            "more": report.more,
            "duration_ms": report.duration_ms,
            "error": report.error_message,
        })
    );
    if !report.is_success() {
        return Err("the cycle failed".into());
    }
    Ok(())
}

/// Nothing is kept (idle cycles deliver nothing, unless a test delivered meanwhile).
struct Discard;

#[async_trait]
impl MessageSink for Discard {
    async fn deliver(&self, batch: Vec<IncomingMessage>) -> mailsync::Result<Vec<DeliveryOutcome>> {
        Ok(vec![DeliveryOutcome::Stored; batch.len()])
    }
}

#[repr(C)]
#[derive(Default)]
struct Timeval {
    sec: i64,
    usec: i64,
}

/// Linux `struct rusage` (x86_64 / aarch64 layout).
#[repr(C)]
#[derive(Default)]
struct Rusage {
    utime: Timeval,
    stime: Timeval,
    rest: [i64; 14],
}

unsafe extern "C" {
    fn getrusage(who: i32, usage: *mut Rusage) -> i32;
}

/// This process's user + system CPU time so far.
fn cpu() -> Duration {
    let mut u = Rusage::default();
    // SAFETY: `u` is a valid, writable `struct rusage`; RUSAGE_SELF = 0.
    let rc = unsafe { getrusage(0, &mut u) };
    assert_eq!(rc, 0, "getrusage");
    let us = |t: &Timeval| t.sec as u64 * 1_000_000 + t.usec as u64;
    Duration::from_micros(us(&u.utime) + us(&u.stime))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

async fn idle(stack: &Stack, rounds: usize, dbs: &[String]) -> Result<(), Failure> {
    let mut options = EngineOptions::default();
    options.postpone_secs = 0;
    options.workers = 20;
    let mut engines = Vec::new();
    let mut mailboxes = Vec::new();
    for db in dbs {
        let sync = MailSync::open(StoreConfig::sqlite(db), stack.options()?).await?;
        let engine = Engine::new(sync.clone(), Arc::new(Discard), options.clone())?;
        for m in sync.directory().list_mailboxes(None).await? {
            mailboxes.push((engines.len(), m.id));
        }
        engines.push((sync, engine));
    }
    let n = mailboxes.len();
    // The first cycle of each mailbox (cursor at the INBOX's end), untimed.
    let first = futures::future::join_all(engines.iter().map(|(_, e)| e.run_due())).await;
    let mut first_failed = 0;
    for r in first {
        first_failed += r?.iter().filter(|r| !r.is_success()).count();
    }
    if first_failed > 0 {
        return Err(format!("{first_failed} first cycles failed").into());
    }
    let mut due_cpu = Vec::new();
    let mut due_wall = Vec::new();
    let mut once_cpu = Vec::new();
    let mut once_wall = Vec::new();
    let (mut cycles, mut delivered, mut failed) = (0usize, 0u64, 0usize);
    for _ in 0..rounds {
        let (c0, w0) = (cpu(), Instant::now());
        let all = futures::future::join_all(engines.iter().map(|(_, e)| e.run_due())).await;
        let (c1, w1) = (cpu(), w0.elapsed());
        let mut in_round = 0;
        for r in all {
            for r in r? {
                in_round += 1;
                delivered += u64::from(r.delivered);
                failed += usize::from(!r.is_success());
            }
        }
        cycles += in_round;
        let per = in_round.max(1) as f64;
        due_cpu.push((c1 - c0).as_secs_f64() * 1e3 / per);
        due_wall.push(w1.as_secs_f64() * 1e3);

        let (c0, w0) = (cpu(), Instant::now());
        for (i, id) in &mailboxes {
            let r = engines[*i].1.run_once(id).await?;
            cycles += 1;
            delivered += u64::from(r.delivered);
            failed += usize::from(!r.is_success());
        }
        let (c1, w1) = (cpu(), w0.elapsed());
        once_cpu.push((c1 - c0).as_secs_f64() * 1e3 / n as f64);
        once_wall.push(w1.as_secs_f64() * 1e3 / n as f64);
    }
    for (sync, _) in &engines {
        sync.close().await;
    }
    println!(
        "{}",
        serde_json::json!({
            "mailboxes": n,
            "stores": dbs.len(),
            "rounds": rounds,
            "cycles": cycles,
            "delivered": delivered,
            "failed": failed,
            "run_due_cpu_ms_per_mailbox": median(due_cpu.clone()),
            "run_due_cpu_ms_per_mailbox_all": due_cpu,
            "run_due_wall_ms_per_round": median(due_wall),
            "run_once_cpu_ms_per_mailbox": median(once_cpu.clone()),
            "run_once_cpu_ms_per_mailbox_all": once_cpu,
            "run_once_wall_ms_per_mailbox": median(once_wall),
        })
    );
    Ok(())
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn idle_worker(stack: &Stack, db: &str, rounds: u32) -> Result<(), Failure> {
    let sync = MailSync::open(store_config(db)?, stack.options()?).await?;
    let ids: Vec<_> = sync
        .directory()
        .list_mailboxes(None)
        .await?
        .into_iter()
        .map(|m| m.id)
        .collect();
    let (opened_rss, _) = memory_kib();
    let mut options = EngineOptions::default();
    options.postpone_secs = 0;
    let engine = Engine::new(sync.clone(), Arc::new(Discard), options)?;
    let mut reports = engine.reports();
    let handle = engine.start(Duration::from_secs(1));
    let mut cycles: std::collections::HashMap<_, u32> = std::collections::HashMap::new();
    let (mut failed, mut delivered) = (0u32, 0u64);
    let mut measuring: Option<(Duration, Instant, u32)> = None;
    let wanted = |cycles: &std::collections::HashMap<_, u32>, n: u32| {
        ids.iter()
            .all(|id| cycles.get(id).copied().unwrap_or(0) >= n)
    };
    loop {
        let report = match reports.recv().await {
            Ok(r) => r,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                return Err(format!("{n} cycle reports were missed").into());
            }
            Err(e) => return Err(e.into()),
        };
        failed += u32::from(!report.is_success());
        delivered += u64::from(report.delivered);
        *cycles.entry(report.mailbox_id).or_default() += 1;
        if let Some((_, _, ref mut n)) = measuring {
            *n += 1;
        }
        if measuring.is_none() && wanted(&cycles, 1) {
            // Every mailbox had its first cycle: count from here.
            measuring = Some((cpu(), Instant::now(), 0));
            cycles.values_mut().for_each(|c| *c = 0);
        } else if measuring.is_some() && wanted(&cycles, rounds) {
            break;
        }
    }
    let (cpu0, wall0, measured) = measuring.ok_or("no measurement")?;
    let (cpu1, wall) = (cpu(), wall0.elapsed());
    let (rss, hwm) = memory_kib();
    handle.stop().await;
    sync.close().await;
    println!(
        "{}",
        serde_json::json!({
            "mailboxes": ids.len(),
            "rounds": rounds,
            "cycles": measured,
            "failed": failed,
            "delivered": delivered,
            "cpu_ms_per_cycle": (cpu1 - cpu0).as_secs_f64() * 1e3 / f64::from(measured.max(1)),
            "wall_s": wall.as_secs_f64(),
            "rss_kib_opened": opened_rss,
            "rss_kib": rss,
            "hwm_kib": hwm,
        })
    );
    if failed > 0 {
        return Err(format!("{failed} cycles failed").into());
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!(
            "usage: bench_sync setup STACK_JSON DB [--from-now] EMAIL...\n       \
             bench_sync sync STACK_JSON DB EMAIL OUT_DIR\n       \
             bench_sync idle STACK_JSON ROUNDS DB...\n       \
             bench_sync idle-worker STACK_JSON DB ROUNDS"
        );
        std::process::exit(2)
    };
    let rt = if std::env::var_os("BENCH_CURRENT").is_some() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build()
    .expect("runtime");
    let result = rt.block_on(async {
        match args.first().map(String::as_str) {
            Some("setup") if args.len() >= 4 => {
                let stack = Stack::load(&args[1])?;
                let from_now = args[3] == "--from-now";
                let emails = &args[if from_now { 4 } else { 3 }..];
                setup(&stack, &args[2], from_now, emails).await
            }
            Some("sync") if args.len() == 5 => {
                let stack = Stack::load(&args[1])?;
                sync_once(&stack, &args[2], &args[3], &args[4]).await
            }
            Some("idle-worker") if args.len() == 4 => {
                let stack = Stack::load(&args[1])?;
                idle_worker(&stack, &args[2], args[3].parse()?).await
            }
            Some("idle") if args.len() >= 4 => {
                let stack = Stack::load(&args[1])?;
                let rounds: usize = args[2].parse()?;
                idle(&stack, rounds, &args[3..]).await
            }
            _ => usage(),
        }
    });
    if let Err(e) = result {
        eprintln!("bench_sync: {e}");
        std::process::exit(1);
    }
}
