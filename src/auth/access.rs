//! Who a subscriber is and whether it may read a row image: the pure types fan-out decides with.
//! Imports nothing from the crate, so the hub and the row mapping depend on this alone.

use std::time::SystemTime;

use serde_json::Value;

/// The identity a subscription is evaluated with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Presented the configured master key: sees every row.
    pub master: bool,
    pub user_id: Option<String>,
    /// Role names without the `role:` prefix, inheritance already resolved.
    pub roles: Vec<String>,
    /// When the token this identity came from stops being valid.
    pub expires_at: Option<SystemTime>,
}

/// Read access of one row image. `None` on a row means public.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadAcl {
    pub public: bool,
    pub users: Vec<String>,
    pub roles: Vec<String>,
}

/// A role's name as livegate keeps it: Parse writes `role:<name>` in ACLs, tokens and session
/// rows sometimes do, so the prefix is dropped wherever a role name comes in.
pub fn role_name(name: &str) -> &str {
    name.strip_prefix("role:").unwrap_or(name)
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
        } else if who.starts_with("role:") {
            self.roles.push(role_name(who).to_string());
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
    fn role_names_lose_their_prefix_once() {
        assert_eq!(role_name("role:Admin"), "Admin");
        assert_eq!(role_name("Admin"), "Admin");
        assert_eq!(role_name("role:role:x"), "role:x");
        assert_eq!(ReadAcl::from_rperm(&json!(["role:A", "B"])).roles, vec!["A"]);
    }
}
