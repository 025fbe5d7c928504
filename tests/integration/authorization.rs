//! Identity and authorization end to end: JWTs and session tokens on both transports, refused
//! tokens, row ACLs by user, role, inherited role, public and master (with Parse 2026's enter and
//! leave bodies), class rules, protected fields, and tokens that lapse while connected.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use livegate::auth::jwt::JwtKeyConfig;
use livegate::auth::rules::ClassRule;
use livegate::config::Config;
use serde_json::{json, Value};

use crate::support::sse::{encode, SseClient};
use crate::support::{TestApp, TestDb, WsClient};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";
const DOCS: &str = r#"create table docs (id int primary key, room text, body text, secret_note text, "ACL" jsonb)"#;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn rs256(claims: Value, private_key: &str) -> String {
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture(private_key)).unwrap()).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa".into());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn user_token(user: &str, roles: &[&str], ttl_secs: u64) -> String {
    hs256(json!({"sub": user, "roles": roles, "exp": now() + ttl_secs, "aud": "livegate"}))
}

/// JWT (HS256 + RS256 pinned), session tokens, a master key, the docs table watched.
fn configure(config: &mut Config) {
    config.feed.tables = vec!["docs".into()];
    config.keys.master_key = Some("mk".into());
    config.keys.javascript_key = Some("js".into());
    config.jwt.algorithms = vec!["HS256".into(), "RS256".into()];
    config.jwt.audiences = vec!["livegate".into()];
    config.jwt.leeway_secs = 0;
    config.jwt.keys = vec![
        JwtKeyConfig { secret: Some(SECRET.into()), ..JwtKeyConfig::default() },
        JwtKeyConfig { kid: Some("rsa".into()), pem_file: Some(fixture("rsa_public.pem")), ..JwtKeyConfig::default() },
    ];
}

async fn spawn(extra: impl FnOnce(&mut Config)) -> TestApp {
    let db = TestDb::create().await;
    db.execute(DOCS).await;
    TestApp::spawn_on(db, |config| {
        configure(config);
        extra(config);
    })
    .await
}

/// Connects with `sessionToken` (and the master key when asked) and returns the reply.
async fn connect(app: &TestApp, token: Option<&str>, master: bool) -> (WsClient, Value) {
    let mut client = app.client().await;
    let mut frame = json!({"op": "connect", "applicationId": "app", "javascriptKey": "js"});
    if let Some(token) = token {
        frame["sessionToken"] = json!(token);
    }
    if master {
        frame["masterKey"] = json!("mk");
    }
    client.send(frame).await;
    let reply = client.recv().await;
    (client, reply)
}

async fn subscriber(app: &TestApp, token: Option<&str>, master: bool, where_: Value) -> WsClient {
    let (mut client, reply) = connect(app, token, master).await;
    assert_eq!(reply["op"], "connected", "{reply}");
    client.subscribe(1, "docs", where_).await;
    client
}

