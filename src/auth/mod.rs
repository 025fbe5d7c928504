//! Who a subscriber is and what it may read: Parse key pairs at connect, tokens turned into
//! identities ([`Authenticator`]: JWTs verified in memory, opaque session tokens looked up in
//! PostgreSQL and cached, roles expanded through the inheritance graph), class rules, and row
//! read access (Parse ACL JSON or `_rperm`), decided in memory for every change.

pub mod access;
pub mod jwt;
pub mod roles;
pub mod rules;
pub mod sessions;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::protocol::KeyPairs;
use crate::telemetry::metrics::{TokenKind, TokenOutcome};
use crate::telemetry::Metrics;
pub use access::{can_read, Identity, ReadAcl};
use jwt::JwtVerifier;
use sessions::SessionStore;

/// The longest a token lookup may hold up a client's frames before it counts as unavailable.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// The shortest gap between two checks of the tokens in use, so that a resolver that keeps
/// accepting an identity already past its expiry cannot turn the re-check into a busy loop.
const MIN_CHECK_GAP: Duration = Duration::from_millis(100);

/// Turns presented tokens into identities: the seam between what holds a token (a WebSocket
/// session, an SSE stream) and what checks it ([`Authenticator`] here, a table in unit tests).
pub trait TokenResolver: Send + Sync {
    fn identify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, TokenError>>;

    /// Checks a token in use again. An identity that cannot be checked right now (database
    /// down) is kept until its own expiry: an outage does not count against the client, nor
    /// does it extend a token. The master flag is kept.
    fn recheck<'a>(&'a self, token: &'a str, current: &'a Identity) -> BoxFuture<'a, Result<Identity, TokenError>> {
        Box::pin(async move {
            match self.identify(token).await {
                Ok(identity) => Ok(Identity { master: current.master, ..identity }),
                Err(TokenError::Unavailable(_)) if lapsed(current.expires_at) => Err(TokenError::Expired),
                Err(TokenError::Unavailable(why)) => {
                    tracing::warn!(why, "cannot re-check a token; keeping its identity for now");
                    Ok(current.clone())
                }
                Err(e) => Err(e),
            }
        })
    }
}

/// Turns a presented token into an [`Identity`]. A token shaped like a JWT is verified with the
/// configured keys when JWT is enabled; anything else is an opaque session token.
#[derive(Debug, Clone)]
pub struct Authenticator {
    jwt: Option<Arc<JwtVerifier>>,
    sessions: SessionStore,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    pub fn new(jwt: Option<JwtVerifier>, sessions: SessionStore, metrics: Arc<Metrics>) -> Authenticator {
        Authenticator { jwt: jwt.map(Arc::new), sessions, metrics }
    }

    /// [`Authenticator::resolve`], counted by kind and outcome.
    async fn resolve_counted(&self, token: &str) -> Result<Identity, TokenError> {
        let kind = match &self.jwt {
            Some(_) if jwt::looks_like_jwt(token) => TokenKind::Jwt,
            _ => TokenKind::Session,
        };
        let resolved = self.resolve(token).await;
        let outcome = match &resolved {
            Ok(_) => TokenOutcome::Accepted,
            Err(TokenError::Invalid(_)) => TokenOutcome::Invalid,
            Err(TokenError::Expired) => TokenOutcome::Expired,
            Err(TokenError::Unavailable(_)) => TokenOutcome::Unavailable,
        };
        self.metrics.token_checked(kind, outcome);
        resolved
    }

    async fn resolve(&self, token: &str) -> Result<Identity, TokenError> {
        let claims = match &self.jwt {
            Some(verifier) if jwt::looks_like_jwt(token) => verifier.verify(token)?,
            _ => match tokio::time::timeout(LOOKUP_TIMEOUT, self.sessions.resolve(token)).await {
                Ok(result) => result?,
                Err(_) => return Err(TokenError::Unavailable("session lookup timed out".into())),
            },
        };
        // `expires_at` already includes a JWT's leeway, so this agrees with the verifier.
        if lapsed(claims.expires_at) {
            return Err(TokenError::Expired);
        }
        let graph = match tokio::time::timeout(LOOKUP_TIMEOUT, self.sessions.role_graph()).await {
            Ok(graph) => graph,
            Err(_) => return Err(TokenError::Unavailable("role lookup timed out".into())),
        };
        Ok(Identity {
            master: false,
            user_id: Some(claims.user_id),
            roles: graph.closure(&claims.roles),
            expires_at: claims.expires_at,
        })
    }
}

impl TokenResolver for Authenticator {
    fn identify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, TokenError>> {
        Box::pin(self.resolve_counted(token))
    }
}

/// Whether an expiry (the instant a token stops being accepted) has come.
fn lapsed(expires_at: Option<std::time::SystemTime>) -> bool {
    expires_at.is_some_and(|at| at <= std::time::SystemTime::now())
}

/// When a token in use should next be checked: every `every`, and at its expiry, which for a
/// JWT already includes the clock leeway (so the check at that instant refuses it), but never
/// sooner than `MIN_CHECK_GAP` after the last check.
pub fn next_check(identity: &Identity, last: tokio::time::Instant, every: Duration) -> tokio::time::Instant {
    let due = last + every;
    match identity.expires_at {
        None => due,
        Some(expires_at) => {
            let left = expires_at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO);
            due.min((tokio::time::Instant::now() + left).max(last + MIN_CHECK_GAP))
        }
    }
}

