//! Session tokens and role inheritance against a real PostgreSQL: the migration, the caches
//! (positive, negative, coalescing, expiry), database failures, the role graph's reloads, and the
//! documented queries for Parse Server's own tables.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use livegate::auth::roles::RoleGraph;
use livegate::auth::sessions::{SessionConfig, SessionStore};
use livegate::auth::{Claims, TokenError};
use sqlx::postgres::PgPoolOptions;

use crate::support::TestDb;

async fn migrated() -> TestDb {
    let db = TestDb::create().await;
    livegate::database::migrate(&db.pool).await.expect("migrations apply");
    db
}

/// Every lookup through `counted_session` leaves a row in `lookups`, after `delay` seconds.
const COUNTING: &str = "
    create table lookups (at timestamptz not null default clock_timestamp());
    create function counted_session(t text, delay float8)
    returns table (user_id text, roles text[], expires_at timestamptz)
    language sql as $$
        insert into lookups default values;
        select pg_sleep(delay);
        select s.user_id, s.roles, s.expires_at from livegate.sessions s where s.token = t;
    $$";

async fn counting(db: &TestDb) {
    db.execute(COUNTING).await;
}

async fn lookups(db: &TestDb) -> i64 {
    sqlx::query_scalar("select count(*) from lookups").fetch_one(&db.pool).await.unwrap()
}

