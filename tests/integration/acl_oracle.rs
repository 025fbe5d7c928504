//! A randomized check of row read access end to end: users with session tokens and inherited
//! roles (with a cycle), rows whose Parse ACL changes at random, and WebSocket subscribers whose
//! events must be exactly what a small, independent oracle allows: nothing they may not read
//! (no leak), nothing they may read left out (no miss), in commit order, with Parse 2026's
//! shapes for enters and leaves decided by read access.
//!
//! The oracle shares no code with the gateway. Seeds are fixed (`LIVEGATE_ORACLE_SEED=<hex>`
//! runs one other seed) and every failure names its seed.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::rng::Rng;
use crate::support::{TestApp, TestDb, WsClient};

const SEEDS: [u64; 5] = [0x5eed_0001, 0xc0ffee, 0xac1_0ac1e, 0x7e57_0004, 0xbad_5eed];

const USERS: usize = 6;
const ROLES: usize = 5;
const OPERATIONS: usize = 150;
const ROOMS: [&str; 3] = ["a", "b", "c"];
/// How long the last expected event may take to arrive.
const DELIVERY: Duration = Duration::from_secs(10);
/// How long every client must then stay quiet.
const QUIET: Duration = Duration::from_millis(500);

const DOCS: &str = r#"create table docs (id int primary key, room text, body text, "ACL" jsonb, _secret text)"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_client_gets_exactly_what_the_acl_oracle_allows() {
    let seeds = match std::env::var("LIVEGATE_ORACLE_SEED") {
        Ok(seed) => vec![u64::from_str_radix(seed.trim_start_matches("0x"), 16).expect("a hex seed")],
        Err(_) => SEEDS.to_vec(),
    };
    for seed in seeds {
        run(seed).await;
    }
}

