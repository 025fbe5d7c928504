//! Who a subscriber is and what it may read: Parse key pairs at connect, tokens turned into
//! identities ([`Authenticator`]: JWTs verified in memory, opaque session tokens looked up in
//! PostgreSQL and cached, roles expanded through the inheritance graph), class rules, and row
//! read access (Parse ACL JSON or `_rperm`), decided in memory for every change.

pub mod jwt;
pub mod roles;
pub mod rules;
pub mod sessions;

use std::time::Duration;

use serde_json::Value;

use crate::config::KeyPairs;
use crate::protocol::ClientKeys;
use jwt::JwtVerifier;
use sessions::SessionStore;

/// The longest a token lookup may hold up a client's frames before it counts as unavailable.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Turns a presented token into an [`Identity`]. A token shaped like a JWT is verified with the
/// configured keys when JWT is enabled; anything else is an opaque session token.
#[derive(Debug, Clone)]
pub struct Authenticator {
    jwt: Option<std::sync::Arc<JwtVerifier>>,
    sessions: SessionStore,
}

impl Authenticator {
    pub fn new(jwt: Option<JwtVerifier>, sessions: SessionStore) -> Authenticator {
        Authenticator { jwt: jwt.map(std::sync::Arc::new), sessions }
    }

    pub async fn identify(&self, token: &str) -> Result<Identity, TokenError> {
        let claims = match &self.jwt {
            Some(verifier) if jwt::looks_like_jwt(token) => verifier.verify(token)?,
            _ => match tokio::time::timeout(LOOKUP_TIMEOUT, self.sessions.resolve(token)).await {
                Ok(result) => result?,
                Err(_) => return Err(TokenError::Unavailable("session lookup timed out".into())),
            },
        };
        if claims.expires_at.is_some_and(|at| at <= std::time::SystemTime::now()) {
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

    /// Checks a token in use again. An identity that cannot be checked right now (database
    /// down) is kept: an outage does not count against the client. The master flag is kept.
    pub async fn recheck(&self, token: &str, current: &Identity) -> Result<Identity, TokenError> {
        match self.identify(token).await {
            Ok(identity) => Ok(Identity { master: current.master, ..identity }),
            Err(TokenError::Unavailable(why)) => {
                tracing::warn!(why, "cannot re-check a token; keeping its identity for now");
                Ok(current.clone())
            }
            Err(e) => Err(e),
        }
    }
}

/// When a token in use should next be checked: every `every`, and at its expiry — but not
/// sooner than a second after the last check, since a token within its verifier's clock leeway
/// stays valid for a little while past its expiry.
pub fn next_check(identity: &Identity, last: tokio::time::Instant, every: Duration) -> tokio::time::Instant {
    let due = last + every;
    match identity.expires_at {
        None => due,
        Some(expires_at) => {
            let left = expires_at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO);
            due.min((tokio::time::Instant::now() + left).max(last + Duration::from_secs(1)))
        }
    }
}

/// The identity a subscription is evaluated with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Presented the configured master key: sees every row.
    pub master: bool,
    pub user_id: Option<String>,
    /// Role names without the `role:` prefix, inheritance already resolved.
    pub roles: Vec<String>,
    /// When the token this identity came from stops being valid.
    pub expires_at: Option<std::time::SystemTime>,
}

/// What a verified token says about its bearer, before role inheritance is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    pub user_id: String,
    /// Role names without the `role:` prefix, as the token or session row lists them.
    pub roles: Vec<String>,
    /// When the token or session stops being valid, if it ever does.
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

/// Read access of one row image. `None` on a row means public.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadAcl {
    pub public: bool,
    pub users: Vec<String>,
    pub roles: Vec<String>,
}

impl ReadAcl {
    /// From Parse ACL JSON: `{"*":{"read":true},"<userId>":{"read":true},"role:<name>":{…}}`.
    /// Anything that is not an object grants nobody but the master key.
    pub fn from_parse_acl(acl: &Value) -> ReadAcl {
        let mut read = ReadAcl::default();
        for (who, grant) in acl.as_object().into_iter().flatten() {
            if grant.get("read").and_then(Value::as_bool) == Some(true) {
                read.grant(who);
            }
        }
        read
    }

