//! docs/parity.md: every public capability of the core, and where each
//! host has it — Rust, Python, Node, Kotlin/Swift and the CLI.
//!
//! The capabilities come from the code: the area operations and functions
//! every binding generates its surface from (`for_each_operation!`,
//! `for_each_function!`), the public methods of the sync engine's objects
//! as their source declares them ([`ENGINE_OBJECTS`], read from
//! `core/src/sync/`, so a method added there is missing from every
//! binding until it is exposed or given a reason), plus the objects listed
//! in [`OBJECTS`]. Presence
//! is read from each binding's generated surface (`_native.pyi`,
//! `index.d.ts`, the UniFFI Kotlin files) and, for the CLI, from
//! [`CLI`]. A capability a host lacks needs a reason in [`REASONS`].
//!
//! `MAILSYNC_UPDATE_PARITY=1 cargo test -p mailsync --test parity`
//! rewrites the doc; otherwise the test fails when the doc is stale.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Methods of the objects hosts hold (beyond the generated area operations).
const OBJECTS: &[(&str, &[&str])] = &[
    (
        "MailSync",
        &[
            "open",
            "close",
            "directory",
            "connections",
            "checks",
            "subscribe",
        ],
    ),
    ("Subscription", &["next"]),
    (
        "SealKey",
        &["generate", "from_bytes", "from_file", "load_or_create"],
    ),
];

/// The sync engine's objects: every `pub fn` / `pub async fn` of their
/// inherent `impl` blocks in `core/src/sync/` is a capability.
const ENGINE_OBJECTS: &[&str] = &["Engine", "EngineHandle"];

/// The CLI command for a capability (`Area.name` or `function`).
const CLI: &[(&str, &str)] = &[
    (
        "Directory.create_profile",
        "profile create-gmail / create-generic",
    ),
    ("Directory.update_profile", "profile update"),
    ("Directory.get_profile", "profile show"),
    ("Directory.find_profile", "profile show"),
    ("Directory.list_profiles", "profile list"),
    ("Directory.default_profile", "profile list"),
    ("Directory.set_default_profile", "profile set-default"),
    ("Directory.mailbox_count", "profile show"),
    ("Directory.delete_profile", "profile delete"),
    ("Directory.create_mailbox", "mailbox add"),
    ("Directory.get_mailbox", "mailbox show"),
    ("Directory.find_mailbox", "mailbox show"),
    ("Directory.list_mailboxes", "mailbox list"),
    ("Directory.update_mailbox", "mailbox update"),
    ("Directory.move_mailbox", "mailbox move"),
    ("Directory.delete_mailbox", "mailbox delete"),
    ("Directory.state", "mailbox show"),
    ("Directory.alerts", "mailbox show"),
    ("Directory.status", "mailbox show"),
    ("Connections.connect", "mailbox connect"),
    ("Connections.complete", "mailbox complete"),
    ("Connections.access_token", "mailbox token"),
    ("Connections.grant_info", "mailbox token --check"),
    ("Connections.disconnect", "mailbox disconnect"),
    ("Connections.retry_revocations", "revocations retry"),
    ("Connections.pending_revocations", "revocations list"),
    ("Directory.rotate_key", "key rotate"),
    ("Checks.test_and_enable", "mailbox test-enable"),
    ("Checks.test_all", "profile test-all"),
    ("Checks.last_profile_test", "profile show"),
    ("MailSync.open", "--db"),
    ("MailSync.close", "(every command)"),
    ("Engine.new", "sync once / run"),
    (
        "Engine.with_outbox",
        "sync once / run (the CLI's outbox: send)",
    ),
    ("Engine.with_owner", "worker --name"),
    ("Engine.owner", "workers (the leases' owners)"),
    ("Engine.run_once", "sync once EMAIL"),
    ("Engine.run_due", "sync once"),
    ("Engine.start", "sync run"),
    ("Engine.status", "sync status"),
    ("Engine.progress", "sync once / run (progress bar, --json)"),
    ("Engine.reports", "worker (a line per cycle)"),
    ("Engine.seed_outgoing", "sync once / run"),
    ("Engine.record_mailbox_gauges", "worker --metrics"),
    (
        "Engine.release_leases",
        "sync once / run (Ctrl-C), worker (SIGTERM)",
    ),
    ("EngineHandle.stop", "sync run (Ctrl-C)"),
    ("error_codes", "error-codes"),
];