/// The two shapes the randomized test found wrong, pinned down: when the query and the read
/// access change in the same write, the state the subscriber cannot read must not be sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_leave_or_enter_never_shows_a_state_the_subscriber_cannot_read() {
    let db = TestDb::create().await;
    db.execute(DOCS).await;
    let app = TestApp::spawn_on(db, |config| config.feed.tables = vec!["docs".into()]).await;
    let mut client = app.client().await;
    client.connect_parse().await;
    client.subscribe(1, "docs", json!({"room": "a"})).await;

    // Leaves the query and becomes unreadable at once: Parse 2026 sends the last readable state.
    app.db.execute(r#"insert into docs (id, room, body, "ACL") values (1, 'a', 'public', null)"#).await;
    client.expect_event("create").await;
    app.db.execute(r#"update docs set room = 'b', body = 'private', "ACL" = '{}' where id = 1"#).await;
    let leave = client.expect_event("leave").await;
    assert_eq!(leave["object"]["body"], "public", "object must not be the unreadable new state: {leave}");
    assert_eq!(leave["original"]["body"], "public", "{leave}");

    // Enters the query and becomes readable at once: no `original`, it was never readable.
    app.db.execute(r#"insert into docs (id, room, body, "ACL") values (2, 'c', 'secret', '{}')"#).await;
    app.db.execute(r#"update docs set room = 'a', body = 'shared', "ACL" = null where id = 2"#).await;
    let enter = client.expect_event("enter").await;
    assert_eq!(enter["object"]["body"], "shared");
    assert!(enter.get("original").is_none_or(Value::is_null), "original must not be the unreadable old state: {enter}");
    client.expect_silence(QUIET).await;
}

// ---------------------------------------------------------------------------------------------
// Randomness

/// The model's own draws, on the generator the unit tests share.
trait Draw {
    fn user(&mut self) -> String;
    fn role(&mut self) -> String;
    fn room(&mut self) -> &'static str;
}

impl Draw for Rng {
    fn user(&mut self) -> String {
        format!("u{}", self.below(USERS))
    }

    fn role(&mut self) -> String {
        format!("R{}", self.below(ROLES))
    }

    fn room(&mut self) -> &'static str {
        ROOMS[self.below(ROOMS.len())]
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle

/// Users, their sessions and direct roles, and the role inheritance edges.
struct Model {
    users: Vec<User>,
    /// (role, inherits): members of `role` also hold `inherits`.
    edges: Vec<(String, String)>,
}

struct User {
    id: String,
    token: String,
    direct: Vec<String>,
}

impl Model {
    fn generate(rng: &mut Rng) -> Model {
        // A cycle always, plus a few random edges (self-loops and duplicates allowed).
        let mut edges = vec![("R3".to_string(), "R4".to_string()), ("R4".to_string(), "R3".to_string())];
        for _ in 0..4 {
            let edge = (rng.role(), rng.role());
            if !edges.contains(&edge) {
                edges.push(edge);
            }
        }
        let users = (0..USERS)
            .map(|i| {
                let mut direct: Vec<String> = (0..rng.below(3)).map(|_| rng.role()).collect();
                direct.sort();
                direct.dedup();
                User { id: format!("u{i}"), token: format!("r:{:016x}{:016x}", rng.next(), rng.next()), direct }
            })
            .collect();
        Model { users, edges }
    }

    /// Direct roles plus everything reachable over the edges, by plain breadth-first search.
    fn closure(&self, direct: &[String]) -> BTreeSet<String> {
        let mut held: BTreeSet<String> = BTreeSet::new();
        let mut queue: VecDeque<String> = direct.iter().cloned().collect();
        while let Some(role) = queue.pop_front() {
            if held.insert(role.clone()) {
                for (from, to) in &self.edges {
                    if *from == role {
                        queue.push_back(to.clone());
                    }
                }
            }
        }
        held
    }

    fn identity(&self, user: usize) -> Identity {
        let user = &self.users[user];
        Identity { master: false, user: Some(user.id.clone()), roles: self.closure(&user.direct) }
    }

    fn describe(&self) -> String {
        let edges: Vec<String> = self.edges.iter().map(|(r, i)| format!("{r}→{i}")).collect();
        let mut text = format!("role edges (members of left also hold right): {}\n", edges.join(", "));
        for user in &self.users {
            let _ = writeln!(text, "  {}: direct {:?}, closure {:?}", user.id, user.direct, self.closure(&user.direct));
        }
        text
    }
}

/// Whom a subscription is evaluated as.
#[derive(Debug, Clone)]
struct Identity {
    master: bool,
    user: Option<String>,
    roles: BTreeSet<String>,
}

impl Identity {
    fn anonymous() -> Identity {
        Identity { master: false, user: None, roles: BTreeSet::new() }
    }

    fn master() -> Identity {
        Identity { master: true, ..Identity::anonymous() }
    }

    /// Parse's rule: no ACL is public; otherwise `*`, the user or a held role must grant read.
    fn can_read(&self, acl: &Value) -> bool {
        let grants = |key: &str| acl.get(key).and_then(|grant| grant.get("read")) == Some(&Value::Bool(true));
        acl.is_null()
            || self.master
            || grants("*")
            || self.user.as_deref().is_some_and(grants)
            || self.roles.iter().any(|role| grants(&format!("role:{role}")))
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.user, self.master) {
            (_, true) => f.write_str("master"),
            (None, false) => f.write_str("anonymous"),
            (Some(user), false) => write!(f, "user {user} with roles {:?}", self.roles),
        }
    }
}

/// The subscription queries the test uses, matched by the oracle on its own.
#[derive(Debug, Clone)]
enum Where {
    All,
    Room(&'static str),
    RoomIn(&'static str, &'static str),
    RoomNot(&'static str),
}

impl Where {
    fn random(rng: &mut Rng) -> Where {
        match rng.below(4) {
            0 => Where::All,
            1 => Where::Room(rng.room()),
            2 => Where::RoomIn("a", "b"),
            _ => Where::RoomNot(rng.room()),
        }
    }

    fn json(&self) -> Value {
        match self {
            Where::All => json!({}),
            Where::Room(room) => json!({"room": room}),
            Where::RoomIn(a, b) => json!({"room": {"$in": [a, b]}}),
            Where::RoomNot(room) => json!({"room": {"$ne": room}}),
        }
    }

    fn matches(&self, row: &Row) -> bool {
        match self {
            Where::All => true,
            Where::Room(room) => row.room == *room,
            Where::RoomIn(a, b) => row.room == *a || row.room == *b,
            Where::RoomNot(room) => row.room != *room,
        }
    }
}

/// One state of a row. Every write sets a fresh `body`, so a body names one state exactly.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: i64,
    room: String,
    body: String,
    /// `Value::Null` is a NULL column: public.
    acl: Value,
}

impl Row {
    fn sql_acl(&self) -> String {
        match &self.acl {
            Value::Null => "null".into(),
            acl => format!("'{acl}'"),
        }
    }
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{} {} room={} ACL={}", self.id, self.body, self.room, self.acl)
    }
}

/// One committed statement and the row states before and after it.
struct Change {
    sql: String,
    old: Option<Row>,
    new: Option<Row>,
}

/// An event as a client sees it: op, `object` and `original`.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    op: &'static str,
    object: Row,
    original: Option<Row>,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.op, self.object)?;
        match &self.original {
            Some(original) => write!(f, " | original {}", original.body),
            None => f.write_str(" | no original"),
        }
    }
}