fn counted(delay_seconds: f64, ttl_ms: u64, negative_ttl_ms: u64) -> SessionConfig {
    SessionConfig {
        query: format!("select * from counted_session($1, {delay_seconds})"),
        cache_ttl_ms: ttl_ms,
        negative_ttl_ms,
        ..SessionConfig::default()
    }
}

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn unknown() -> TokenError {
    TokenError::Invalid("unknown session token".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_rerun_as_a_no_op() {
    let db = migrated().await;
    livegate::database::migrate(&db.pool).await.expect("a second run is a no-op");
    let versions: Vec<i32> = sqlx::query_scalar("select version from livegate.migrations order by version")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
    db.execute("insert into livegate.sessions (token, user_id) values ('t', 'u')").await;
    db.execute("insert into livegate.role_inheritance values ('Moderator', 'Admin')").await;
    let roles: Vec<String> =
        sqlx::query_scalar("select unnest(roles) from livegate.sessions").fetch_all(&db.pool).await.unwrap();
    assert!(roles.is_empty(), "roles default to the empty array");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_resolves_to_its_claims() {
    let db = migrated().await;
    db.execute(
        "insert into livegate.sessions (token, user_id, roles, expires_at) values
            ('tok-a', 'u1', '{Moderator,role:Admin}', '2100-01-01T00:00:00Z'),
            ('tok-b', 'u2', '{}', null),
            ('tok-c', 'u3', '{}', 'infinity'),
            ('tok-d', 'u4', '{}', '-infinity')",
    )
    .await;
    let store = SessionStore::new(db.pool.clone(), &SessionConfig::default());
    let year_2100 = SystemTime::UNIX_EPOCH + Duration::from_secs(4_102_444_800);
    assert_eq!(
        store.resolve("tok-a").await,
        Ok(Claims { user_id: "u1".into(), roles: names(&["Moderator", "Admin"]), expires_at: Some(year_2100) })
    );
    assert_eq!(store.resolve("tok-b").await, Ok(Claims { user_id: "u2".into(), roles: vec![], expires_at: None }));
    assert_eq!(store.resolve("tok-c").await, Ok(Claims { user_id: "u3".into(), roles: vec![], expires_at: None }));
    assert_eq!(store.resolve("tok-d").await, Err(TokenError::Expired));

    // roles may be null and expires_at left out; a null user is no session.
    let config = SessionConfig {
        query: "select case when token = 'tok-b' then null else user_id end as user_id, null::text[] as roles
                from livegate.sessions where token = $1"
            .into(),
        ..SessionConfig::default()
    };
    let store = SessionStore::new(db.pool.clone(), &config);
    assert_eq!(store.resolve("tok-a").await, Ok(Claims { user_id: "u1".into(), roles: vec![], expires_at: None }));
    assert_eq!(store.resolve("tok-b").await, Err(TokenError::Invalid("session has no user".into())));

    let store = SessionStore::new(
        db.pool.clone(),
        &SessionConfig {
            query: "select user_id from livegate.sessions where token <> $1".into(),
            ..Default::default()
        },
    );
    assert_eq!(
        store.resolve("nothing-like-it").await,
        Err(TokenError::Invalid("session token matches more than one session".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_is_refused_and_negative_cached() {
    let db = migrated().await;
    counting(&db).await;
    let store = SessionStore::new(db.pool.clone(), &counted(0.0, 60_000, 500));

    assert_eq!(store.resolve("later").await, Err(unknown()));
    assert_eq!(store.resolve("later").await, Err(unknown()));
    assert_eq!(lookups(&db).await, 1, "the second refusal came from the cache");

    db.execute("insert into livegate.sessions (token, user_id) values ('later', 'u1')").await;
    assert_eq!(store.resolve("later").await, Err(unknown()), "still negative-cached");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(store.resolve("later").await.map(|c| c.user_id), Ok("u1".into()));
    assert_eq!(lookups(&db).await, 2);

    // Refused without a query.
    assert!(matches!(store.resolve("").await, Err(TokenError::Invalid(_))));
    assert!(matches!(store.resolve(&"x".repeat(4097)).await, Err(TokenError::Invalid(_))));
    assert_eq!(lookups(&db).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_token_is_cached_until_its_ttl_passes() {
    let db = migrated().await;
    counting(&db).await;
    db.execute("insert into livegate.sessions (token, user_id) values ('tok', 'u1')").await;
    let store = SessionStore::new(db.pool.clone(), &counted(0.0, 500, 60_000));

    assert_eq!(store.resolve("tok").await.map(|c| c.user_id), Ok("u1".into()));
    db.execute("delete from livegate.sessions where token = 'tok'").await;
    assert_eq!(store.resolve("tok").await.map(|c| c.user_id), Ok("u1".into()), "revocation not seen yet");
    assert_eq!(lookups(&db).await, 1);

    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(store.resolve("tok").await, Err(unknown()), "revocation seen once the TTL passed");
    assert_eq!(lookups(&db).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_of_one_token_share_one_query() {
    let db = migrated().await;
    counting(&db).await;
    db.execute("insert into livegate.sessions (token, user_id) values ('tok', 'u1')").await;
    let store = SessionStore::new(db.pool.clone(), &counted(0.2, 60_000, 60_000));

    let results = join_all((0..50).map(|_| store.resolve("tok"))).await;
    assert!(results.iter().all(|r| r.as_ref().is_ok_and(|c| c.user_id == "u1")), "{results:?}");
    assert_eq!(lookups(&db).await, 1);

    // Also across tasks on different threads, and for a token that does not exist.
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.resolve("nope").await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Err(unknown()));
    }
    assert_eq!(lookups(&db).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_whose_callers_gave_up_still_completes_and_is_cached() {
    let db = migrated().await;
    counting(&db).await;
    db.execute("insert into livegate.sessions (token, user_id) values ('tok', 'u1')").await;
    let store = SessionStore::new(db.pool.clone(), &counted(0.3, 60_000, 60_000));

    let gave_up = tokio::time::timeout(Duration::from_millis(50), store.resolve("tok")).await;
    assert!(gave_up.is_err(), "the caller was cancelled mid-query");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let started = tokio::time::Instant::now();
    assert_eq!(store.resolve("tok").await.map(|c| c.user_id), Ok("u1".into()));
    assert!(started.elapsed() < Duration::from_millis(200), "answered from the cache");
    assert_eq!(lookups(&db).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_refused() {
    let db = migrated().await;
    counting(&db).await;
    db.execute(
        "insert into livegate.sessions (token, user_id, expires_at) values ('old', 'u1', now() - interval '1 minute')",
    )
    .await;
    let store = SessionStore::new(db.pool.clone(), &counted(0.0, 60_000, 60_000));
    assert_eq!(store.resolve("old").await, Err(TokenError::Expired));
    assert_eq!(store.resolve("old").await, Err(TokenError::Expired));
    assert_eq!(lookups(&db).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_session_expires_at_its_expiry_not_at_the_ttl() {
    let db = migrated().await;
    counting(&db).await;
    db.execute(
        "insert into livegate.sessions (token, user_id, expires_at)
         values ('soon', 'u1', now() + interval '600 milliseconds')",
    )
    .await;
    let store = SessionStore::new(db.pool.clone(), &counted(0.0, 60_000, 60_000));
    assert_eq!(store.resolve("soon").await.map(|c| c.user_id), Ok("u1".into()));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(store.resolve("soon").await, Err(TokenError::Expired));
    assert_eq!(lookups(&db).await, 1, "decided from the cached entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_makes_tokens_unavailable_not_invalid() {
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://postgres@127.0.0.1:1/livegate")
        .unwrap();
    let store = SessionStore::new(pool, &SessionConfig::default());
    for _ in 0..2 {
        let started = tokio::time::Instant::now();
        assert!(matches!(store.resolve("tok").await, Err(TokenError::Unavailable(_))));
        // Each call tried again (waited for the pool) rather than answering from a cache.
        assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    }
    let graph = store.role_graph().await;
    assert_eq!(graph.closure(&names(&["A"])), names(&["A"]), "an empty graph after a failed first load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lookup_is_not_cached() {
    let db = migrated().await;
    let config = SessionConfig { query: "select * from session_later($1)".into(), ..SessionConfig::default() };
    let store = SessionStore::new(db.pool.clone(), &config);
    assert_eq!(store.resolve("tok").await, Err(TokenError::Unavailable("session lookup failed".into())));

    db.execute(
        "create function session_later(t text) returns table (user_id text) language sql
         as $$ select 'u9' where t = 'tok' $$",
    )
    .await;
    assert_eq!(store.resolve("tok").await.map(|c| c.user_id), Ok("u9".into()), "retried at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_graph_is_reloaded_after_its_ttl_and_survives_failures() {
    let db = migrated().await;
    db.execute("insert into livegate.role_inheritance values ('A', 'B')").await;
    let config = SessionConfig { cache_ttl_ms: 400, ..SessionConfig::default() };
    let store = SessionStore::new(db.pool.clone(), &config);

    let first = store.role_graph().await;
    assert_eq!(first.closure(&names(&["A"])), names(&["A", "B"]));
    db.execute("insert into livegate.role_inheritance values ('B', 'role:C')").await;
    assert!(Arc::ptr_eq(&first, &store.role_graph().await), "cached within the TTL");

    tokio::time::sleep(Duration::from_millis(600)).await;
    let second = store.role_graph().await;
    assert_eq!(second.closure(&names(&["A"])), names(&["A", "B", "C"]));

    // A failed reload keeps the previous graph.
    db.execute("alter table livegate.role_inheritance rename to role_inheritance_gone").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(store.role_graph().await.closure(&names(&["A"])), names(&["A", "B", "C"]));

    // A failed first load gives an empty graph, and loading is tried again after the TTL.
    let fresh = SessionStore::new(db.pool.clone(), &config);
    assert_eq!(*fresh.role_graph().await, RoleGraph::default());
    db.execute("alter table livegate.role_inheritance_gone rename to role_inheritance").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(fresh.role_graph().await.closure(&names(&["B"])), names(&["B", "C"]));
}

/// The `[sessions]` queries documented in src/auth/sessions.rs for Parse Server's tables.
const PARSE_QUERY: &str = r#"select split_part(s."_p_user", '$', 2) as user_id,
       array(select r."name"
             from "_Join:users:_Role" m join "_Role" r on r."objectId" = m."owningId"
             where m."relatedId" = split_part(s."_p_user", '$', 2)) as roles,
       s."expiresAt" as expires_at
from "_Session" s
where s."sessionToken" = $1"#;

const PARSE_ROLES_QUERY: &str = r#"select child."name" as role, parent."name" as inherits
from "_Join:roles:_Role" j
join "_Role" child on child."objectId" = j."relatedId"
join "_Role" parent on parent."objectId" = j."owningId""#;

/// Shaped like Parse Server's tables: `_p_user` as Parse's Mongo layout stores the pointer and
/// `user` as its PostgreSQL adapter does, so both documented query forms run on it.
const PARSE_TABLES: &str = r#"
    create table "_Role" ("objectId" varchar(120) primary key, "name" text, "_rperm" text[]);
    create table "_Join:users:_Role" (
        "relatedId" varchar(120), "owningId" varchar(120), primary key ("relatedId", "owningId"));
    create table "_Join:roles:_Role" (
        "relatedId" varchar(120), "owningId" varchar(120), primary key ("relatedId", "owningId"));
    create table "_Session" (
        "objectId" varchar(120) primary key, "sessionToken" text, "_p_user" text, "user" text,
        "expiresAt" timestamptz, "createdWith" jsonb);

    insert into "_Role" ("objectId", "name") values
        ('rAdmin', 'Admin'), ('rMod', 'Moderator'), ('rHelp', 'Helper'), ('rOther', 'Other');
    -- Admin's roles relation contains Moderator, Moderator's contains Helper: Helpers inherit
    -- Moderator and, through it, Admin.
    insert into "_Join:roles:_Role" ("owningId", "relatedId") values ('rAdmin', 'rMod'), ('rMod', 'rHelp');
    insert into "_Join:users:_Role" ("relatedId", "owningId") values
        ('alice', 'rHelp'), ('bob', 'rAdmin'), ('bob', 'rOther');
    insert into "_Session" ("objectId", "sessionToken", "_p_user", "user", "expiresAt") values
        ('s1', 'r:alice', '_User$alice', 'alice', now() + interval '1 year'),
        ('s2', 'r:bob', '_User$bob', 'bob', null),
        ('s3', 'r:carol', '_User$carol', 'carol', now() + interval '1 year'),
        ('s4', 'r:dave', '_User$dave', 'dave', now() - interval '1 day'),
        ('s5', 'r:nobody', null, null, null)"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_parse_queries_resolve_users_and_inherited_roles() {
    let db = migrated().await;
    db.execute(PARSE_TABLES).await;
    let documented = include_str!("../../src/auth/sessions.rs");
    for line in PARSE_QUERY.lines().chain(PARSE_ROLES_QUERY.lines()) {
        assert!(documented.contains(&format!("//! {line}\n")), "sessions.rs documents {line:?}");
    }
    let adapter_query = PARSE_QUERY.replace(r#"split_part(s."_p_user", '$', 2)"#, r#"s."user""#);

    for query in [PARSE_QUERY.to_string(), adapter_query] {
        let config = SessionConfig { query, roles_query: PARSE_ROLES_QUERY.into(), ..SessionConfig::default() };
        let store = SessionStore::new(db.pool.clone(), &config);
        let graph = store.role_graph().await;
        let identity = |claims: Claims| (claims.user_id, graph.closure(&claims.roles));

        let alice = store.resolve("r:alice").await.expect("alice's session");
        assert_eq!(alice.roles, names(&["Helper"]), "direct roles only");
        assert!(alice.expires_at.is_some());
        assert_eq!(identity(alice), ("alice".into(), names(&["Admin", "Helper", "Moderator"])));
        let bob = store.resolve("r:bob").await.expect("bob's session");
        assert_eq!(bob.expires_at, None);
        assert_eq!(identity(bob), ("bob".into(), names(&["Admin", "Other"])));
        assert_eq!(store.resolve("r:carol").await.map(identity), Ok(("carol".into(), vec![])));
        assert_eq!(store.resolve("r:dave").await, Err(TokenError::Expired));
        assert_eq!(store.resolve("r:nobody").await, Err(TokenError::Invalid("session has no user".into())));
        assert_eq!(store.resolve("r:unknown").await, Err(unknown()));
    }
}