/// objectIds of the next `n` events, asserting each op.
async fn ids(client: &mut WsClient, op: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(client.expect_event(op).await["object"]["objectId"].as_str().unwrap().to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_token_gets_209_and_valid_ones_connect() {
    let app = spawn(|_| {}).await;
    app.db.execute("insert into livegate.sessions (token, user_id) values ('good', 'u1')").await;
    app.db.execute("insert into livegate.sessions (token, user_id, expires_at) values ('old', 'u1', now() - interval '1 minute')").await;
    let claims = json!({"sub": "u1", "exp": now() + 60, "aud": "livegate"});
    let none_alg = {
        use base64::Engine;
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.", b64(json!({"alg": "none", "typ": "JWT"})), b64(claims.clone()))
    };
    let wrong_secret = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"another-secret-that-is-32-bytes-long!!"),
    )
    .unwrap();
    // The classic confusion: HS256 "signed" with the RSA public key's bytes as the secret.
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&std::fs::read(fixture("rsa_public.pem")).unwrap()),
    )
    .unwrap();
    let hs384 =
        jsonwebtoken::encode(&Header::new(Algorithm::HS384), &claims, &EncodingKey::from_secret(SECRET.as_bytes()))
            .unwrap();
    let cases = [
        ("unknown opaque token", "nope".to_string(), "Invalid session token"),
        ("expired session row", "old".to_string(), "Session token is expired."),
        ("alg none", none_alg, "Invalid session token"),
        ("wrong HMAC secret", wrong_secret, "Invalid session token"),
        ("HMAC with the RSA public key", confused, "Invalid session token"),
        ("algorithm not pinned", hs384, "Invalid session token"),
        ("signed by another RSA key", rs256(claims.clone(), "rsa2_private.pem"), "Invalid session token"),
        ("expired JWT", hs256(json!({"sub": "u1", "exp": now() - 10, "aud": "livegate"})), "Session token is expired."),
        (
            "not yet valid",
            hs256(json!({"sub": "u1", "exp": now() + 60, "nbf": now() + 30, "aud": "livegate"})),
            "Invalid",
        ),
        ("wrong audience", hs256(json!({"sub": "u1", "exp": now() + 60, "aud": "other"})), "Invalid session token"),
        ("no subject", hs256(json!({"exp": now() + 60, "aud": "livegate"})), "Invalid session token"),
        ("garbage with dots", "a.b.c".to_string(), "Invalid session token"),
    ];
    for (case, token, message) in cases {
        let (_client, reply) = connect(&app, Some(&token), false).await;
        assert_eq!(reply["op"], "error", "{case}: {reply}");
        assert_eq!(reply["code"], 209, "{case}: {reply}");
        assert!(reply["error"].as_str().unwrap().starts_with(message), "{case}: {reply}");
        assert!(reply["requestId"].is_null());
    }
    for (case, token) in [
        ("HS256", hs256(claims.clone())),
        ("RS256", rs256(claims.clone(), "rsa_private.pem")),
        ("session", "good".into()),
    ] {
        let (_client, reply) = connect(&app, Some(&token), false).await;
        assert_eq!(reply["op"], "connected", "{case}: {reply}");
    }
    // A subscription's own token is checked too, and refused with its requestId.
    let (mut client, _) = connect(&app, Some("good"), false).await;
    client.send(json!({"op": "subscribe", "requestId": 4, "query": {"className": "docs", "where": {}}, "sessionToken": "nope"})).await;
    let reply = client.recv().await;
    assert_eq!((reply["code"].as_i64(), reply["requestId"].as_i64()), (Some(209), Some(4)), "{reply}");
    assert_eq!(app.health().await["subscriptions"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_acls_by_user_role_inherited_role_public_and_master() {
    let app = spawn(|_| {}).await;
    // Mod members inherit Admin; Admin and Mod inherit each other is a cycle that must not hang.
    app.db
        .execute("insert into livegate.role_inheritance values ('Mod', 'Admin'), ('Admin', 'Mod'), ('Intern', 'Mod')")
        .await;
    app.db.execute("insert into livegate.sessions (token, user_id, roles) values ('bob', 'bob', '{Intern}')").await;
    let mut alice = subscriber(&app, Some(&user_token("alice", &[], 600)), false, json!({})).await;
    let mut bob = subscriber(&app, Some("bob"), false, json!({})).await;
    let mut carol = subscriber(&app, Some(&user_token("carol", &["Other"], 600)), false, json!({})).await;
    let mut anonymous = subscriber(&app, None, false, json!({})).await;
    let mut master = subscriber(&app, None, true, json!({})).await;
    // Subscription token wins over the connection's: dave's connection, alice's subscription.
    let (mut dave, _) = connect(&app, Some(&user_token("dave", &[], 600)), false).await;
    dave.send(json!({"op": "subscribe", "requestId": 1, "query": {"className": "docs", "where": {}}, "sessionToken": user_token("alice", &[], 600)})).await;
    assert_eq!(dave.recv().await["op"], "subscribed");

    app.db
        .execute(
            r#"insert into docs (id, body, "ACL") values
               (1, 'public', null),
               (2, 'public read', '{"*": {"read": true}}'),
               (3, 'alice', '{"alice": {"read": true, "write": true}}'),
               (4, 'admins', '{"role:Admin": {"read": true}}'),
               (5, 'nobody', '{}'),
               (6, 'write only', '{"*": {"write": true}, "carol": {"write": true}}'),
               (7, 'carol or mods', '{"carol": {"read": true}, "role:Mod": {"read": true}}')"#,
        )
        .await;
    let expect = [
        ("alice", &mut alice, vec!["1", "2", "3"]),
        ("bob (Intern → Mod → Admin)", &mut bob, vec!["1", "2", "4", "7"]),
        ("carol", &mut carol, vec!["1", "2", "7"]),
        ("anonymous", &mut anonymous, vec!["1", "2"]),
        ("master", &mut master, vec!["1", "2", "3", "4", "5", "6", "7"]),
        ("dave with alice's subscription token", &mut dave, vec!["1", "2", "3"]),
    ];
    for (who, client, want) in expect {
        let got = ids(client, "create", want.len()).await;
        assert_eq!(got, want, "{who}");
        client.expect_silence(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_changes_enter_and_leave_with_parse_2026_bodies() {
    let app = spawn(|_| {}).await;
    let mut bob = subscriber(&app, Some(&user_token("bob", &[], 600)), false, json!({"room": "a"})).await;
    app.db
        .execute(r#"insert into docs (id, room, body, "ACL") values (1, 'a', 'v1', '{"bob": {"read": true}}')"#)
        .await;
    bob.expect_event("create").await;
    // Losing read access while still matching: leave, and object is the last state bob could read.
    app.db.execute(r#"update docs set body = 'v2', "ACL" = '{"alice": {"read": true}}' where id = 1"#).await;
    let leave = bob.expect_event("leave").await;
    assert_eq!(leave["object"]["body"], "v1", "{leave}");
    assert!(leave["object"]["ACL"]["bob"].is_object(), "the readable state, not the new one: {leave}");
    // Changes bob cannot read are not sent.
    app.db.execute("update docs set body = 'v3' where id = 1").await;
    // Gaining read access: enter without original (bob never saw v3).
    app.db.execute(r#"update docs set body = 'v4', "ACL" = null where id = 1"#).await;
    let enter = bob.expect_event("enter").await;
    assert_eq!(enter["object"]["body"], "v4");
    assert!(enter.get("original").is_none(), "{enter}");
    // Query-driven leave and enter are unchanged: object is the new state, original the old.
    app.db.execute("update docs set room = 'b', body = 'v5' where id = 1").await;
    let leave = bob.expect_event("leave").await;
    assert_eq!((leave["object"]["body"].as_str(), leave["original"]["body"].as_str()), (Some("v5"), Some("v4")));
    app.db.execute("update docs set room = 'a', body = 'v6' where id = 1").await;
    let enter = bob.expect_event("enter").await;
    assert_eq!((enter["object"]["body"].as_str(), enter["original"]["body"].as_str()), (Some("v6"), Some("v5")));
    // A delete bob may not read is not sent; one he may is.
    app.db.execute(r#"update docs set "ACL" = '{}' where id = 1"#).await;
    assert_eq!(bob.expect_event("leave").await["object"]["body"], "v6");
    app.db.execute("delete from docs where id = 1").await;
    bob.expect_silence(Duration::from_millis(400)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_rules_and_protected_fields() {
    let app = spawn(|config| {
        let rule = |subscribe: &str, roles: &[&str], protected: &[&str]| ClassRule {
            subscribe: subscribe.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            protected_fields: protected.iter().map(|r| r.to_string()).collect(),
        };
        config.classes.insert("docs".into(), rule("anyone", &[], &["secret_note"]));
        config.classes.insert("members".into(), rule("authenticated", &[], &[]));
        config.classes.insert("staff".into(), rule("roles", &["Admin"], &[]));
        config.classes.insert("vault".into(), rule("master", &[], &[]));
    })
    .await;
    let user = user_token("u1", &["Other"], 600);
    let admin = user_token("u2", &["Admin"], 600);
    type Case<'a> = (&'a str, Option<&'a str>, bool, &'a str, Value, Option<(i64, &'a str)>);
    let cases: [Case; 9] = [
        (
            "anonymous on members",
            None,
            false,
            "members",
            json!({}),
            Some((101, "Permission denied, user needs to be authenticated.")),
        ),
        ("user on members", Some(&user), false, "members", json!({}), None),
        (
            "user on staff",
            Some(&user),
            false,
            "staff",
            json!({}),
            Some((119, "Permission denied for action find on class staff.")),
        ),
        ("admin on staff", Some(&admin), false, "staff", json!({}), None),
        (
            "admin on vault",
            Some(&admin),
            false,
            "vault",
            json!({}),
            Some((119, "Permission denied for action find on class vault.")),
        ),
        ("master on vault", None, true, "vault", json!({}), None),
        (
            "probing a protected field",
            Some(&admin),
            false,
            "docs",
            json!({"secret_note": {"$regex": "^a"}}),
            Some((119, "Permission denied")),
        ),
        (
            "probing it inside $or",
            None,
            false,
            "docs",
            json!({"$or": [{"room": "a"}, {"secret_note.x": 1}]}),
            Some((119, "Permission denied")),
        ),
        ("master may filter on it", None, true, "docs", json!({"secret_note": "s"}), None),
    ];
    for (case, token, master, class, where_, refusal) in cases {
        let (mut client, reply) = connect(&app, token, master).await;
        assert_eq!(reply["op"], "connected", "{case}");
        client.send(json!({"op": "subscribe", "requestId": 2, "query": {"className": class, "where": where_}})).await;
        let reply = client.recv().await;
        match refusal {
            None => assert_eq!(reply["op"], "subscribed", "{case}: {reply}"),
            Some((code, message)) => {
                assert_eq!(
                    (reply["code"].as_i64(), reply["error"].as_str()),
                    (Some(code), Some(message)),
                    "{case}: {reply}"
                );
                assert_eq!(reply["requestId"], 2);
            }
        }
    }
    let (mut client, _) = connect(&app, None, false).await;
    client.send(json!({"op": "subscribe", "requestId": 3, "query": {"className": "docs", "where": {}, "watch": ["secret_note"]}})).await;
    assert_eq!(client.recv().await["code"], 119, "watch on a protected field is a probe too");

    // Stripped from object and original for everyone but master, whatever `keys` asks for.
    let mut anonymous = subscriber(&app, None, false, json!({})).await;
    let (mut projected, _) = connect(&app, None, false).await;
    projected.send(json!({"op": "subscribe", "requestId": 1, "query": {"className": "docs", "where": {}, "keys": ["body", "secret_note"]}})).await;
    assert_eq!(projected.recv().await["op"], "subscribed");
    let mut master = subscriber(&app, None, true, json!({})).await;
    app.db.execute("insert into docs (id, body, secret_note) values (1, 'b', 's1')").await;
    app.db.execute("update docs set secret_note = 's2', body = 'b2' where id = 1").await;
    for client in [&mut anonymous, &mut projected] {
        let create = client.expect_event("create").await;
        assert_eq!(create["object"]["body"], "b");
        assert!(create["object"].get("secret_note").is_none(), "{create}");
        let update = client.expect_event("update").await;
        assert!(
            update["object"].get("secret_note").is_none() && update["original"].get("secret_note").is_none(),
            "{update}"
        );
    }
    assert_eq!(master.expect_event("create").await["object"]["secret_note"], "s1");

    // The same rules over SSE: 403 with the code, and stripped objects.
    let mut refused = SseClient::subscribe(app.port, "members", &json!({}), "", &[]).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json_body().await["code"], 101);
    let mut probe = SseClient::subscribe(app.port, "docs", &json!({"secret_note": "s2"}), "", &[]).await;
    assert_eq!(probe.status, 403);
    assert_eq!(probe.json_body().await, json!({"code": 119, "error": "Permission denied"}));
    let mut sse = SseClient::subscribe(app.port, "docs", &json!({}), "", &[]).await;
    sse.expect("subscribed").await;
    app.db.execute("insert into docs (id, body, secret_note) values (2, 'b', 's')").await;
    assert!(sse.expect("create").await.json()["object"].get("secret_note").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_reported_and_a_fresh_one_resumes_without_loss() {
    let app = spawn(|_| {}).await;
    let (mut client, reply) = connect(&app, None, false).await;
    assert_eq!(reply["op"], "connected");
    let short = user_token("bob", &[], 2);
    let subscribe = |token: &str| json!({"op": "subscribe", "requestId": 5, "query": {"className": "docs", "where": {}}, "sessionToken": token});
    client.send(subscribe(&short)).await;
    assert_eq!(client.recv().await["op"], "subscribed");
    app.db.execute(r#"insert into docs (id, body, "ACL") values (1, 'mine', '{"bob": {"read": true}}')"#).await;
    assert_eq!(client.expect_event("create").await["object"]["objectId"], "1");

    // The token expires: the client is told (not left in silence), and nothing more arrives.
    let error = client.recv_within(Duration::from_secs(6)).await.expect("an error frame at expiry");
    assert_eq!(
        (error["op"].as_str(), error["code"].as_i64(), error["requestId"].as_i64()),
        (Some("error"), Some(209), Some(5)),
        "{error}"
    );
    assert_eq!(error["error"], "Session token is expired.");
    app.db.execute(r#"insert into docs (id, body, "ACL") values (2, 'missed', '{"bob": {"read": true}}'), (3, 'public', null)"#).await;
    client.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(app.health().await["subscriptions"], 0);

    // A fresh token for the same requestId: the changes made meanwhile, then live again.
    client.send(subscribe(&user_token("bob", &[], 600))).await;
    assert_eq!(ids(&mut client, "create", 2).await, ["2", "3"]);
    assert_eq!(client.recv().await["op"], "subscribed");
    app.db.execute(r#"insert into docs (id, body, "ACL") values (4, 'live', '{"bob": {"read": true}}')"#).await;
    assert_eq!(ids(&mut client, "create", 1).await, ["4"]);
    client.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_session_is_reported_within_the_cache_lifetime() {
    let app = spawn(|config| {
        config.sessions.cache_ttl_ms = 300;
        config.sessions.negative_ttl_ms = 300;
    })
    .await;
    app.db.execute("insert into livegate.sessions (token, user_id) values ('s1', 'bob')").await;
    let mut bob = subscriber(&app, Some("s1"), false, json!({})).await;
    app.db.execute(r#"insert into docs (id, body, "ACL") values (1, 'x', '{"bob": {"read": true}}')"#).await;
    bob.expect_event("create").await;
    app.db.execute("delete from livegate.sessions where token = 's1'").await;
    let error = bob.recv_within(Duration::from_secs(3)).await.expect("revocation is reported");
    assert_eq!((error["code"].as_i64(), error["requestId"].as_i64()), (Some(209), Some(1)), "{error}");
    app.db.execute(r#"insert into docs (id, body, "ACL") values (2, 'y', '{"bob": {"read": true}}')"#).await;
    bob.expect_silence(Duration::from_millis(400)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_tokens_travel_by_header_cookie_or_url_and_lapse_with_an_error_event() {
    let app = spawn(|_| {}).await;
    app.db.execute("insert into livegate.sessions (token, user_id) values ('s1', 'bob')").await;
    let where_ = json!({});
    let mut by_header = SseClient::subscribe(app.port, "docs", &where_, "", &[("Authorization", "Bearer s1")]).await;
    let mut by_cookie =
        SseClient::subscribe(app.port, "docs", &where_, "", &[("Cookie", "theme=dark; livegate_token=s1")]).await;
    let mut by_url = SseClient::subscribe(app.port, "docs", &where_, "&sessionToken=s1", &[]).await;
    let mut anonymous = SseClient::subscribe(app.port, "docs", &where_, "", &[]).await;
    for sse in [&mut by_header, &mut by_cookie, &mut by_url, &mut anonymous] {
        assert_eq!(sse.status, 200);
        sse.expect("subscribed").await;
    }
    app.db.execute(r#"insert into docs (id, body, "ACL") values (1, 'bob only', '{"bob": {"read": true}}'), (2, 'public', null)"#).await;
    for sse in [&mut by_header, &mut by_cookie, &mut by_url] {
        assert_eq!(sse.expect("create").await.json()["object"]["objectId"], "1");
        assert_eq!(sse.expect("create").await.json()["object"]["objectId"], "2");
    }
    assert_eq!(anonymous.expect("create").await.json()["object"]["objectId"], "2");

    let mut refused = SseClient::subscribe(app.port, "docs", &where_, "", &[("Authorization", "Bearer nope")]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json_body().await["code"], 209);

    // A JWT that lapses mid-stream: an error event whose id is where delivery stopped, then the
    // end of the stream; a fresh token from that id loses nothing.
    let short = user_token("bob", &[], 2);
    let mut lapsing =
        SseClient::subscribe(app.port, "docs", &where_, "", &[("Authorization", &format!("Bearer {short}"))]).await;
    lapsing.expect("subscribed").await;
    let error = lapsing.next_event_within(Duration::from_secs(6)).await.expect("an error event at expiry");
    assert_eq!(error.name(), "error");
    assert_eq!(error.json()["code"], 209);
    let stopped = error.id();
    assert!(lapsing.next_event_within(Duration::from_millis(500)).await.is_none() && lapsing.ended, "the stream ends");
    app.db.execute(r#"insert into docs (id, body, "ACL") values (3, 'missed', '{"bob": {"read": true}}')"#).await;
    app.wait_until_published().await;
    let fresh = user_token("bob", &[], 600);
    let mut resumed = SseClient::subscribe(
        app.port,
        "docs",
        &where_,
        &format!("&since={}", encode(&stopped)),
        &[("Authorization", &format!("Bearer {fresh}"))],
    )
    .await;
    assert_eq!(resumed.expect("create").await.json()["object"]["objectId"], "3");
    resumed.expect("subscribed").await;
}

/// A JWT for `user` whose `exp` is `offset_secs` from now (negative: already past).
fn token_expiring(user: &str, offset_secs: i64) -> String {
    let exp = i64::try_from(now()).unwrap() + offset_secs;
    hs256(json!({"sub": user, "exp": exp, "aud": "livegate"}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_is_accepted_until_its_leeway_runs_out() {
    let app = spawn(|config| config.jwt.leeway_secs = 30).await;
    // exp 20 s ago, 30 s of leeway: accepted on both transports, and its identity served.
    let late = token_expiring("bob", -20);
    let mut bob = subscriber(&app, Some(&late), false, json!({})).await;
    let bearer = format!("Bearer {late}");
    let mut sse = SseClient::subscribe(app.port, "docs", &json!({}), "", &[("Authorization", &bearer)]).await;
    assert_eq!(sse.status, 200);
    sse.expect("subscribed").await;
    app.db.execute(r#"insert into docs (id, body, "ACL") values (1, 'bob only', '{"bob": {"read": true}}')"#).await;
    assert_eq!(ids(&mut bob, "create", 1).await, ["1"]);
    assert_eq!(sse.expect("create").await.json()["object"]["objectId"], "1");

    // exp 40 s ago: past the leeway too.
    let too_late = token_expiring("bob", -40);
    let (_client, reply) = connect(&app, Some(&too_late), false).await;
    assert_eq!((reply["op"].as_str(), reply["code"].as_i64()), (Some("error"), Some(209)), "{reply}");
    assert_eq!(reply["error"], "Session token is expired.");
    let bearer = format!("Bearer {too_late}");
    let mut refused = SseClient::subscribe(app.port, "docs", &json!({}), "", &[("Authorization", &bearer)]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json_body().await["code"], 209);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_within_its_leeway_lapses_when_the_leeway_runs_out() {
    let app = spawn(|config| {
        config.jwt.leeway_secs = 4;
        // No periodic re-check during the test: only the one at the token's expiry can fire.
        config.sessions.cache_ttl_ms = 60_000;
    })
    .await;
    // exp a second ago: accepted for two to three more seconds.
    let lapsing = token_expiring("bob", -1);
    let (mut client, reply) = connect(&app, None, false).await;
    assert_eq!(reply["op"], "connected");
    let query = json!({"className": "docs", "where": {}});
    client.send(json!({"op": "subscribe", "requestId": 5, "query": query, "sessionToken": lapsing})).await;
    let reply = client.recv().await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    let bearer = format!("Bearer {lapsing}");
    let mut sse = SseClient::subscribe(app.port, "docs", &json!({}), "", &[("Authorization", &bearer)]).await;
    assert_eq!(sse.status, 200);
    sse.expect("subscribed").await;
    app.db.execute(r#"insert into docs (id, body, "ACL") values (1, 'bob only', '{"bob": {"read": true}}')"#).await;
    assert_eq!(ids(&mut client, "create", 1).await, ["1"]);
    assert_eq!(sse.expect("create").await.json()["object"]["objectId"], "1");

    // Re-checked when the leeway runs out, and suspended with its requestId.
    let error = client.recv_within(Duration::from_secs(5)).await.expect("an error frame once the leeway has passed");
    assert_eq!(
        (error["op"].as_str(), error["code"].as_i64(), error["requestId"].as_i64()),
        (Some("error"), Some(209), Some(5)),
        "{error}"
    );
    assert_eq!(error["error"], "Session token is expired.");
    let error = sse.next_event_within(Duration::from_secs(3)).await.expect("an error event once the leeway has passed");
    assert_eq!((error.name(), error.json()["code"].as_i64()), ("error", Some(209)));
    app.db.execute(r#"insert into docs (id, body, "ACL") values (2, 'missed', '{"bob": {"read": true}}')"#).await;
    client.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(app.health().await["subscriptions"], 0);
}

/// A snapshot holds exactly the rows the subscriber may read, by the same ACL decision as live
/// events, on both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_hold_only_the_rows_the_subscriber_may_read() {
    let app = spawn(|_| {}).await;
    app.db.execute("insert into livegate.role_inheritance values ('Mod', 'Admin')").await;
    app.db
        .execute(
            r#"insert into docs (id, body, "ACL") values
               (1, 'public', null),
               (2, 'public read', '{"*": {"read": true}}'),
               (3, 'alice', '{"alice": {"read": true}}'),
               (4, 'admins', '{"role:Admin": {"read": true}}'),
               (5, 'nobody', '{}')"#,
        )
        .await;
    app.wait_until_published().await;
    let cases = [
        (Some(user_token("alice", &[], 600)), false, vec!["1", "2", "3"]),
        (Some(user_token("mo", &["Mod"], 600)), false, vec!["1", "2", "4"]),
        (None, false, vec!["1", "2"]),
        (None, true, vec!["1", "2", "3", "4", "5"]),
    ];
    for (token, master, expected) in cases {
        let (mut ws, reply) = connect(&app, token.as_deref(), master).await;
        assert_eq!(reply["op"], "connected");
        ws.send(
            json!({"op": "subscribe", "requestId": 1, "snapshot": true, "query": {"className": "docs", "where": {}}}),
        )
        .await;
        let result = ws.recv().await;
        let mut ids: Vec<&str> =
            result["results"].as_array().unwrap().iter().map(|o| o["objectId"].as_str().unwrap()).collect();
        ids.sort();
        assert_eq!(ids, expected, "token {token:?} master {master}: {result}");
        if let Some(token) = &token {
            let bearer = format!("Bearer {token}");
            let mut sse =
                SseClient::get(app.port, "/events/docs?snapshot=true", &[("Authorization", bearer.as_str())]).await;
            let snapshot = sse.expect("snapshot").await;
            let mut ids: Vec<String> = snapshot.json()["objects"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["objectId"].as_str().unwrap().to_string())
                .collect();
            ids.sort();
            assert_eq!(ids, expected, "the same over SSE");
        }
    }
}
