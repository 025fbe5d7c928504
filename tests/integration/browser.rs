//! A small Chrome DevTools Protocol driver, so that tests can open pages of the gateway in a real
//! headless Chromium and read what the page's JavaScript saw.
//!
//! [`launch_or_skip`] starts Chromium (installing Debian's `chromium` once per test run when it
//! is missing) or prints a loud SKIPPED banner. Every call is bounded in time, and a browser that
//! dies turns into an `Err`, never a hang.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{TestApp, PATIENCE};

/// How long Chromium may take to print its DevTools address.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one DevTools command may take to be answered.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`Page::goto`] waits for the page to load.
const LOAD_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the one-time `apt-get` install may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
const CLOSED: &str = "the DevTools connection closed (did Chromium exit?)";

/// A headless Chromium of its own, with a throwaway profile; killed and removed on drop.
pub struct Browser {
    cdp: Cdp,
    child: Child,
    profile: PathBuf,
}

/// One tab, attached through a flattened DevTools session.
pub struct Page {
    cdp: Cdp,
    session: String,
    target: String,
}

/// Starts a browser, or prints a loud SKIPPED banner naming `test` and returns None.
/// With `LIVEGATE_REQUIRE_BROWSER` set, a browser that cannot be had fails the test instead.
pub async fn launch_or_skip(test: &str) -> Option<Browser> {
    match Browser::launch().await {
        Ok(browser) => Some(browser),
        Err(why) if std::env::var_os("LIVEGATE_REQUIRE_BROWSER").is_some() => {
            panic!("{test}: no browser, and LIVEGATE_REQUIRE_BROWSER is set: {why}")
        }
        Err(why) => {
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!!!! SKIPPED {test}\n\
                 !!!!! headless Chromium cannot be launched: {why}\n\
                 !!!!! (install Debian's `chromium`, or set LIVEGATE_CHROMIUM to a binary)\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            None
        }
    }
}

impl Browser {
    /// Finds (or installs once) Chromium, starts it headless and connects to its DevTools socket.
    pub async fn launch() -> Result<Browser, String> {
        let binary = tokio::task::spawn_blocking(|| CHROMIUM.get_or_init(find_or_install).clone())
            .await
            .map_err(|e| format!("the install task failed: {e}"))??;
        let profile = std::env::temp_dir().join(format!("livegate-chromium-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile).map_err(|e| format!("create {}: {e}", profile.display()))?;
        let mut child = Command::new(&binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--no-first-run",
                "--no-default-browser-check",
                "--mute-audio",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0) // so that drop can kill the renderers and helpers too
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&profile);
                format!("cannot start {}: {e}", binary.display())
            })?;
        // From here on, dropping `browser` kills the process group and removes the profile.
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut browser = Browser { cdp: Cdp::detached(), child, profile };

        let mut lines = BufReader::new(stderr).lines();
        let mut said = Vec::new();
        let endpoint = tokio::time::timeout(LAUNCH_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(endpoint) = line.strip_prefix("DevTools listening on ") {
                    return Some(endpoint.trim().to_string());
                }
                said.push(line);
            }
            None
        })
        .await;
        let endpoint = match endpoint {
            Ok(Some(endpoint)) => endpoint,
            Ok(None) => return Err(format!("Chromium exited before listening; it said:\n{}", tail(&said))),
            Err(_) => {
                return Err(format!("Chromium did not listen within {LAUNCH_TIMEOUT:?}; it said:\n{}", tail(&said)))
            }
        };
        // Keep draining stderr, or Chromium blocks once the pipe is full.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let (socket, _) = tokio::time::timeout(CALL_TIMEOUT, tokio_tungstenite::connect_async(&endpoint))
            .await
            .map_err(|_| format!("connecting to {endpoint} timed out"))?
            .map_err(|e| format!("connect to {endpoint}: {e}"))?;
        browser.cdp = Cdp::start(socket);
        Ok(browser)
    }

    /// Opens a new tab on `url` and waits for it to load.
    pub async fn open(&self, url: &str) -> Result<Page, String> {
        let created = self.cdp.call(None, "Target.createTarget", json!({"url": "about:blank"})).await?;
        let target = created["targetId"].as_str().ok_or("Target.createTarget gave no targetId")?.to_string();
        let attached =
            self.cdp.call(None, "Target.attachToTarget", json!({"targetId": target, "flatten": true})).await?;
        let session = attached["sessionId"].as_str().ok_or("Target.attachToTarget gave no sessionId")?.to_string();
        let page = Page { cdp: self.cdp.clone(), session, target };
        page.goto(url).await?;
        Ok(page)
    }

    /// Kills Chromium and every process it started, as a crash would.
    pub fn kill(&mut self) {
        if let Some(pid) = self.child.id() {
            // The whole group: the browser, its zygotes and renderers.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.start_kill();
        let deadline = Instant::now() + Duration::from_secs(2);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.cdp.task.abort();
        self.kill();
        for _ in 0..20 {
            if std::fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Page {
    /// Navigates to `url` and waits until the new document has loaded.
    pub async fn goto(&self, url: &str) -> Result<(), String> {
        let navigated = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(error) = navigated["errorText"].as_str().filter(|e| !e.is_empty()) {
            return Err(format!("navigate to {url}: {error}"));
        }
        if url != "about:blank" {
            let loaded = "location.href !== 'about:blank' && document.readyState === 'complete'";
            self.wait_for(loaded, LOAD_TIMEOUT).await.map_err(|e| format!("load {url}: {e}"))?;
        }
        Ok(())
    }

    /// Evaluates `js` as a script in the page (a promise is awaited) and returns its value as
    /// JSON (`undefined` and values JSON cannot hold become null). A thrown exception is an Err.
    pub async fn eval(&self, js: &str) -> Result<Value, String> {
        let params = json!({"expression": js, "returnByValue": true, "awaitPromise": true});
        let evaluated = self.call("Runtime.evaluate", params).await?;
        if let Some(details) = evaluated.get("exceptionDetails") {
            let why = details["exception"]["description"].as_str().or(details["text"].as_str()).unwrap_or("exception");
            return Err(format!("`{js}` threw: {why}"));
        }
        Ok(evaluated["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Evaluates `predicate` every 50 ms until its value is truthy, and returns that value.
    /// Errors while polling (say, during a navigation) are retried until `timeout`; a closed
    /// browser ends the wait at once.
    pub async fn wait_for(&self, predicate: &str, timeout: Duration) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("never evaluated");
        loop {
            match tokio::time::timeout_at(deadline, self.eval(predicate)).await {
                Ok(Ok(value)) if truthy(&value) => return Ok(value),
                Ok(Ok(value)) => last = format!("last value {value}"),
                Ok(Err(_)) if self.cdp.is_closed() => return Err(CLOSED.into()),
                Ok(Err(e)) => last = e,
                Err(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("`{predicate}` was not true within {timeout:?} ({last})"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends any DevTools command to this page's session.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.cdp.call(Some(&self.session), method, params).await
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // Fire and forget: nobody waits for the answer.
        self.cdp.send(None, "Target.closeTarget", json!({"targetId": self.target}));
    }
}

/// JavaScript's truthiness, for JSON values.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn tail(lines: &[String]) -> String {
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Where Chromium is, decided once per test run (so it is installed at most once).
static CHROMIUM: OnceLock<Result<PathBuf, String>> = OnceLock::new();

fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("LIVEGATE_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let system = Path::new("/usr/bin/chromium");
    if system.exists() {
        return Some(system.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("chromium")).find(|candidate| candidate.is_file())
}

fn find_or_install() -> Result<PathBuf, String> {
    if let Some(found) = find_chromium() {
        return Ok(found);
    }
    eprintln!("browser tests: Chromium is missing; installing Debian's `chromium` with apt-get (once per run)");
    let started = Instant::now();
    let install = ["-y", "-q", "-o", "DPkg::Lock::Timeout=120", "install", "chromium"];
    if let Err(first) = apt_get(&install) {
        eprintln!("browser tests: {first}; running apt-get update and trying again");
        apt_get(&["-y", "-q", "-o", "DPkg::Lock::Timeout=120", "update"])?;
        apt_get(&install)?;
    }
    eprintln!("browser tests: Chromium installed in {:.0?}", started.elapsed());
    find_chromium().ok_or_else(|| "apt-get installed chromium, yet no chromium binary is found".into())
}

/// Runs apt-get non-interactively, with its output on stderr, killing it after INSTALL_TIMEOUT.
fn apt_get(args: &[&str]) -> Result<(), String> {
    let mut child = std::process::Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .spawn()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("apt-get {} failed: {status}", args.join(" "))),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("apt-get {} took longer than {INSTALL_TIMEOUT:?}", args.join(" ")));
            }
            Err(e) => return Err(format!("waiting for apt-get: {e}")),
        }
    }
}

type Reply = oneshot::Sender<Result<Value, String>>;

/// One DevTools WebSocket, shared by the browser and its pages. A task owns the socket: it
/// numbers the commands, and hands each answer back to whoever is waiting for it. When the
/// socket ends, every waiting and later command gets an Err.
#[derive(Clone)]
struct Cdp {
    outgoing: mpsc::UnboundedSender<(Value, Option<Reply>)>,
    task: std::sync::Arc<JoinHandle<()>>,
}

impl Cdp {
    /// A connection that is already closed, for a browser that is not connected yet.
    fn detached() -> Cdp {
        let (outgoing, _) = mpsc::unbounded_channel();
        Cdp { outgoing, task: std::sync::Arc::new(tokio::spawn(async {})) }
    }

    fn start(
        mut socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    ) -> Cdp {
        let (outgoing, mut requests) = mpsc::unbounded_channel::<(Value, Option<Reply>)>();
        let task = tokio::spawn(async move {
            let mut waiting: HashMap<u64, Reply> = HashMap::new();
            let mut next_id = 1u64;
            loop {
                tokio::select! {
                    request = requests.recv() => {
                        let Some((mut command, reply)) = request else { break };
                        command["id"] = next_id.into();
                        if socket.send(Message::text(command.to_string())).await.is_err() {
                            break;
                        }
                        if let Some(reply) = reply {
                            waiting.insert(next_id, reply);
                        }
                        next_id += 1;
                    }
                    incoming = socket.next() => {
                        let text = match incoming {
                            Some(Ok(Message::Text(text))) => text,
                            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                            Some(Ok(_)) => continue,
                        };
                        let Ok(message) = serde_json::from_str::<Value>(&text) else { continue };
                        // Events (no id) are not used yet.
                        let Some(reply) = message["id"].as_u64().and_then(|id| waiting.remove(&id)) else {
                            continue;
                        };
                        let answer = match message.get("error") {
                            Some(error) => Err(format!("DevTools error: {error}")),
                            None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
                        };
                        let _ = reply.send(answer);
                    }
                }
            }
            // Dropping `waiting` and `requests` answers every pending and later command with Err.
        });
        Cdp { outgoing, task: std::sync::Arc::new(task) }
    }

    fn is_closed(&self) -> bool {
        self.outgoing.is_closed()
    }

    fn command(session: Option<&str>, method: &str, params: Value) -> Value {
        let mut command = json!({"method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = session.into();
        }
        command
    }

    /// Sends a command without waiting for its answer.
    fn send(&self, session: Option<&str>, method: &str, params: Value) {
        let _ = self.outgoing.send((Cdp::command(session, method, params), None));
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value, String> {
        let (reply, answer) = oneshot::channel();
        self.outgoing.send((Cdp::command(session, method, params), Some(reply))).map_err(|_| CLOSED.to_string())?;
        match tokio::time::timeout(CALL_TIMEOUT, answer).await {
            Ok(Ok(answer)) => answer.map_err(|e| format!("{method}: {e}")),
            Ok(Err(_)) => Err(format!("{method}: {CLOSED}")),
            Err(_) => Err(format!("{method}: no answer within {CALL_TIMEOUT:?}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_driver_evaluates_javascript_in_a_page() {
    let started = Instant::now();
    let Some(browser) = launch_or_skip("browser_driver_evaluates_javascript_in_a_page").await else { return };
    eprintln!("Chromium launched in {:.0?}", started.elapsed());
    let app = TestApp::spawn().await;

    let page = browser.open(&format!("http://127.0.0.1:{}/health", app.port)).await.expect("the page opens");
    assert_eq!(page.eval("1+1").await.unwrap(), 2);
    let body = page.eval("document.body.innerText").await.unwrap();
    let health: Value = serde_json::from_str(body.as_str().expect("innerText is a string"))
        .unwrap_or_else(|e| panic!("the page shows JSON, not {body}: {e}"));
    assert_eq!(health["status"], "ok", "{health}");

    assert_eq!(page.eval("Promise.resolve(6 * 7)").await.unwrap(), 42, "promises are awaited");
    let thrown = page.eval("null.property").await.expect_err("an exception is an Err");
    assert!(thrown.contains("TypeError"), "{thrown}");
    let ready = page.wait_for("document.readyState", Duration::from_secs(5)).await.unwrap();
    assert_eq!(ready, "complete");
    let late = page.wait_for("false", Duration::from_millis(200)).await.expect_err("a false predicate times out");
    assert!(late.contains("not true within"), "{late}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_that_dies_gives_errors_not_hangs() {
    let Some(mut browser) = launch_or_skip("browser_that_dies_gives_errors_not_hangs").await else { return };
    let page = browser.open("about:blank").await.expect("a blank page opens");
    assert_eq!(page.eval("'alive'").await.unwrap(), "alive");

    browser.kill();
    let started = Instant::now();
    assert!(page.eval("1").await.is_err());
    assert!(page.wait_for("true", Duration::from_secs(30)).await.is_err());
    assert!(browser.open("about:blank").await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5), "errors came at once, not after timeouts");
}

/// A stand-in for the gateway's HTTP side: `/` serves static/index.html, and the n-th request
/// for `/events/...` gets `streams[n]` as `text/event-stream` (or as it is, when it starts with
/// `HTTP/`), then the connection ends (the last one stays open). Records each events request's path and Last-Event-ID.
/// Each events request's path and Last-Event-ID header.
type Requests = std::sync::Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>;

struct ScriptedEvents {
    port: u16,
    requests: Requests,
    server: JoinHandle<()>,
}

impl ScriptedEvents {
    async fn start(streams: &'static [&'static str]) -> ScriptedEvents {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Requests::default();
        let seen = std::sync::Arc::clone(&requests);
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(ScriptedEvents::serve(stream, streams, std::sync::Arc::clone(&seen)));
            }
        });
        ScriptedEvents { port, requests, server }
    }

    async fn serve(stream: tokio::net::TcpStream, streams: &'static [&'static str], seen: Requests) {
        use tokio::io::AsyncWriteExt;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let Ok(Some(request)) = lines.next_line().await else { return };
        let path = request.split(' ').nth(1).unwrap_or_default().to_string();
        let mut last_event_id = None;
        while let Ok(Some(header)) = lines.next_line().await {
            if header.is_empty() {
                break;
            }
            match header.split_once(':') {
                Some((name, value)) if name.eq_ignore_ascii_case("last-event-id") => {
                    last_event_id = Some(value.trim().to_string())
                }
                _ => {}
            }
        }
        if !path.starts_with("/events/") {
            let (status, kind, body) = match path.split('?').next() {
                Some("/") => ("200 OK", "text/html", include_str!("../../static/index.html")),
                Some("/livegate.js") => ("200 OK", "text/javascript", include_str!("../../static/livegate.js")),
                _ => ("404 Not Found", "text/plain", ""),
            };
            let length = body.len();
            let head = format!("HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {length}\r\n\r\n");
            let _ = write.write_all(format!("{head}{body}").as_bytes()).await;
            return;
        }
        let n = {
            let mut seen = seen.lock().unwrap();
            seen.push((path, last_event_id));
            seen.len() - 1
        };
        let script = streams.get(n).copied().unwrap_or_default();
        let head = match script.starts_with("HTTP/") {
            true => "", // a whole response of its own
            false => "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
        };
        let _ = write.write_all(format!("{head}{script}").as_bytes()).await;
        if n + 1 >= streams.len() {
            tokio::time::sleep(Duration::from_secs(60)).await; // the last stream stays open
        }
    }
}

impl Drop for ScriptedEvents {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The demo page against a scripted event stream (not the gateway's): the first connection
/// sends two events and ends, the page reconnects by itself with Last-Event-ID, and the
/// second connection sends a server error event and a delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_renders_a_scripted_stream_and_resumes_with_last_event_id() {
    const FIRST: &str = r#"retry: 100

event: create
id: 10
data: {"object":{"objectId":"1","body":"hi"}}

event: update
id: 11
data: {"object":{"objectId":"1","body":"edited"},"original":{"objectId":"1","body":"hi"}}

"#;
    const SECOND: &str = r#"event: error
data: {"code":1,"error":"scripted"}

event: delete
id: 12
data: {"object":{"objectId":"1","body":"edited"}}

"#;
    let test = "demo_page_renders_a_scripted_stream_and_resumes_with_last_event_id";
    let Some(browser) = launch_or_skip(test).await else { return };
    let server = ScriptedEvents::start(&[FIRST, SECOND]).await;

    let where_ = r#"{"room":"lobby"}"#;
    let url = format!("http://127.0.0.1:{}/?class=messages&where={where_}&keys=body", server.port);
    let page = browser.open(&url).await.expect("the demo page opens");
    let events = page.wait_for("livegate.events.length >= 4 && livegate.events", PATIENCE).await.unwrap();
    let summary: Vec<(&str, &str)> =
        events.as_array().unwrap().iter().map(|e| (e["event"].as_str().unwrap(), e["id"].as_str().unwrap())).collect();
    // An event without an id line keeps the last id, as EventSource does.
    assert_eq!(summary, [("create", "10"), ("update", "11"), ("error", "11"), ("delete", "12")], "{events}");
    assert_eq!(events[1]["data"]["original"]["body"], "hi");
    assert_eq!(events[2]["data"]["code"], 1);
    assert_eq!(page.eval("livegate.opens").await.unwrap(), 2);
    assert_eq!(page.eval("livegate.errors").await.unwrap(), 1, "the server's error event is not the connection's");
    assert_eq!(page.eval("document.getElementById('state').textContent").await.unwrap(), "open");
    let rows = page.eval("[...document.querySelectorAll('#list li .event')].map(e => e.textContent)").await.unwrap();
    assert_eq!(rows, json!(["delete", "error", "update", "create"]), "newest on top");

    let requests = server.requests.lock().unwrap().clone();
    let subscribe = "/events/messages?snapshot=true&where=%7B%22room%22%3A%22lobby%22%7D&keys=body".to_string();
    assert_eq!(requests, [(subscribe.clone(), None), (subscribe, Some("11".into()))]);
}

/// EventSource gives up on an answer that is not an event stream, without a reason: the page
/// asks once more and shows the server's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_shows_why_a_stream_was_refused() {
    const REFUSED: &str = "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 39\r\n\r\n\
                           {\"code\":102,\"error\":\"bad where clause\"}";
    let Some(browser) = launch_or_skip("demo_page_shows_why_a_stream_was_refused").await else { return };
    let server = ScriptedEvents::start(&[REFUSED, REFUSED]).await;

    let page = browser.open(&format!("http://127.0.0.1:{}/?where=nonsense", server.port)).await.unwrap();
    let shown = page.wait_for("document.querySelector('#list code')?.textContent", PATIENCE).await.unwrap();
    assert_eq!(shown, r#"{"code":102,"error":"bad where clause"}"#);
    assert_eq!(page.eval("document.getElementById('state').textContent").await.unwrap(), "closed");
    assert_eq!(page.eval("[livegate.opens, livegate.errors, livegate.events.length]").await.unwrap(), json!([0, 1, 0]));
    let requests = server.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "the stream, then the page asking why: {requests:?}");
    assert_eq!(requests[0].0, "/events/messages?snapshot=true&where=%22nonsense%22");
}

/// The real thing: the demo page served by the gateway, a plain EventSource, live events, then
/// the gateway stops, changes are made while it is down, and it starts again on the same port:
/// the browser reconnects by itself (Last-Event-ID) and receives exactly the changes it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_receives_live_events_and_resumes_after_a_gateway_restart() {
    let test = "browser_receives_live_events_and_resumes_after_a_gateway_restart";
    let Some(browser) = launch_or_skip(test).await else { return };
    let mut app = crate::support::TestApp::spawn().await;
    let url = format!("http://127.0.0.1:{}/?class=messages&where=%7B%22room%22%3A%22lobby%22%7D", app.port);
    let page = browser.open(&url).await.expect("the demo page opens");
    page.wait_for("livegate.opens >= 1", PATIENCE).await.expect("the stream opens");

    app.db.execute("insert into messages (id, room, body) values (1, 'lobby', 'one'), (2, 'other', 'no')").await;
    app.db.execute("update messages set body = 'uno' where id = 1").await;
    page.wait_for("livegate.events.length >= 2", PATIENCE).await.expect("live events arrive");

    app.stop().await;
    page.wait_for("livegate.errors >= 1", PATIENCE).await.expect("the browser notices the gateway is gone");
    app.db.execute("insert into messages (id, room, body) values (3, 'lobby', 'three'), (4, 'lobby', 'four')").await;
    app.db.execute("delete from messages where id = 1").await;
    app.restart().await;

    let events = page.wait_for("livegate.events.length >= 5 && livegate.events", Duration::from_secs(30)).await;
    let events = events.expect("the missed changes arrive after the restart");
    let summary: Vec<(String, String)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (e["event"].as_str().unwrap().to_string(), e["data"]["object"]["objectId"].as_str().unwrap().to_string())
        })
        .collect();
    let expected = [("create", "1"), ("update", "1"), ("create", "3"), ("create", "4"), ("delete", "1")];
    assert_eq!(summary, expected.map(|(a, b)| (a.to_string(), b.to_string())), "{events}");
    assert!(page.eval("livegate.opens").await.unwrap().as_i64().unwrap() >= 2, "the browser reconnected by itself");

    // And live again after the restart.
    app.db.execute("insert into messages (id, room, body) values (5, 'lobby', 'five')").await;
    let events = page.wait_for("livegate.events.length >= 6 && livegate.events", PATIENCE).await.unwrap();
    assert_eq!(events[5]["data"]["object"]["objectId"], "5");
    assert_eq!(events.as_array().unwrap().len(), 6, "no duplicates");
}

/// The demo page over livegate.js against the gateway: it opens showing the rows the table
/// already has (the snapshot), adds live rows, resumes after a gateway restart, and when the
/// restart left it further behind than the gateway replays, takes a fresh snapshot and shows
/// the right list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_keeps_a_live_list_from_a_snapshot_across_restarts_and_gaps() {
    let test = "demo_page_keeps_a_live_list_from_a_snapshot_across_restarts_and_gaps";
    let Some(browser) = launch_or_skip(test).await else { return };
    let mut app = crate::support::TestApp::spawn_with(|c| c.limits.replay_changes = 5).await;
    app.db
        .execute(
            "insert into messages (id, room, body) values (1, 'lobby', 'one'), (2, 'lobby', 'two'), (3, 'other', 'no')",
        )
        .await;
    app.wait_until_published().await;
    let url = format!("http://127.0.0.1:{}/?class=messages&where=%7B%22room%22%3A%22lobby%22%7D", app.port);
    let page = browser.open(&url).await.expect("the demo page opens");
    let ids = "[...livegate.rows.keys()].sort().join(',')";
    let shown = "[...document.querySelectorAll('#rows tbody tr')].map(r => r.dataset.id).sort().join(',')";
    page.wait_for(&format!("{ids} === '1,2'"), PATIENCE).await.expect("the existing rows, on load");
    assert_eq!(page.eval(shown).await.unwrap(), "1,2", "and on the page");

    app.db.execute("insert into messages (id, room, body) values (4, 'lobby', 'four')").await;
    app.db.execute("delete from messages where id = 1").await;
    page.wait_for(&format!("{ids} === '2,4'"), PATIENCE).await.expect("live changes move the list");

    // A short outage: resumed, no snapshot needed.
    app.stop().await;
    page.wait_for("livegate.errors >= 1", PATIENCE).await.expect("the page notices");
    app.db.execute("insert into messages (id, room, body) values (5, 'lobby', 'five')").await;
    app.restart().await;
    page.wait_for(&format!("{ids} === '2,4,5'"), Duration::from_secs(30)).await.expect("resumed after the restart");

    // A long one: more changes than the gateway replays (limits.replay_changes = 5).
    app.stop().await;
    page.wait_for("livegate.errors >= 2", PATIENCE).await.expect("the page notices again");
    app.db
        .execute("insert into messages (id, room, body) select i, 'lobby', 'bulk' from generate_series(10, 19) i")
        .await;
    app.db.execute("delete from messages where id in (2, 4)").await;
    app.restart().await;
    let expected: Vec<String> = {
        let rows: Vec<(i64,)> =
            sqlx::query_as("select id from messages where room = 'lobby'").fetch_all(&app.db.pool).await.unwrap();
        let mut ids: Vec<String> = rows.into_iter().map(|(id,)| id.to_string()).collect();
        ids.sort();
        ids
    };
    let expected = expected.join(",");
    page.wait_for(&format!("{ids} === '{expected}'"), Duration::from_secs(30))
        .await
        .expect("a fresh snapshot after the gap");
    assert_eq!(page.eval(shown).await.unwrap(), expected.as_str());
    let gaps = page.eval("livegate.events.filter(e => e.event === 'gap').map(e => e.data.reason)").await.unwrap();
    let events = page.eval("JSON.stringify(livegate.events.map(e => [e.event, e.id]))").await.unwrap();
    assert_eq!(gaps, json!(["expired"]), "told why: {events}");
}

/// livegate.js's WebSocket helper in a real browser: the snapshot, live changes, and after a
/// gateway restart a resume with `since` that loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_helper_keeps_a_live_list_and_resumes_with_since() {
    let test = "the_websocket_helper_keeps_a_live_list_and_resumes_with_since";
    let Some(browser) = launch_or_skip(test).await else { return };
    let mut app = crate::support::TestApp::spawn().await;
    app.db.execute("insert into messages (id, room, body) values (1, 'ws', 'one'), (2, 'elsewhere', 'no')").await;
    app.wait_until_published().await;
    let page = browser.open(&format!("http://127.0.0.1:{}/?class=messages&where=%7B%7D", app.port)).await.unwrap();
    let start = format!(
        "import('/livegate.js').then(m => {{ window.ws = m.liveSocket('ws://127.0.0.1:{}/', 'messages', \
         {{ where: {{ room: 'ws' }}, retryMs: 200, onEvent: (e) => window.wsEvents.push(e) }}); return true; }})",
        app.port
    );
    page.eval("window.wsEvents = []").await.unwrap();
    page.eval(&start).await.expect("the module loads");
    let ids = "window.ws && [...ws.rows.keys()].sort().join(',')";
    page.wait_for(&format!("{ids} === '1'"), PATIENCE).await.expect("the snapshot");
    app.db.execute("insert into messages (id, room, body) values (3, 'ws', 'three')").await;
    page.wait_for(&format!("{ids} === '1,3'"), PATIENCE).await.expect("a live change");
    page.wait_for("ws.position() !== undefined", PATIENCE).await.expect("it tracks positions");
    app.stop().await;
    app.db.execute("insert into messages (id, room, body) values (4, 'ws', 'four')").await;
    app.db.execute("delete from messages where id = 1").await;
    app.restart().await;
    page.wait_for(&format!("{ids} === '3,4'"), Duration::from_secs(30)).await.expect("resumed with since");
    let events = page.eval("wsEvents.join(',')").await.unwrap();
    assert_eq!(events, "result,subscribed,create,create,delete,subscribed", "replayed, not re-snapshotted");
}
