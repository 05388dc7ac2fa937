//! The CLI as scripts use it: exit codes, one-line errors with codes, JSON
//! output, and secrets kept out of argv and output.

use std::path::Path;
use std::process::{Command, Output};

const SECRET: &str = "GOCSPX-cli-test-secret-do-not-print";

fn mailsync(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mailsync"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env("MAILSYNC_CLIENT_SECRET", SECRET)
        .env_remove("MAILSYNC_LOG")
        .output()
        .expect("run mailsync")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn create_gmail(db: &Path, name: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "profile",
        "create-gmail",
        "--name",
        name,
        "--client-id",
        "1234-abc.apps.googleusercontent.com",
        "--environment-url",
        "https://contoso.crm.example.com",
    ];
    args.extend_from_slice(extra);
    mailsync(db, &args)
}

/// Asserts a failure: exit 1, one line on stderr naming the code, no panic.
fn assert_fails_with(o: &Output, code: &str) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(
        err.contains(&format!("[{code}]")),
        "expected [{code}] in: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn admin_walkthrough_with_json_output() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let created = create_gmail(&db, "Gmail - sales", &["--default", "--json"]);
    assert!(created.status.success(), "{}", stderr(&created));
    let json: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let profile = &json["profile"];
    assert_eq!(profile["incoming"]["host"], "imap.gmail.com");
    assert_eq!(profile["incoming"]["port"], 993);
    assert_eq!(profile["outgoing"]["port"], 587);
    assert_eq!(profile["outgoing"]["security"], "start_tls");
    assert_eq!(
        profile["authentication"]["app"]["redirect_uris"][0],
        "https://contoso.crm.example.com/_grid/cmds/dlg_gmailoauth.aspx"
    );
    assert_eq!(json["has_client_secret"], true);
    assert_eq!(profile["default_for_new_mailboxes"], true);

    for email in ["alice@example.com", "bob@example.com"] {
        let added = mailsync(&db, &["mailbox", "add", email]);
        assert!(added.status.success(), "{}", stderr(&added));
    }
    let list = mailsync(&db, &["mailbox", "list", "--json"]);
    let mailboxes: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(mailboxes.as_array().unwrap().len(), 2);
    assert_eq!(mailboxes[0]["mailbox"]["email"], "alice@example.com");
    assert_eq!(mailboxes[0]["mailbox"]["profile_id"], profile["id"]);
    assert_eq!(mailboxes[0]["state"]["grant"]["status"], "not_connected");

    let table = mailsync(&db, &["profile", "list"]);
    let text = stdout(&table);
    assert!(text.starts_with("NAME"), "{text}");
    assert!(
        text.contains("Gmail - sales") && text.contains("2/100"),
        "{text}"
    );

    let show = mailsync(&db, &["profile", "show", "gmail - sales"]);
    assert!(stdout(&show).contains("_grid/cmds/dlg_gmailoauth.aspx"));

    // The secret is never printed, whatever the format.
    for o in [&created, &list, &table, &show] {
        assert!(!stdout(o).contains(SECRET) && !stderr(o).contains(SECRET));
    }
    let bytes = std::fs::read(&db).unwrap();
    assert!(!bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
}

#[test]
fn capacity_and_profile_in_use_fail_with_codes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    assert!(
        create_gmail(&db, "Small", &["--default", "--capacity", "1"])
            .status
            .success()
    );
    assert!(
        mailsync(&db, &["mailbox", "add", "a@example.com"])
            .status
            .success()
    );
    let full = mailsync(&db, &["mailbox", "add", "b@example.com"]);
    let err = assert_fails_with(&full, "capacity_exceeded");
    assert!(err.contains("Small"), "{err}");
    let in_use = mailsync(&db, &["profile", "delete", "Small"]);
    assert_fails_with(&in_use, "profile_in_use");
    assert!(
        mailsync(&db, &["mailbox", "delete", "a@example.com"])
            .status
            .success()
    );
    assert!(
        mailsync(&db, &["profile", "delete", "Small"])
            .status
            .success()
    );
}

