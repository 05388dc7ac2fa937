//! The local stack must start from a checkout that its service users cannot reach: a clone
//! in `/root` (mode 0700) or under a `mktemp -d` directory. PostgreSQL runs as `postgres`,
//! Dovecot's mail processes as `mail` (its auth process as `dovecot`), Postfix as `postfix`;
//! none of them can traverse a 0700 parent, so `tests/stack/up` must put the state in a
//! directory of its own that they can reach (`/var/tmp/mailsync-stack-<hash>`) and make
//! `tests/stack/run` a symlink to it. See docs/testing.md ("State dir").
//!
//! This test copies `tests/stack` (without its state, with the provider's `node_modules`
//! linked) into a 0700 temporary directory, brings that second stack up on its own free
//! ports, checks that every service answers and that the helper scripts find it, brings it
//! down with `--purge` and checks that no process and no state is left behind. The main
//! stack (tests/stack/run) keeps running untouched.
//!
//! `MAILSYNC_E2E_STACK_COPY_FROM=<dir>` copies the stack from `<dir>` instead of this
//! checkout's `tests/stack` (used to show that the test fails on an older stack).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mailsync_e2e::wire::{self, Mech};
use mailsync_e2e::{Stack, stack_src};

/// Copy `src` to `dst` (files keep their modes), leaving out the state and lock files and
/// the provider's node_modules (symlinked to this checkout's instead of copied).
fn copy_stack(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let name = name.to_str().unwrap();
        let from = entry.path();
        let to = dst.join(name);
        if [
            "run",
            "run.new-link",
            ".stack.lock",
            ".harness.lock",
            "node_modules",
        ]
        .contains(&name)
        {
            continue;
        }
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            copy_stack(&from, &to);
        } else if ft.is_file() {
            fs::copy(&from, &to).unwrap();
        }
    }
}

fn uid_of(user: &str) -> u32 {
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&user)).then(|| f[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no user {user}"))
}

fn gid_of(group: &str) -> u32 {
    let groups = fs::read_to_string("/etc/group").unwrap();
    groups
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&group)).then(|| f[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no group {group}"))
}

/// The environment for the second stack: none of the main stack's knobs (state dir,
/// fixed ports, token settings) may leak into it.
fn clean_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("MAILSYNC_STACK_")
            || k == "MAILSYNC_TOKEN_TTL"
            || k == "MAILSYNC_ROTATE_REFRESH"
        {
            cmd.env_remove(&k);
        }
    }
    cmd.stdin(Stdio::null())
}

fn run(program: &Path, args: &[&str]) -> Output {
    clean_env(&mut Command::new(program))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Brings the copied stack down (and deletes its state) however the test ends.
struct Teardown(PathBuf);

impl Drop for Teardown {
    fn drop(&mut self) {
        let _ = run(&self.0.join("down"), &["--purge"]);
    }
}

/// pid -> start time (field 22 of /proc/<pid>/stat) of `roots` and all their descendants.
fn process_tree(roots: &[u32]) -> BTreeMap<u32, u64> {
    let mut procs = Vec::new(); // (pid, ppid, start)
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state): ppid is field 4, starttime field 22
        procs.push((
            pid,
            f[1].parse::<u32>().unwrap(),
            f[19].parse::<u64>().unwrap(),
        ));
    }
    let mut tree: BTreeMap<u32, u64> = procs
        .iter()
        .filter(|(pid, _, _)| roots.contains(pid))
        .map(|(pid, _, start)| (*pid, *start))
        .collect();
    loop {
        let before = tree.len();
        for (pid, ppid, start) in &procs {
            if tree.contains_key(ppid) {
                tree.insert(*pid, *start);
            }
        }
        if tree.len() == before {
            return tree;
        }
    }
}

fn still_running(tree: &BTreeMap<u32, u64>) -> Vec<u32> {
    tree.iter()
        .filter(|(pid, start)| {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                let rest = s.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
                let f: Vec<&str> = rest.split_whitespace().collect();
                // the same process (not a reused pid) and not a zombie
                f.get(19).and_then(|v| v.parse::<u64>().ok()) == Some(**start)
                    && f.first() != Some(&"Z")
            })
        })
        .map(|(pid, _)| *pid)
        .collect()
}

fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmd) = fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                out.push((pid, cmd));
            }
        }
    }
    out
}

async fn banner(port: u16) -> String {
    let mut c = wire::connect_plain("127.0.0.1", port).await;
    c.line().await
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test]
async fn stack_starts_from_a_checkout_its_service_users_cannot_reach() {
    // the main stack runs (started if needed) and must not be disturbed
    let main = Stack::get();
    let main_pids = main.pids.clone();

    let tmp = tempfile::Builder::new()
        .prefix("mailsync-private-")
        .tempdir()
        .unwrap();
    let private = tmp.path().join("private");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let stack = private.join("checkout").join("tests").join("stack");
    let from = std::env::var_os("MAILSYNC_E2E_STACK_COPY_FROM")
        .map(PathBuf::from)
        .unwrap_or_else(stack_src);
    copy_stack(&from, &stack);
    std::os::unix::fs::symlink(
        stack_src().join("provider").join("node_modules"),
        stack.join("provider").join("node_modules"),
    )
    .unwrap();
    let _teardown = Teardown(stack.clone());

    // precondition: the copy really is out of reach of the service users
    for user in ["postgres", "mail", "postfix", "dovecot"] {
        let st = Command::new("runuser")
            .args(["-u", user, "--", "test", "-x"])
            .arg(&stack)
            .status()
            .unwrap();
        assert!(!st.success(), "{user} can traverse {}", stack.display());
    }

    let started = Instant::now();
    let out = run(&stack.join("up"), &[]);
    assert_success("tests/stack/up in a private checkout", &out);
    eprintln!("second stack up in {:?}", started.elapsed());

    // tests/stack/run points to the stack's own state dir outside the checkout
    let link = stack.join("run");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "tests/stack/run is not a symlink"
    );
    let state = fs::read_link(&link).unwrap();
    assert!(
        state.starts_with("/var/tmp") && state.to_string_lossy().contains("mailsync-stack-"),
        "state dir {}",
        state.display()
    );
    // every consumer reads tests/stack/run/stack.json
    let desc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(link.join("stack.json")).unwrap()).unwrap();
    assert_eq!(desc["state_dir"], state.to_str().unwrap());
    for key in ["logs_dir", "ca_cert", "lmtp_socket"] {
        let p = desc[key].as_str().unwrap();
        assert!(Path::new(p).starts_with(&state), "{key} = {p}");
    }

    // owners and modes: reachable where needed, secrets still private
    let meta = fs::metadata(&state).unwrap();
    assert_eq!(
        (meta.uid(), mode(&state)),
        (0, 0o755),
        "state dir owner/mode"
    );
    for f in [
        "secrets.json",
        "provider.json",
        "provider2.json",
        "tls/ca.key",
        "tls/server.key",
    ] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
        assert_eq!(fs::metadata(state.join(f)).unwrap().uid(), 0, "{f}");
    }
    for f in ["oauth2.conf", "oauth2-generic.conf", "users"] {
        let p = state.join("dovecot").join(f);
        assert_eq!(mode(&p), 0o640, "dovecot/{f}");
        assert_eq!(
            fs::metadata(&p).unwrap().gid(),
            gid_of("dovecot"),
            "dovecot/{f}"
        );
    }
    assert_eq!(
        fs::metadata(state.join("mail")).unwrap().uid(),
        uid_of("mail")
    );
    assert_eq!(
        fs::metadata(state.join("postgres")).unwrap().uid(),
        uid_of("postgres")
    );
    assert_eq!(
        fs::metadata(state.join("postfix/data")).unwrap().uid(),
        uid_of("postfix")
    );

    // every service answers, on ports of its own
    let port = |a: &str, b: &str| desc[a][b].as_u64().unwrap() as u16;
    let main_ports: Vec<u16> = main.ports().into_iter().map(|(_, p)| p).collect();
    for p in [
        port("imap", "plain_port"),
        port("pop3", "plain_port"),
        port("smtp", "starttls_port"),
        port("postgres", "port"),
    ] {
        assert!(!main_ports.contains(&p), "port {p} is the main stack's");
    }
    let g = banner(port("imap", "plain_port")).await;
    assert!(g.starts_with("* OK"), "IMAP greeting {g}");
    let g = banner(port("pop3", "plain_port")).await;
    assert!(g.starts_with("+OK"), "POP3 greeting {g}");
    let g = banner(port("smtp", "starttls_port")).await;
    assert!(g.starts_with("220"), "SMTP greeting {g}");
    let issuer = desc["oauth"]["issuer"].as_str().unwrap();
    assert_ne!(issuer, main.oauth.issuer);
    let (status, body) = mailsync_e2e::http(
        "GET",
        desc["oauth"]["discovery_url"].as_str().unwrap(),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "discovery: {body}");
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(d["issuer"], issuer);
    let (status, _) = mailsync_e2e::http(
        "GET",
        desc["oauth2_generic"]["metadata_url"].as_str().unwrap(),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "generic provider metadata");
    let pg = &desc["postgres"];
    let out = clean_env(&mut Command::new("psql"))
        .args(["-X", "-q", "-At", "-h", "127.0.0.1", "-p"])
        .arg(pg["port"].to_string())
        .args([
            "-U",
            pg["user"].as_str().unwrap(),
            "-d",
            pg["database"].as_str().unwrap(),
        ])
        .args(["-c", "select 1"])
        .env("PGPASSWORD", pg["password"].as_str().unwrap())
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    assert_success("psql select 1", &out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    // the helper scripts find the relocated state too: deliver over LMTP into the maildir
    // (written by `mail`), get a token through the consent pages, read the message over IMAP
    let out = run(
        &stack.join("bin/deliver"),
        &[
            "alice@example.test",
            "--count",
            "1",
            "--subject-prefix",
            "private-dir",
        ],
    );
    assert_success("bin/deliver", &out);
    let message_id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(message_id.starts_with('<'), "{message_id}");
    let out = run(&stack.join("bin/token"), &["alice@example.test"]);
    assert_success("bin/token", &out);
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = t["access_token"].as_str().unwrap();
    let imap_port = port("imap", "plain_port");
    let mut c = wire::connect_plain("127.0.0.1", imap_port).await;
    wire::imap_greeting(&mut c).await;
    let r = wire::imap_auth(
        &mut c,
        Mech::XOAuth2,
        "alice@example.test",
        token,
        "127.0.0.1",
        imap_port,
    )
    .await;
    assert!(r.ok, "second stack refused its own token: {r:?}");
    let (_, done) = wire::imap_cmd(&mut c, "S", "EXAMINE INBOX").await;
    assert!(done.starts_with("S OK"), "{done}");
    let (lines, done) = wire::imap_cmd(
        &mut c,
        "Q",
        &format!("UID SEARCH HEADER Message-ID \"{message_id}\""),
    )
    .await;
    assert!(done.starts_with("Q OK"), "{done}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("* SEARCH") && l.split_whitespace().count() == 3),
        "delivered message not found: {lines:?}"
    );
    drop(c);

    // up is idempotent
    let out = run(&stack.join("up"), &[]);
    assert_success("second up", &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stack already running"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // down --purge: nothing of the second stack is left
    let roots: Vec<u32> = desc["pids"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(roots.len(), 5, "{}", desc["pids"]);
    let tree = process_tree(&roots);
    assert!(tree.len() > roots.len(), "no children found: {tree:?}");
    let out = run(&stack.join("down"), &["--purge"]);
    assert_success("down --purge", &out);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = still_running(&tree);
        let mentioning = processes_mentioning(state.to_str().unwrap());
        if left.is_empty() && mentioning.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes left behind: {left:?} {mentioning:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!state.exists(), "state dir {} not purged", state.display());
    assert!(
        fs::symlink_metadata(&link).is_err(),
        "tests/stack/run left behind"
    );

    // the main stack kept running, untouched
    let after = Stack::get();
    assert_eq!(after.pids, main_pids, "the main stack was restarted");
    for (name, pid) in &main_pids {
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "main stack's {name} ({pid}) is gone"
        );
    }
    let (status, _) = mailsync_e2e::http("GET", &after.oauth.discovery_url, None, None).await;
    assert_eq!(status, 200, "main provider");
}