/// The event one change makes for one subscriber, if any (Parse 2026).
fn oracle(identity: &Identity, query: &Where, change: &Change) -> Option<Event> {
    let visible = |row: &Option<Row>| row.as_ref().is_some_and(|r| query.matches(r) && identity.can_read(&r.acl));
    let event = |op, object: &Row, original: Option<&Row>| {
        Some(Event { op, object: object.clone(), original: original.cloned() })
    };
    match (&change.old, &change.new) {
        (None, Some(new)) => visible(&change.new).then(|| event("create", new, None))?,
        (Some(old), None) => visible(&change.old).then(|| event("delete", old, None))?,
        (Some(old), Some(new)) => match (visible(&change.old), visible(&change.new)) {
            (true, true) => event("update", new, Some(old)),
            // The new state is shown only if it can be read (the query alone made it leave);
            // otherwise the last state the subscriber could read stands in for it.
            (true, false) if !query.matches(new) && identity.can_read(&new.acl) => event("leave", new, Some(old)),
            (true, false) => event("leave", old, Some(old)),
            // The old state is shown as `original` only if it could be read.
            (false, true) if !query.matches(old) && identity.can_read(&old.acl) => event("enter", new, Some(old)),
            (false, true) => event("enter", new, None),
            (false, false) => None,
        },
        (None, None) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Random writes

fn acl_of(grants: &[(&str, Value)]) -> Value {
    Value::Object(grants.iter().map(|(who, grant)| (who.to_string(), grant.clone())).collect::<Map<_, _>>())
}

fn random_acl(rng: &mut Rng) -> Value {
    let read = json!({"read": true});
    let (user, other, role) = (rng.user(), rng.user(), format!("role:{}", rng.role()));
    match rng.below(10) {
        0 => Value::Null,
        1 => acl_of(&[("*", read)]),
        2 => acl_of(&[(&user, json!({"read": true, "write": true}))]),
        3 => acl_of(&[(&user, read.clone()), (&other, read)]),
        4 => acl_of(&[(&role, read)]),
        5 => acl_of(&[(&role, read.clone()), (&user, read)]),
        6 => json!({}),
        7 => acl_of(&[(&user, json!({"write": true})), ("*", json!({"write": true}))]),
        8 => acl_of(&[(&role, json!({"read": false, "write": true})), (&user, json!({"read": false}))]),
        _ => acl_of(&[(&role, read.clone()), (&format!("role:{}", rng.role()), read)]),
    }
}

/// Commits one random insert, update or delete and records it.
async fn random_change(rng: &mut Rng, db: &TestDb, rows: &mut BTreeMap<i64, Row>, step: usize) -> Change {
    let body = format!("b{step}");
    let existing = (!rows.is_empty()).then(|| *rows.keys().nth(rng.below(rows.len())).unwrap());
    let roll = rng.below(100);
    let change = match existing {
        Some(id) if roll < 50 => {
            let old = rows[&id].clone();
            let mut new = Row { body, ..old.clone() };
            if rng.chance(50) {
                new.room = rng.room().into();
            }
            if rng.chance(60) {
                new.acl = random_acl(rng);
            }
            let sql = format!(
                r#"update docs set room = '{}', body = '{}', "ACL" = {} where id = {id}"#,
                new.room,
                new.body,
                new.sql_acl()
            );
            Change { sql, old: Some(old), new: Some(new) }
        }
        Some(id) if roll < 65 => {
            Change { sql: format!("delete from docs where id = {id}"), old: Some(rows[&id].clone()), new: None }
        }
        _ => {
            let id = rows.keys().next_back().map_or(1, |last| last + 1);
            let new = Row { id, room: rng.room().into(), body, acl: random_acl(rng) };
            let sql = format!(
                r#"insert into docs (id, room, body, "ACL", _secret) values ({id}, '{}', '{}', {}, 'hidden')"#,
                new.room,
                new.body,
                new.sql_acl()
            );
            Change { sql, old: None, new: Some(new) }
        }
    };
    db.execute(&change.sql).await;
    match &change.new {
        Some(new) => rows.insert(new.id, new.clone()),
        None => rows.remove(&change.old.as_ref().unwrap().id),
    };
    change
}

// ---------------------------------------------------------------------------------------------
// Clients

struct Subscriber {
    label: String,
    identity: Identity,
    query: Where,
    frames: mpsc::UnboundedReceiver<Value>,
}

/// Connects with `connect`, subscribes (requestId 1, with `token` on the subscription if given)
/// and hands every later text frame to a channel.
async fn subscriber(
    app: &TestApp,
    label: String,
    identity: Identity,
    connect: Value,
    token: Option<&str>,
    query: Where,
) -> Subscriber {
    let mut client = app.client().await;
    client.send(connect).await;
    let reply = client.recv().await;
    assert_eq!(reply["op"], "connected", "{label}: {reply}");
    let mut subscribe =
        json!({"op": "subscribe", "requestId": 1, "query": {"className": "docs", "where": query.json()}});
    if let Some(token) = token {
        subscribe["sessionToken"] = token.into();
    }
    client.send(subscribe).await;
    let reply = client.recv().await;
    assert_eq!(reply["op"], "subscribed", "{label}: {reply}");
    Subscriber { label, identity, query, frames: pump(client) }
}

fn pump(mut client: WsClient) -> mpsc::UnboundedReceiver<Value> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = client.socket.next().await {
            match message {
                Message::Text(text) => {
                    let frame = serde_json::from_str(&text).unwrap_or_else(|_| json!({"unparsable": text.as_str()}));
                    if tx.send(frame).is_err() {
                        return;
                    }
                }
                Message::Close(frame) => {
                    let _ = tx.send(json!({"closed": format!("{frame:?}")}));
                    return;
                }
                _ => {}
            }
        }
    });
    rx
}