/// Why a host lacks a capability: (capability, host, reason).
const REASONS: &[(&str, &str, &str)] = &[
    (
        "Subscription.next",
        "Python",
        "events arrive at the callback given to `subscribe`",
    ),
    (
        "Subscription.next",
        "Node",
        "events arrive at the listener given to `subscribe`",
    ),
    (
        "Subscription.next",
        "Kotlin/Swift",
        "events arrive at the `EventListener` given to `subscribe`",
    ),
    (
        "Engine.with_parts",
        "Python",
        "`with_owner` takes the optional outbox",
    ),
    (
        "Engine.with_parts",
        "Node",
        "`withOwner` takes the optional outbox",
    ),
    (
        "Engine.with_parts",
        "Kotlin/Swift",
        "`withOwner` takes the optional outbox",
    ),
    (
        "Engine.record_mailbox_gauges",
        "Python",
        "sets gauges of the Rust `metrics` recorder, which only a Rust host installs",
    ),
    (
        "Engine.record_mailbox_gauges",
        "Node",
        "sets gauges of the Rust `metrics` recorder, which only a Rust host installs",
    ),
    (
        "Engine.record_mailbox_gauges",
        "Kotlin/Swift",
        "sets gauges of the Rust `metrics` recorder, which only a Rust host installs",
    ),
    (
        "Engine.release_leases",
        "Python",
        "`EngineHandle.stop` and closing the `MailSync` release them",
    ),
    (
        "Engine.release_leases",
        "Node",
        "`EngineHandle.stop` and closing the `MailSync` release them",
    ),
    (
        "Engine.release_leases",
        "Kotlin/Swift",
        "`EngineHandle.stop` and closing the `MailSync` release them",
    ),
];

const HOSTS: [&str; 4] = ["Python", "Node", "Kotlin/Swift", "CLI"];

/// `Area name` of every area operation.
macro_rules! operations {
    ($($area:ident $name:ident ( $($args:tt)* ) -> $ret:ty ;)*) => {
        vec![$(format!("{}.{}", stringify!($area), stringify!($name))),*]
    };
}

/// `name` of every function.
macro_rules! functions {
    ($($name:ident ( $($args:tt)* ) -> $ret:ty ;)*) => {
        vec![$(stringify!($name).to_owned()),*]
    };
}

fn capabilities() -> Vec<String> {
    let mut all: Vec<String> = mailsync::for_each_operation!(operations);
    for (object, methods) in OBJECTS {
        all.extend(methods.iter().map(|m| format!("{object}.{m}")));
    }
    all.extend(engine_methods());
    all.extend(mailsync::for_each_function!(functions));
    all
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `Object.method` for every public method of the [`ENGINE_OBJECTS`], in
/// source order (files by name): the `pub fn` / `pub async fn` lines of
/// each `impl Object {` block (an inherent impl at the start of a line,
/// ending at the next line that is `}`). `pub(crate)` and the like are
/// not public.
fn engine_methods() -> Vec<String> {
    let dir = root().join("core/src/sync");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("core/src/sync")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    let mut by_object: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut object: Option<&str> = None;
        for line in text.lines() {
            if let Some(o) = ENGINE_OBJECTS
                .iter()
                .find(|o| line == format!("impl {o} {{"))
            {
                object = Some(o);
            } else if line == "}" {
                object = None;
            } else if let Some(o) = object
                && let Some(name) = word_after(line, &["    pub fn ", "    pub async fn "])
            {
                by_object.entry(o).or_default().push(format!("{o}.{name}"));
            }
        }
    }
    let mut out = Vec::new();
    for object in ENGINE_OBJECTS {
        let methods = by_object.remove(object).unwrap_or_default();
        assert!(
            !methods.is_empty(),
            "no public methods of {object} found in core/src/sync: has its `impl {object} {{` moved?"
        );
        out.extend(methods);
    }
    out
}

fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `Class.method` and `function` names declared in a generated surface.
/// `class_start` recognises a class line and returns its name; `method`
/// a method or function line and returns its name.
fn declared(
    text: &str,
    class_start: impl Fn(&str) -> Option<String>,
    method: impl Fn(&str) -> Option<String>,
    indented_top_level: bool,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut class: Option<String> = None;
    for line in text.lines() {
        let line = &line.replace('`', "");
        let indented = line.starts_with(' ') || line.starts_with('\t');
        // Generated code does not always indent a class's closing braces:
        // a class lasts until the next one starts.
        if !indented && let Some(c) = class_start(line) {
            class = Some(c);
        }
        if let Some(name) = method(line.trim_start()) {
            match (&class, indented) {
                (Some(c), true) => {
                    // UniFFI's Kotlin indents its top-level functions too.
                    if indented_top_level {
                        out.insert(name.clone());
                    }
                    out.insert(format!("{c}.{name}"))
                }
                _ => out.insert(name),
            };
        }
    }
    out
}

fn word_after<'a>(line: &'a str, prefixes: &[&str]) -> Option<&'a str> {
    for p in prefixes {
        if let Some(rest) = line.strip_prefix(p) {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if end > 0 {
                return Some(&rest[..end]);
            }
        }
    }
    None
}

fn python() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("bindings-python/python/mailsync/_native.pyi"))
        .expect("the generated Python stub");
    declared(
        &text,
        |l| word_after(l, &["class "]).map(str::to_owned),
        |l| word_after(l, &["def ", "async def "]).map(str::to_owned),
        false,
    )
}

fn node() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("bindings-node/index.d.ts"))
        .expect("the generated index.d.ts");
    declared(
        &text,
        |l| word_after(l, &["export declare class "]).map(str::to_owned),
        |l| {
            word_after(l, &["export declare function ", "static ", "get "])
                .or_else(|| word_after(l, &[""]).filter(|_| l.contains('(')))
                .map(str::to_owned)
        },
        false,
    )
}

fn kotlin() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root().join("bindings-uniffi/kotlin/src/main/kotlin")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("the generated Kotlin bindings") {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "kt") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.extend(declared(
                    &text,
                    |l| {
                        word_after(
                            l,
                            &["open class ", "class ", "public interface ", "interface "],
                        )
                        .map(|n| n.trim_end_matches("Interface").to_owned())
                    },
                    |l| {
                        let l = l
                            .trim_start_matches("override ")
                            .trim_start_matches("public ")
                            .trim_start_matches("@Throws(MailsyncException::class) ");
                        word_after(l, &["suspend fun ", "fun "])
                            .map(str::to_owned)
                            // A UniFFI constructor named `new` is the class's primary
                            // constructor (not UniFFI's internal handle constructors).
                            .or_else(|| {
                                (l.starts_with("constructor(")
                                    && !l.starts_with("constructor(withHandle")
                                    && !l.starts_with("constructor(noHandle"))
                                .then(|| "constructor".to_owned())
                            })
                    },
                    true,
                ));
            }
        }
    }
    out
}

/// Whether a host declares a capability, in its own spelling (`new` is
/// the host's constructor).
fn has(declared: &BTreeSet<String>, capability: &str, camel_case: bool) -> bool {
    let spell = |s: &str| if camel_case { camel(s) } else { s.to_owned() };
    match capability.split_once('.') {
        Some((object, "new")) => ["new", "__new__", "__init__", "constructor"]
            .iter()
            .any(|m| declared.contains(&format!("{object}.{m}"))),
        Some((object, method)) => {
            let m = spell(method);
            declared.contains(&format!("{object}.{m}"))
                || declared.contains(&format!("Blocking{object}.{m}"))
        }
        None => declared.contains(&spell(capability)),
    }
}