/// What a verified token says about its bearer, before role inheritance is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    pub user_id: String,
    /// Role names without the `role:` prefix, as the token or session row lists them.
    pub roles: Vec<String>,
    /// The instant the token stops being accepted, if it ever does: for a JWT its `exp` plus the
    /// verifier's clock leeway, for a session its `expires_at` as stored (no leeway).
    pub expires_at: Option<std::time::SystemTime>,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Malformed, badly signed, unknown, revoked or otherwise unacceptable; the message says why
    /// (it is shown to the client, so it never contains key material).
    Invalid(String),
    /// Was valid once and has expired.
    Expired,
    /// Could not be checked right now (database unreachable); worth retrying.
    Unavailable(String),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Invalid(why) => write!(f, "Invalid session token: {why}"),
            TokenError::Expired => f.write_str("Session token is expired."),
            TokenError::Unavailable(why) => write!(f, "Session token cannot be checked now: {why}"),
        }
    }
}

/// Outcome of the Parse key-pair check at connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    Accepted { master: bool },
    Refused,
}

/// Parse's rule: with no key pairs configured every connect is accepted; otherwise some
/// configured pair must match exactly. Master access needs the configured master key.
pub fn check_keys(configured: &KeyPairs, presented: &KeyPairs) -> KeyCheck {
    let pairs: Vec<_> = configured.fields().into_iter().zip(presented.fields()).collect();
    let matches = |(want, got): &(&Option<String>, &Option<String>)| matches!((want, got), (Some(w), Some(g)) if !w.is_empty() && constant_time_eq(w, g));
    let any_configured = pairs.iter().any(|(want, _)| want.is_some());
    // `fields()` puts the master key last.
    let master = pairs.last().is_some_and(matches);
    if !any_configured || pairs.iter().any(matches) {
        KeyCheck::Accepted { master }
    } else {
        KeyCheck::Refused
    }
}

/// Compares secrets without an early exit that would leak how much of a guess was right.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pairs() {
        let none = KeyPairs::default();
        let presented = KeyPairs { master_key: Some("m".into()), ..KeyPairs::default() };
        assert_eq!(check_keys(&none, &presented), KeyCheck::Accepted { master: false });
        let configured =
            KeyPairs { javascript_key: Some("js".into()), master_key: Some("m".into()), ..KeyPairs::default() };
        assert_eq!(check_keys(&configured, &presented), KeyCheck::Accepted { master: true });
        let js = KeyPairs { javascript_key: Some("js".into()), ..KeyPairs::default() };
        assert_eq!(check_keys(&configured, &js), KeyCheck::Accepted { master: false });
        let wrong = KeyPairs { javascript_key: Some("nope".into()), ..KeyPairs::default() };
        assert_eq!(check_keys(&configured, &wrong), KeyCheck::Refused);
        assert_eq!(check_keys(&configured, &KeyPairs::default()), KeyCheck::Refused);
    }

    fn expiring_in(secs: i64) -> Identity {
        let now = std::time::SystemTime::now();
        let at =
            if secs >= 0 { now + Duration::from_secs(secs as u64) } else { now - Duration::from_secs(-secs as u64) };
        Identity { user_id: Some("u1".into()), expires_at: Some(at), ..Identity::default() }
    }

    #[tokio::test]
    async fn a_token_is_checked_at_its_expiry_or_every_interval() {
        let now = tokio::time::Instant::now();
        let every = Duration::from_secs(5);
        let forever = Identity { user_id: Some("u1".into()), ..Identity::default() };
        assert_eq!(next_check(&forever, now, every), now + every);
        assert_eq!(next_check(&expiring_in(60), now, every), now + every);
        // Due at the expiry itself, which for a JWT already includes the leeway.
        let due = next_check(&expiring_in(2), now, every);
        let window = now + Duration::from_millis(1900)..now + Duration::from_millis(2100);
        assert!(window.contains(&due), "{:?}", due - now);
        // Already past: right after the last check, never in a tight loop.
        assert_eq!(next_check(&expiring_in(-1), now, every), now + MIN_CHECK_GAP);
    }

    /// Resolves every token to the same outcome.
    struct Always(Result<Identity, TokenError>);

    impl TokenResolver for Always {
        fn identify<'a>(&'a self, _token: &'a str) -> BoxFuture<'a, Result<Identity, TokenError>> {
            Box::pin(async move { self.0.clone() })
        }
    }

    #[tokio::test]
    async fn an_outage_keeps_an_identity_only_until_its_expiry() {
        let down = Always(Err(TokenError::Unavailable("database down".into())));
        let valid = expiring_in(60);
        assert_eq!(down.recheck("t", &valid).await, Ok(valid.clone()));
        let forever = Identity { user_id: Some("u1".into()), ..Identity::default() };
        assert_eq!(down.recheck("t", &forever).await, Ok(forever));
        assert_eq!(down.recheck("t", &expiring_in(-1)).await, Err(TokenError::Expired));
        // A checkable token decides for itself; the master flag stays the connection's.
        let master = Identity { master: true, ..valid.clone() };
        assert_eq!(Always(Ok(valid.clone())).recheck("t", &master).await, Ok(master));
        assert_eq!(Always(Err(TokenError::Expired)).recheck("t", &valid).await, Err(TokenError::Expired));
    }
}