#[test]
fn bad_input_gets_a_typed_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    assert_fails_with(&create_gmail(&db, "", &[]), "validation");
    assert_fails_with(
        &create_gmail(&db, "P", &["--incoming-port", "70000"]),
        "validation",
    );
    assert_fails_with(
        &create_gmail(&db, "P", &["--outgoing-port", "0"]),
        "validation",
    );
    let http = mailsync(
        &db,
        &[
            "profile",
            "create-gmail",
            "--name",
            "P",
            "--client-id",
            "id",
            "--environment-url",
            "http://contoso.crm.example.com",
        ],
    );
    assert!(assert_fails_with(&http, "validation").contains("https"));
    assert_fails_with(
        &mailsync(&db, &["mailbox", "add", "not-an-email"]),
        "validation",
    );
    assert_fails_with(&mailsync(&db, &["profile", "show", "nope"]), "not_found");
    assert_fails_with(
        &mailsync(
            &db,
            &[
                "mailbox",
                "add",
                "a@example.com",
                "--profile",
                "00000000-0000-4000-8000-000000000000",
            ],
        ),
        "not_found",
    );

    let bad_json = dir.path().join("bad.json");
    std::fs::write(&bad_json, "{ not json").unwrap();
    let import = mailsync(&db, &["profile", "import", bad_json.to_str().unwrap()]);
    assert!(assert_fails_with(&import, "validation").contains("JSON"));
    std::fs::write(&bad_json, r#"{"name": 5}"#).unwrap();
    assert_fails_with(
        &mailsync(&db, &["profile", "import", bad_json.to_str().unwrap()]),
        "validation",
    );

    // --json errors are one JSON object with the code.
    let json_err = mailsync(&db, &["--json", "profile", "show", "nope"]);
    assert_eq!(json_err.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&json_err.stderr).unwrap();
    assert_eq!(value["error"]["code"], "not_found");
}

#[test]
fn export_then_import_round_trips_a_profile() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let created = create_gmail(&db, "Original", &["--pop3", "--json"]);
    let mut json: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    json["profile"]["name"] = "Copy".into();
    let file = dir.path().join("p.json");
    std::fs::write(&file, json.to_string()).unwrap();
    let imported = mailsync(
        &db,
        &[
            "--json",
            "profile",
            "import",
            file.to_str().unwrap(),
            "--secret-env",
            "MAILSYNC_CLIENT_SECRET",
        ],
    );
    assert!(imported.status.success(), "{}", stderr(&imported));
    let copy: serde_json::Value = serde_json::from_slice(&imported.stdout).unwrap();
    assert_eq!(copy["profile"]["incoming"]["host"], "pop.gmail.com");
    assert_eq!(copy["has_client_secret"], true);
    assert_ne!(copy["profile"]["id"], json["profile"]["id"]);
}

#[test]
fn wrong_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    assert!(create_gmail(&db, "Gmail", &[]).status.success());
    let key = dir.path().join("m.db.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    assert_fails_with(&mailsync(&db, &["profile", "list"]), "seal_key_mismatch");
}

#[test]
fn error_codes_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let o = mailsync(&dir.path().join("unused.db"), &["error-codes", "--json"]);
    let codes: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = codes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), mailsync::ErrorCode::ALL.len());
    assert!(names.contains(&"capacity_exceeded") && names.contains(&"token_revoked"));
    assert!(
        !dir.path().join("unused.db").exists(),
        "listing codes must not create a database"
    );
}

/// `mailsync mailbox list | head -1`: a closed stdout ends the command
/// quietly (status 141, as SIGPIPE would), never with a panic.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    assert!(create_gmail(&db, "Gmail", &["--default"]).status.success());
    for i in 0..5 {
        let email = format!("user{i}@example.com");
        assert!(mailsync(&db, &["mailbox", "add", &email]).status.success());
    }
    // A pipe whose reading end is already closed: every write fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_mailsync"))
        .arg("--db")
        .arg(&db)
        .args(["mailbox", "list"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.trim().is_empty(), "nothing on stderr: {err}");
    assert_eq!(out.status.code(), Some(141));
}

/// The authentication kind is spelled `gmail_oauth` everywhere, as the docs
/// say; records written with the old spelling still load.
#[test]
fn gmail_oauth_is_spelled_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let created = create_gmail(&db, "Gmail", &["--json"]);
    let json: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(json["profile"]["authentication"]["kind"], "gmail_oauth");
    let table = stdout(&mailsync(&db, &["profile", "list"]));
    assert!(
        table.contains("gmail_oauth") && !table.contains("o_auth"),
        "{table}"
    );
    let old: mailsync::model::Authentication = serde_json::from_value(serde_json::json!({
        "kind": "gmail_o_auth",
        "app": json["profile"]["authentication"]["app"].clone(),
    }))
    .unwrap();
    assert!(old.is_oauth());
}