fn user_frame(token: &str) -> Value {
    json!({"op": "connect", "applicationId": "app", "javascriptKey": "js", "sessionToken": token})
}

fn anonymous_frame() -> Value {
    json!({"op": "connect", "applicationId": "app", "javascriptKey": "js"})
}

async fn subscribers(app: &TestApp, model: &Model, rng: &mut Rng) -> Vec<Subscriber> {
    let mut clients = Vec::new();
    for (i, user) in model.users.iter().enumerate() {
        let connect = user_frame(&user.token);
        clients.push(subscriber(app, user.id.clone(), model.identity(i), connect, None, Where::random(rng)).await);
    }
    clients.push(
        subscriber(app, "anonymous".into(), Identity::anonymous(), anonymous_frame(), None, Where::random(rng)).await,
    );
    let master = json!({"op": "connect", "applicationId": "app", "masterKey": "mk"});
    clients.push(subscriber(app, "master".into(), Identity::master(), master, None, Where::random(rng)).await);
    // The subscription's own token wins over the connection's (or its absence).
    let (on, of) = (rng.below(USERS), rng.below(USERS - 1));
    let of = if of >= on { of + 1 } else { of };
    let label = format!("connected as u{on}, subscribed as u{of}");
    let connect = user_frame(&model.users[on].token);
    let token = Some(model.users[of].token.as_str());
    clients.push(subscriber(app, label, model.identity(of), connect, token, Where::random(rng)).await);
    let of = rng.below(USERS);
    let label = format!("connected anonymously, subscribed as u{of}");
    let token = Some(model.users[of].token.as_str());
    clients.push(subscriber(app, label, model.identity(of), anonymous_frame(), token, Where::random(rng)).await);
    clients
}

