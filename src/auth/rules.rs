//! Class rules from config: who may subscribe to a class, and which fields non-master clients
//! never see (nor may filter or watch on: that would let them probe the values). Pure.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::access::{role_name, Identity};
use crate::protocol::code;

/// One `[classes.<name>]` table; `[classes."*"]` applies to classes not listed.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClassRule {
    /// "anyone", "authenticated", "roles" (members of `roles`), or "master".
    pub subscribe: String,
    /// With `subscribe = "roles"`: role names (without `role:`) allowed to subscribe.
    pub roles: Vec<String>,
    /// Fields stripped from every object sent to non-master clients.
    pub protected_fields: Vec<String>,
}

impl Default for ClassRule {
    fn default() -> Self {
        ClassRule { subscribe: "anyone".into(), roles: Vec::new(), protected_fields: Vec::new() }
    }
}

/// Who may subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Audience {
    Anyone,
    Authenticated,
    Roles(Vec<String>),
    Master,
}

#[derive(Debug, Clone)]
struct Rule {
    audience: Audience,
    protected: Option<Arc<[String]>>,
}

/// Why a subscription is refused, with Parse 2026's codes and messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub code: i64,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct ClassRules {
    classes: BTreeMap<String, Rule>,
    default: Rule,
}

impl Default for ClassRules {
    fn default() -> Self {
        ClassRules { classes: BTreeMap::new(), default: Rule { audience: Audience::Anyone, protected: None } }
    }
}

impl ClassRules {
    /// Validates the `[classes]` tables; the error names the class and the problem.
    pub fn new(config: &BTreeMap<String, ClassRule>) -> Result<ClassRules, String> {
        let mut rules = ClassRules::default();
        for (class, rule) in config {
            let audience = match rule.subscribe.as_str() {
                "anyone" => Audience::Anyone,
                "authenticated" => Audience::Authenticated,
                "master" => Audience::Master,
                "roles" if rule.roles.is_empty() => {
                    return Err(format!("classes.{class}: subscribe = \"roles\" needs a non-empty roles list"))
                }
                "roles" => Audience::Roles(
                    rule.roles.iter().map(|r| role_name(r).to_string()).collect(),
                ),
                other => {
                    return Err(format!(
                        "classes.{class}: subscribe = {other:?}; expected \"anyone\", \"authenticated\", \"roles\" or \"master\""
                    ))
                }
            };
            if !rule.roles.is_empty() && !matches!(audience, Audience::Roles(_)) {
                return Err(format!("classes.{class}: roles is only used with subscribe = \"roles\""));
            }
            if let Some(bad) = rule.protected_fields.iter().find(|f| f.is_empty() || f.contains('.')) {
                return Err(format!("classes.{class}: protected field {bad:?} must be a top-level field name"));
            }
            let protected = (!rule.protected_fields.is_empty()).then(|| rule.protected_fields.clone().into());
            let parsed = Rule { audience, protected };
            if class == "*" {
                rules.default = parsed;
            } else {
                rules.classes.insert(class.clone(), parsed);
            }
        }
        Ok(rules)
    }

    fn rule(&self, class: &str) -> &Rule {
        self.classes.get(class).unwrap_or(&self.default)
    }

    /// Whether `identity` may subscribe to `class` with this `where` and `watch`.
    pub fn check(
        &self,
        class: &str,
        identity: &Identity,
        where_: &Map<String, Value>,
        watch: Option<&[String]>,
    ) -> Result<(), Denied> {
        if identity.master {
            return Ok(());
        }
        let rule = self.rule(class);
        let allowed = match &rule.audience {
            Audience::Anyone => true,
            Audience::Authenticated => {
                if identity.user_id.is_none() {
                    return Err(Denied {
                        code: code::NEEDS_AUTHENTICATION,
                        message: "Permission denied, user needs to be authenticated.".into(),
                    });
                }
                true
            }
            Audience::Roles(roles) => identity.roles.iter().any(|r| roles.contains(r)),
            Audience::Master => false,
        };
        if !allowed {
            return Err(Denied {
                code: code::FORBIDDEN,
                message: format!("Permission denied for action find on class {class}."),
            });
        }
        if let Some(protected) = &rule.protected {
            let mut fields = crate::query::referenced_fields(where_);
            fields.extend(watch.into_iter().flatten().map(|w| w.split('.').next().unwrap_or(w).to_string()));
            if fields.iter().any(|f| protected.contains(f)) {
                return Err(Denied { code: code::FORBIDDEN, message: "Permission denied".into() });
            }
        }
        Ok(())
    }