/// Everything set at creation can be changed afterwards.
#[test]
fn profiles_and_mailboxes_can_be_updated_and_moved() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    assert!(create_gmail(&db, "A", &["--default"]).status.success());
    assert!(create_gmail(&db, "B", &[]).status.success());
    let updated = Command::new(env!("CARGO_BIN_EXE_mailsync"))
        .arg("--db")
        .arg(&db)
        .args([
            "--json",
            "profile",
            "update",
            "A",
            "--incoming-host",
            "IMAP.gmail.com",
            "--incoming-port",
            "1993",
            "--outgoing-security",
            "tls",
            "--outgoing-port",
            "465",
            "--connection-timeout",
            "15",
            "--secret-env",
            "NEW_SECRET",
            "--add-test-user",
            "x@example.com",
            "--audience",
            "external-testing",
        ])
        .env("NEW_SECRET", "GOCSPX-rotated")
        .env_remove("MAILSYNC_LOG")
        .output()
        .unwrap();
    assert!(updated.status.success(), "{}", stderr(&updated));
    let json: serde_json::Value = serde_json::from_slice(&updated.stdout).unwrap();
    let p = &json["profile"];
    assert_eq!(p["incoming"]["host"], "IMAP.gmail.com");
    assert_eq!(p["incoming"]["port"], 1993);
    assert_eq!(p["outgoing"]["security"], "tls");
    assert_eq!(p["outgoing"]["port"], 465);
    assert_eq!(p["processing"]["connection_timeout_secs"], 15);
    assert_eq!(
        p["authentication"]["app"]["consent_screen"]["test_users"][0],
        "x@example.com"
    );
    assert!(!stdout(&updated).contains("GOCSPX-rotated"));
    assert_fails_with(
        &mailsync(
            &db,
            &["profile", "update", "A", "--connection-timeout", "500"],
        ),
        "validation",
    );
    // Google access tokens go to Google's mail servers only.
    let elsewhere = mailsync(
        &db,
        &[
            "profile",
            "update",
            "A",
            "--incoming-host",
            "imap.example.net",
        ],
    );
    assert!(assert_fails_with(&elsewhere, "host_not_allowed").contains("imap.example.net"));

    assert!(
        mailsync(&db, &["mailbox", "add", "x@example.com"])
            .status
            .success()
    );
    let changed = mailsync(
        &db,
        &[
            "--json",
            "mailbox",
            "update",
            "x@example.com",
            "--outgoing",
            "none",
            "--approval",
            "pending-approval",
            "--name",
            "X",
        ],
    );
    assert!(changed.status.success(), "{}", stderr(&changed));
    let m: serde_json::Value = serde_json::from_slice(&changed.stdout).unwrap();
    assert_eq!(m["mailbox"]["outgoing_delivery"], "none");
    assert_eq!(m["mailbox"]["approval"], "pending_approval");
    assert_eq!(m["mailbox"]["name"], "X");

    let moved = mailsync(
        &db,
        &[
            "--json",
            "mailbox",
            "move",
            "x@example.com",
            "--profile",
            "B",
        ],
    );
    assert!(moved.status.success(), "{}", stderr(&moved));
    let m: serde_json::Value = serde_json::from_slice(&moved.stdout).unwrap();
    let b = stdout(&mailsync(&db, &["--json", "profile", "show", "B"]));
    let b: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(m["mailbox"]["profile_id"], b["profile"]["id"]);
    assert_eq!(b["mailbox_count"], 1);
}

/// A hand-written profile needs no id and only the fields that matter.
#[test]
fn a_hand_written_profile_without_an_id_imports() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let file = dir.path().join("p.json");
    std::fs::write(
        &file,
        serde_json::json!({
            "name": "Hand made",
            "server_type": "imap_smtp",
            "authentication": {"kind": "credentials_per_mailbox"},
            "incoming": {"protocol": "imap", "host": "imap.example.net", "port": 993, "security": "tls"},
            "outgoing": {"host": "smtp.example.net", "port": 587, "security": "start_tls"}
        })
        .to_string(),
    )
    .unwrap();
    let imported = mailsync(
        &db,
        &["--json", "profile", "import", file.to_str().unwrap()],
    );
    assert!(imported.status.success(), "{}", stderr(&imported));
    let json: serde_json::Value = serde_json::from_slice(&imported.stdout).unwrap();
    assert_eq!(json["profile"]["name"], "Hand made");
    assert!(json["profile"]["id"].as_str().unwrap().len() == 36);
    assert_eq!(
        json["profile"]["processing"]["max_concurrent_connections"],
        10
    );
}