    /// From Parse's `_rperm` array: `["*", "<userId>", "role:<name>"]`.
    pub fn from_rperm(rperm: &Value) -> ReadAcl {
        let mut read = ReadAcl::default();
        for who in rperm.as_array().into_iter().flatten().filter_map(Value::as_str) {
            read.grant(who);
        }
        read
    }

    fn grant(&mut self, who: &str) {
        if who == "*" {
            self.public = true;
        } else if let Some(role) = who.strip_prefix("role:") {
            self.roles.push(role.to_string());
        } else {
            self.users.push(who.to_string());
        }
    }

    pub fn allows(&self, identity: &Identity) -> bool {
        self.public
            || identity.master
            || identity.user_id.as_ref().is_some_and(|u| self.users.contains(u))
            || identity.roles.iter().any(|r| self.roles.contains(r))
    }
}

/// Whether a row image with this access may be read by `identity`.
pub fn can_read(acl: Option<&ReadAcl>, identity: &Identity) -> bool {
    acl.is_none_or(|acl| acl.allows(identity))
}

/// Outcome of the Parse key-pair check at connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    Accepted { master: bool },
    Refused,
}

/// Parse's rule: with no key pairs configured every connect is accepted; otherwise some
/// configured pair must match exactly. Master access needs the configured master key.
pub fn check_keys(configured: &KeyPairs, presented: &ClientKeys) -> KeyCheck {
    let pairs = [
        (&configured.javascript_key, &presented.javascript_key),
        (&configured.client_key, &presented.client_key),
        (&configured.rest_api_key, &presented.rest_api_key),
        (&configured.windows_key, &presented.windows_key),
        (&configured.master_key, &presented.master_key),
    ];
    let matches = |(want, got): &(&Option<String>, &Option<String>)| matches!((want, got), (Some(w), Some(g)) if !w.is_empty() && constant_time_eq(w, g));
    let any_configured = pairs.iter().any(|(want, _)| want.is_some());
    let master = matches(&pairs[4]);
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
    use serde_json::json;

    #[test]
    fn acl_forms() {
        let acl = ReadAcl::from_parse_acl(
            &json!({"u1": {"read": true, "write": true}, "role:Admin": {"read": true}, "u2": {"write": true}}),
        );
        let user = |id: &str| Identity { user_id: Some(id.into()), ..Identity::default() };
        assert!(acl.allows(&user("u1")));
        assert!(!acl.allows(&user("u2")));
        assert!(!acl.allows(&Identity::default()));
        assert!(acl.allows(&Identity { roles: vec!["Admin".into()], ..Identity::default() }));
        assert!(acl.allows(&Identity { master: true, ..Identity::default() }));
        assert!(ReadAcl::from_rperm(&json!(["*"])).allows(&Identity::default()));
        assert!(!ReadAcl::from_parse_acl(&json!("garbage")).allows(&Identity::default()));
        assert!(can_read(None, &Identity::default()));
    }

    #[test]
    fn key_pairs() {
        let none = KeyPairs::default();
        let presented = ClientKeys { master_key: Some("m".into()), ..ClientKeys::default() };
        assert_eq!(check_keys(&none, &presented), KeyCheck::Accepted { master: false });
        let configured =
            KeyPairs { javascript_key: Some("js".into()), master_key: Some("m".into()), ..KeyPairs::default() };
        assert_eq!(check_keys(&configured, &presented), KeyCheck::Accepted { master: true });
        let js = ClientKeys { javascript_key: Some("js".into()), ..ClientKeys::default() };
        assert_eq!(check_keys(&configured, &js), KeyCheck::Accepted { master: false });
        let wrong = ClientKeys { javascript_key: Some("nope".into()), ..ClientKeys::default() };
        assert_eq!(check_keys(&configured, &wrong), KeyCheck::Refused);
        assert_eq!(check_keys(&configured, &ClientKeys::default()), KeyCheck::Refused);
    }
}