    /// Fields to strip from objects sent to `identity` (`None`: nothing to strip).
    pub fn hidden_fields(&self, class: &str, identity: &Identity) -> Option<Arc<[String]>> {
        if identity.master {
            return None;
        }
        self.rule(class).protected.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(toml: &str) -> Result<ClassRules, String> {
        let config: BTreeMap<String, ClassRule> = toml::from_str(toml).unwrap();
        ClassRules::new(&config)
    }

    fn user(id: &str, roles: &[&str]) -> Identity {
        Identity {
            user_id: Some(id.into()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..Identity::default()
        }
    }

    fn where_(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn audiences() {
        let r = rules(
            r#"
            [open]
            [members]
            subscribe = "authenticated"
            [staff]
            subscribe = "roles"
            roles = ["role:Admin", "Mod"]
            [vault]
            subscribe = "master"
            ["*"]
            subscribe = "authenticated"
            "#,
        )
        .unwrap();
        let anonymous = Identity::default();
        let master = Identity { master: true, ..Identity::default() };
        let w = Map::new();
        assert!(r.check("open", &anonymous, &w, None).is_ok());
        assert_eq!(r.check("members", &anonymous, &w, None).unwrap_err().code, 101);
        assert!(r.check("members", &user("u", &[]), &w, None).is_ok());
        assert_eq!(r.check("unlisted", &anonymous, &w, None).unwrap_err().code, 101, "the \"*\" rule applies");
        let denied = r.check("staff", &user("u", &["Other"]), &w, None).unwrap_err();
        assert_eq!(denied, Denied { code: 119, message: "Permission denied for action find on class staff.".into() });
        assert!(r.check("staff", &user("u", &["Admin"]), &w, None).is_ok());
        assert!(r.check("staff", &user("u", &["Mod"]), &w, None).is_ok());
        assert_eq!(r.check("vault", &user("u", &["Admin"]), &w, None).unwrap_err().code, 119);
        for class in ["open", "members", "staff", "vault", "unlisted"] {
            assert!(r.check(class, &master, &w, None).is_ok(), "master may subscribe to {class}");
        }
    }

    #[test]
    fn protected_fields_cannot_be_probed() {
        let r = rules("[messages]\nprotected_fields = [\"secret\"]").unwrap();
        let anonymous = Identity::default();
        let ok = where_(json!({"room": "a", "$or": [{"n": 1}]}));
        assert!(r.check("messages", &anonymous, &ok, Some(&["body".into()])).is_ok());
        for probe in [
            json!({"secret": "x"}),
            json!({"secret.inner": {"$exists": true}}),
            json!({"$or": [{"room": "a"}, {"secret": {"$regex": "^a"}}]}),
            json!({"$and": [{"$nor": [{"secret": 1}]}]}),
        ] {
            let denied = r.check("messages", &anonymous, &where_(probe.clone()), None).unwrap_err();
            assert_eq!(denied, Denied { code: 119, message: "Permission denied".into() }, "{probe}");
        }
        assert_eq!(r.check("messages", &anonymous, &Map::new(), Some(&["secret".into()])).unwrap_err().code, 119);
        assert_eq!(r.check("messages", &anonymous, &Map::new(), Some(&["secret.x".into()])).unwrap_err().code, 119);
        let master = Identity { master: true, ..Identity::default() };
        assert!(r.check("messages", &master, &where_(json!({"secret": "x"})), None).is_ok());
        assert_eq!(r.hidden_fields("messages", &anonymous).as_deref(), Some(&["secret".to_string()][..]));
        assert_eq!(r.hidden_fields("messages", &master), None);
        assert_eq!(r.hidden_fields("other", &anonymous), None);
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(rules("[a]\nsubscribe = \"everyone\"").unwrap_err().contains("classes.a"));
        assert!(rules("[a]\nsubscribe = \"roles\"").unwrap_err().contains("non-empty roles"));
        assert!(rules("[a]\nroles = [\"x\"]").unwrap_err().contains("only used with"));
        assert!(rules("[a]\nprotected_fields = [\"a.b\"]").unwrap_err().contains("top-level"));
    }
}
