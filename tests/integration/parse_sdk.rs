//! Compatibility with a client nobody here wrote: the official Parse JS SDK's LiveQueryClient
//! (npm `parse`, pinned in tests/js/package.json) against rows written with SQL.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

use crate::support::{TestApp, PATIENCE};

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Installs the pinned SDK when it is missing. Err explains why it could not be. Tests run in
/// parallel: one installs while the others wait (a second `npm ci` would delete the first's
/// `node_modules` under a running client).
async fn ensure_sdk() -> Result<(), String> {
    static INSTALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _installing = INSTALL.lock().await;
    let dir = js_dir();
    if dir.join("node_modules/parse/package.json").exists() {
        return Ok(());
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .await
        .map_err(|e| format!("cannot run npm: {e}"))?;
    status.success().then_some(()).ok_or_else(|| format!("npm ci failed: {status}"))
}

/// The SDK driver (tests/js/parse_sdk_client.mjs) against `app`, on class `messages`, and its
/// output lines.
fn sdk_client(app: &TestApp, extra: &[&str]) -> (tokio::process::Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new("node")
        .arg("parse_sdk_client.mjs")
        .arg(app.ws_url())
        .arg("messages")
        .args(extra)
        .current_dir(js_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    (child, lines)
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("the SDK client printed in time")
        .expect("read SDK output")
        .expect("the SDK client is still running");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("SDK line {line:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_parse_js_sdk_receives_create_update_delete() {
    if let Err(why) = ensure_sdk().await {
        eprintln!("\n!!!!! SKIPPED the Parse JS SDK compatibility test: {why} !!!!!\n");
        return;
    }
    let app = TestApp::spawn_with(|c| c.keys.javascript_key = Some("js-key".into())).await;
    let (mut child, mut lines) = sdk_client(&app, &[]);
    assert_eq!(next_line(&mut lines).await["event"], "open");

    app.db.execute("insert into messages (room, n, body) values ('other', 5, 'not for the sdk')").await;
    app.db.execute("insert into messages (room, n, body) values ('sdk', 1, 'hello sdk')").await;
    let create = next_line(&mut lines).await;
    assert_eq!(create["event"], "create", "{create}");
    assert_eq!(create["className"], "messages");
    assert_eq!(create["id"], "2");
    assert_eq!(create["attributes"]["body"], "hello sdk");
    assert!(create["createdAt"].as_str().is_some(), "createdAt became a Date in the SDK: {create}");
    assert_eq!(create["response"]["installationId"], "sdk-installation");

    app.db.execute("update messages set n = 2, body = 'edited' where id = 2").await;
    let update = next_line(&mut lines).await;
    assert_eq!(update["event"], "update", "{update}");
    assert_eq!(update["attributes"]["n"], 2);
    assert_eq!(update["original"]["body"], "hello sdk");

    app.db.execute("delete from messages where id = 2").await;
    let delete = next_line(&mut lines).await;
    assert_eq!(delete["event"], "delete", "{delete}");
    assert_eq!(delete["id"], "2");

    let status =
        tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("the SDK client exits").unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_parse_js_sdk_finds_the_current_rows_of_its_subscription() {
    if let Err(why) = ensure_sdk().await {
        eprintln!("\n!!!!! SKIPPED the Parse JS SDK find() test: {why} !!!!!\n");
        return;
    }
    let app = TestApp::spawn_with(|c| {
        c.keys.javascript_key = Some("js-key".into());
        let rule =
            livegate::auth::rules::ClassRule { protected_fields: vec!["secret_note".into()], ..Default::default() };
        c.classes.insert("messages".into(), rule);
    })
    .await;
    app.db
        .execute(
            "insert into messages (room, n, body, secret_note) values ('sdk', 1, 'first', 'no'), \
             ('sdk', 0, 'n too small', null), ('other', 5, 'another room', null), ('sdk', 7, 'second', 'no')",
        )
        .await;
    app.wait_until_published().await;
    let (mut child, mut lines) = sdk_client(&app, &["find"]);
    assert_eq!(next_line(&mut lines).await["event"], "open");
    let result = next_line(&mut lines).await;
    assert_eq!(result["event"], "result", "{result}");
    let objects = result["objects"].as_array().unwrap();
    let mut bodies: Vec<&str> = objects.iter().map(|o| o["attributes"]["body"].as_str().unwrap()).collect();
    bodies.sort();
    assert_eq!(bodies, ["first", "second"], "exactly the query's rows: {result}");
    for object in objects {
        assert_eq!(object["className"], "messages");
        assert!(object["id"].as_str().is_some_and(|id| id == "1" || id == "4"), "{object}");
        assert!(object["attributes"].get("secret_note").is_none(), "protected fields stripped: {object}");
        assert!(object["attributes"]["createdAt"].is_string(), "{object}");
    }
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits").unwrap();
    assert!(status.success());
}