fn render() -> (String, Vec<String>) {
    let py = python();
    let js = node();
    let kt = kotlin();
    let cli: BTreeMap<&str, &str> = CLI.iter().copied().collect();
    let reason = |cap: &str, host: &str| {
        REASONS
            .iter()
            .find(|(c, h, _)| *c == cap && *h == host)
            .map(|(_, _, r)| *r)
    };
    let mut missing = Vec::new();
    let mut doc = String::from(
        "# Parity: every capability in every host\n\n\
         Generated by `core/tests/parity.rs` from the code (the operation lists in\n\
         `core/src/ffi/api.rs` and the bindings' generated surfaces); do not edit.\n\
         Regenerate with `MAILSYNC_UPDATE_PARITY=1 cargo test -p mailsync --test parity`.\n\
         Names follow each language's convention: `create_profile` in Rust and\n\
         Python, `createProfile` in Node and Kotlin/Swift.\n\n\
         | capability | Rust | Python | Node | Kotlin/Swift | CLI |\n\
         |---|---|---|---|---|---|\n",
    );
    for cap in capabilities() {
        let mut cells = vec!["✓".to_owned()];
        for (host, present) in [
            ("Python", has(&py, &cap, false)),
            ("Node", has(&js, &cap, true)),
            ("Kotlin/Swift", has(&kt, &cap, true)),
        ] {
            cells.push(match (present, reason(&cap, host)) {
                (true, _) => "✓".to_owned(),
                (false, Some(r)) => format!("— {r}"),
                (false, None) => {
                    missing.push(format!("{cap} in {host}"));
                    "**missing**".to_owned()
                }
            });
        }
        cells.push(match (cli.get(cap.as_str()), reason(&cap, "CLI")) {
            (Some(cmd), _) => format!("`{cmd}`"),
            (None, Some(r)) => format!("— {r}"),
            (None, None) => "—".to_owned(),
        });
        doc.push_str(&format!("| `{cap}` | {} |\n", cells.join(" | ")));
    }
    let _ = HOSTS;
    (doc, missing)
}

#[test]
fn every_capability_is_in_every_binding_or_has_a_reason() {
    let (_, missing) = render();
    assert!(
        missing.is_empty(),
        "capabilities missing from a binding without a reason in REASONS (core/tests/parity.rs):\n{}",
        missing.join("\n")
    );
}

#[test]
fn docs_parity_md_is_current() {
    let (doc, _) = render();
    let path = root().join("docs/parity.md");
    if std::env::var_os("MAILSYNC_UPDATE_PARITY").is_some() {
        std::fs::write(&path, &doc).unwrap();
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == doc,
        "docs/parity.md is stale; regenerate it with MAILSYNC_UPDATE_PARITY=1 cargo test -p mailsync --test parity"
    );
}

#[test]
fn every_error_code_exists_in_every_binding() {
    let py = std::fs::read_to_string(root().join("bindings-python/python/mailsync/_native.pyi"))
        .unwrap();
    let js = std::fs::read_to_string(root().join("bindings-node/index.d.ts")).unwrap();
    let mut kt = String::new();
    let mut stack = vec![root().join("bindings-uniffi/kotlin/src/main/kotlin")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                kt.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    let mut missing = Vec::new();
    for code in mailsync::ErrorCode::ALL {
        let s = code.as_str();
        let class = format!("{}Error", {
            let c = camel(s);
            let mut chars = c.chars();
            chars
                .next()
                .map(|f| f.to_uppercase().collect::<String>() + chars.as_str())
                .unwrap_or_default()
        });
        if !py.contains(&format!("class {class}")) {
            missing.push(format!("Python: class {class}"));
        }
        if !js.contains(&format!("'{s}'")) {
            missing.push(format!("Node: '{s}' in the ErrorCode union"));
        }
        if !kt.contains(&s.to_uppercase()) {
            missing.push(format!("Kotlin: ErrorCode.{}", s.to_uppercase()));
        }
    }
    assert!(
        missing.is_empty(),
        "error codes missing:\n{}",
        missing.join("\n")
    );
}