// ---------------------------------------------------------------------------------------------
// Checking

/// A received frame as an [`Event`], or why it is not a well-formed event of this test.
fn event_of(frame: &Value, states: &HashMap<String, Row>) -> Result<Event, String> {
    let op = match frame["op"].as_str() {
        Some("create") => "create",
        Some("enter") => "enter",
        Some("update") => "update",
        Some("leave") => "leave",
        Some("delete") => "delete",
        _ => return Err(format!("not an event: {frame}")),
    };
    if frame["requestId"] != 1 {
        return Err(format!("wrong requestId: {frame}"));
    }
    let row = |object: &Value| -> Result<Row, String> {
        let fields: BTreeSet<&str> = object.as_object().into_iter().flatten().map(|(k, _)| k.as_str()).collect();
        let allowed = BTreeSet::from(["className", "objectId", "id", "room", "body", "ACL"]);
        let object_id = object["objectId"].as_str().and_then(|id| id.parse::<i64>().ok());
        if fields != allowed
            || object["className"] != "docs"
            || object_id.is_none()
            || object_id != object["id"].as_i64()
        {
            return Err(format!("unexpected fields or ids in {object}"));
        }
        let body = object["body"].as_str().unwrap_or_default();
        let row = Row {
            id: object["id"].as_i64().unwrap_or_default(),
            room: object["room"].as_str().unwrap_or_default().into(),
            body: body.into(),
            acl: object["ACL"].clone(),
        };
        match states.get(body) {
            Some(state) if *state == row => Ok(row),
            _ => Err(format!("a row state that never existed: {object}")),
        }
    };
    let object = row(&frame["object"])?;
    let original = match frame.get("original") {
        None | Some(Value::Null) => None,
        Some(original) => Some(row(original)?),
    };
    Ok(Event { op, object, original })
}

/// Every row state an event shows must be readable by the subscriber.
fn leaks(identity: &Identity, event: &Event) -> Vec<String> {
    [Some(&event.object), event.original.as_ref()]
        .into_iter()
        .flatten()
        .filter(|row| !identity.can_read(&row.acl))
        .map(|row| format!("{row} is not readable by {identity}"))
        .collect()
}

/// Waits until `client` has as many frames as expected, or until `deadline`.
async fn collect(client: &mut Subscriber, expected: usize, deadline: tokio::time::Instant) -> Vec<Value> {
    let mut frames = Vec::new();
    while frames.len() < expected {
        match tokio::time::timeout_at(deadline, client.frames.recv()).await {
            Ok(Some(frame)) => frames.push(frame),
            _ => break,
        }
    }
    frames
}

fn report(
    client: &Subscriber,
    expected: &[(usize, Event)],
    frames: &[Value],
    changes: &[Change],
    states: &HashMap<String, Row>,
) -> Option<String> {
    let received: Vec<Result<Event, String>> = frames.iter().map(|f| event_of(f, states)).collect();
    let leaked: Vec<String> = received
        .iter()
        .enumerate()
        .filter_map(|(i, e)| Some((i, e.as_ref().ok()?)))
        .flat_map(|(i, e)| {
            leaks(&client.identity, e).into_iter().map(move |leak| format!("    LEAK in event {i} ({e}): {leak}"))
        })
        .collect();
    let first_mismatch = (0..expected.len().max(received.len()))
        .find(|&i| expected.get(i).map(|(_, e)| e) != received.get(i).and_then(|r| r.as_ref().ok()));
    if leaked.is_empty() && first_mismatch.is_none() {
        return None;
    }
    let mut text = format!(
        "client {:?} ({}), where {}: expected {} events, received {}\n",
        client.label,
        client.identity,
        client.query.json(),
        expected.len(),
        received.len()
    );
    for leak in leaked.iter().take(5) {
        let _ = writeln!(text, "{leak}");
    }
    if let Some(i) = first_mismatch {
        let _ = writeln!(text, "  first mismatch at event {i}:");
        match expected.get(i) {
            Some((step, event)) => {
                let change = &changes[*step];
                let _ = writeln!(text, "    expected {event}");
                let _ = writeln!(text, "      from change {step}: {}", change.sql);
                let _ = writeln!(text, "      old: {}", change.old.as_ref().map_or("none".into(), Row::to_string));
                let _ = writeln!(text, "      new: {}", change.new.as_ref().map_or("none".into(), Row::to_string));
            }
            None => text.push_str("    expected nothing more\n"),
        }
        match received.get(i) {
            Some(Ok(event)) => {
                let _ = writeln!(text, "    received {event}");
            }
            Some(Err(why)) => {
                let _ = writeln!(text, "    received {why}");
            }
            None => text.push_str("    received nothing more\n"),
        }
        let from = i.saturating_sub(3);
        text.push_str("  expected (from change):\n");
        for (step, event) in expected.iter().skip(from).take(10) {
            let _ = writeln!(text, "    [{step}] {event}");
        }
        text.push_str("  received:\n");
        for event in received.iter().skip(from).take(10) {
            match event {
                Ok(event) => writeln!(text, "    {event}"),
                Err(why) => writeln!(text, "    {why}"),
            }
            .unwrap();
        }
    }
    Some(text)
}

async fn run(seed: u64) {
    let started = std::time::Instant::now();
    let mut rng = Rng::new(seed);
    let model = Model::generate(&mut rng);

    // Identities exist before the gateway (and its caches) do.
    let db = TestDb::create().await;
    db.execute(DOCS).await;
    livegate::database::migrate(&db.pool).await.expect("migrations apply");
    for (role, inherits) in &model.edges {
        db.execute(&format!("insert into livegate.role_inheritance values ('{role}', '{inherits}')")).await;
    }
    for user in &model.users {
        let roles = format!("{{{}}}", user.direct.join(","));
        let sql = format!(
            "insert into livegate.sessions (token, user_id, roles) values ('{}', '{}', '{roles}')",
            user.token, user.id
        );
        db.execute(&sql).await;
    }
    let app = TestApp::spawn_on(db, |config| {
        config.feed.tables = vec!["docs".into()];
        config.keys.javascript_key = Some("js".into());
        config.keys.master_key = Some("mk".into());
    })
    .await;
    let mut clients = subscribers(&app, &model, &mut rng).await;

    let mut rows = BTreeMap::new();
    let mut changes = Vec::with_capacity(OPERATIONS);
    for step in 0..OPERATIONS {
        changes.push(random_change(&mut rng, &app.db, &mut rows, step).await);
    }
    let states: HashMap<String, Row> =
        changes.iter().filter_map(|c| c.new.clone()).map(|row| (row.body.clone(), row)).collect();

    let expected: Vec<Vec<(usize, Event)>> = clients
        .iter()
        .map(|client| {
            let events = changes.iter().enumerate();
            events.filter_map(|(step, change)| Some((step, oracle(&client.identity, &client.query, change)?))).collect()
        })
        .collect();
    let deadline = tokio::time::Instant::now() + DELIVERY;
    let mut received = Vec::new();
    for (client, expected) in clients.iter_mut().zip(&expected) {
        received.push(collect(client, expected.len(), deadline).await);
    }
    tokio::time::sleep(QUIET).await;
    for (client, frames) in clients.iter_mut().zip(&mut received) {
        while let Ok(frame) = client.frames.try_recv() {
            frames.push(frame);
        }
    }

    let failures: Vec<String> = clients
        .iter()
        .zip(&expected)
        .zip(&received)
        .filter_map(|((client, expected), frames)| report(client, expected, frames, &changes, &states))
        .collect();
    let total: usize = expected.iter().map(Vec::len).sum();
    assert!(
        failures.is_empty(),
        "seed {seed:#x} (rerun with LIVEGATE_ORACLE_SEED={seed:x}): {} of {} clients disagree with the oracle\n{}{}",
        failures.len(),
        clients.len(),
        model.describe(),
        failures.join("")
    );
    eprintln!(
        "acl oracle: seed {seed:#x}: {OPERATIONS} changes, {} clients, {total} events as expected, in {:?}",
        clients.len(),
        started.elapsed()
    );
}
