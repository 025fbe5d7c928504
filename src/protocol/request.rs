//! Client → server requests. Validation mirrors Parse's `RequestSchema.js` as tv4 applies it:
//! the general schema first, then the schema of the op; the first error wins, with tv4's message
//! (required properties in schema order, then each property in the frame's key order).

use serde_json::{Map, Value};

use super::RequestId;

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Connect(Connect),
    Subscribe(Subscribe),
    /// Replace a subscription's query in place (Parse's `update` op).
    Update(Subscribe),
    Unsubscribe {
        request_id: RequestId,
    },
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Connect {
    pub application_id: String,
    pub keys: KeyPairs,
    pub session_token: Option<String>,
    pub installation_id: Option<String>,
}

/// Parse's five keys, as configured (`[keys]`) and as a `connect` presents them: one type, so
/// that the check pairs them field by field ([`KeyPairs::fields`]) rather than by hand.
#[derive(Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyPairs {
    pub javascript_key: Option<String>,
    pub client_key: Option<String>,
    pub rest_api_key: Option<String>,
    pub windows_key: Option<String>,
    pub master_key: Option<String>,
}

impl KeyPairs {
    /// The keys in one fixed order, the master key last.
    pub fn fields(&self) -> [&Option<String>; 5] {
        [&self.javascript_key, &self.client_key, &self.rest_api_key, &self.windows_key, &self.master_key]
    }
}

/// Never prints a key: only whether each is set.
impl std::fmt::Debug for KeyPairs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |k: &Option<String>| if k.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("KeyPairs")
            .field("javascriptKey", &set(&self.javascript_key))
            .field("clientKey", &set(&self.client_key))
            .field("restAPIKey", &set(&self.rest_api_key))
            .field("windowsKey", &set(&self.windows_key))
            .field("masterKey", &set(&self.master_key))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    pub request_id: RequestId,
    pub class_name: String,
    pub where_: Map<String, Value>,
    pub keys: Option<Vec<String>>,
    pub watch: Option<Vec<String>>,
    pub session_token: Option<String>,
    /// Resume extension: a position string, or `"now"` to get positions without resuming.
    pub since: Option<String>,
}

/// What one incoming text frame amounts to.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // short-lived, one per frame; boxing would buy nothing
pub enum Decoded {
    Request(Request),
    /// Failed schema validation: answer with code 1 and this message.
    Invalid(String),
    /// Not JSON: Parse logs and drops it without a reply.
    Ignored,
}

/// Decodes and validates one text frame.
pub fn decode(text: &str) -> Decoded {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return Decoded::Ignored;
    };
    match validate(&value) {
        Ok(request) => Decoded::Request(request),
        Err(message) => Decoded::Invalid(message),
    }
}

// ---- a small tv4 ---------------------------------------------------------------------------

enum Schema {
    /// Parse writes `op: 'connect'` where a schema belongs; tv4 accepts anything there.
    Any,
    String,
    Number,
    Object {
        required: &'static [&'static str],
        properties: &'static [(&'static str, Schema)],
        closed: bool,
    },
    /// `{type: array, items: {type: string}, minItems: 1, uniqueItems: true}`
    UniqueStrings,
}

const GENERAL_OP: Schema = Schema::String;
const OPS: [&str; 4] = ["connect", "subscribe", "unsubscribe", "update"];

const CONNECT: Schema = Schema::Object {
    required: &["op", "applicationId"],
    properties: &[
        ("op", Schema::Any),
        ("applicationId", Schema::String),
        ("javascriptKey", Schema::String),
        ("masterKey", Schema::String),
        ("clientKey", Schema::String),
        ("windowsKey", Schema::String),
        ("restAPIKey", Schema::String),
        ("sessionToken", Schema::String),
        ("installationId", Schema::String),
    ],
    closed: true,
};

const QUERY: Schema = Schema::Object {
    required: &["where", "className"],
    properties: &[
        ("className", Schema::String),
        ("where", Schema::Object { required: &[], properties: &[], closed: false }),
        ("keys", Schema::UniqueStrings),
        ("watch", Schema::UniqueStrings),
    ],
    closed: true,
};

const SUBSCRIBE: Schema = Schema::Object {
    required: &["op", "requestId", "query"],
    properties: &[
        ("op", Schema::Any),
        ("requestId", Schema::Number),
        ("query", QUERY),
        ("sessionToken", Schema::String),
        // livegate's resume extension: a position to resume from, or "now" (positions only).
        ("since", Schema::String),
    ],
    closed: true,
};

const UNSUBSCRIBE: Schema = Schema::Object {
    required: &["op", "requestId"],
    properties: &[("op", Schema::Any), ("requestId", Schema::Number)],
    closed: true,
};

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn invalid_type(value: &Value, expected: &str) -> String {
    format!("Invalid type: {} (expected {expected})", type_name(value))
}

fn check(value: &Value, schema: &Schema) -> Result<(), String> {
    match schema {
        Schema::Any => Ok(()),
        Schema::String => value.is_string().then_some(()).ok_or_else(|| invalid_type(value, "string")),
        Schema::Number => value.is_number().then_some(()).ok_or_else(|| invalid_type(value, "number")),
        Schema::Object { required, properties, closed } => {
            let Value::Object(map) = value else {
                return Err(invalid_type(value, "object"));
            };
            if let Some(missing) = required.iter().find(|key| !map.contains_key(**key)) {
                return Err(format!("Missing required property: {missing}"));
            }
            for (key, item) in map {
                match properties.iter().find(|(name, _)| name == key) {
                    Some((_, schema)) => check(item, schema)?,
                    None if *closed => return Err("Additional properties not allowed".into()),
                    None => {}
                }
            }
            Ok(())
        }
        Schema::UniqueStrings => {
            let Value::Array(items) = value else {
                return Err(invalid_type(value, "array"));
            };
            if items.is_empty() {
                return Err("Array is too short (0), minimum 1".into());
            }
            for i in 0..items.len() {
                for j in i + 1..items.len() {
                    if items[i] == items[j] {
                        return Err(format!("Array items are not unique (indices {i} and {j})"));
                    }
                }
            }
            items.iter().try_for_each(|item| check(item, &Schema::String))
        }
    }
}

fn validate(value: &Value) -> Result<Request, String> {
    // The general schema: an object with a string `op` from the enum.
    let Value::Object(map) = value else {
        return Err(invalid_type(value, "object"));
    };
    let op = map.get("op").ok_or_else(|| "Missing required property: op".to_string())?;
    check(op, &GENERAL_OP)?;
    let op = op.as_str().unwrap_or_default();
    if !OPS.contains(&op) {
        return Err(format!("No enum match for: {}", Value::String(op.to_string())));
    }
    match op {
        "connect" => {
            check(value, &CONNECT)?;
            let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_string);
            Ok(Request::Connect(Connect {
                application_id: text("applicationId").unwrap_or_default(),
                keys: KeyPairs {
                    javascript_key: text("javascriptKey"),
                    client_key: text("clientKey"),
                    rest_api_key: text("restAPIKey"),
                    windows_key: text("windowsKey"),
                    master_key: text("masterKey"),
                },
                session_token: text("sessionToken"),
                installation_id: text("installationId"),
            }))
        }
        "subscribe" | "update" => {
            check(value, &SUBSCRIBE)?;
            let subscribe = subscribe_from(map);
            Ok(if op == "subscribe" { Request::Subscribe(subscribe) } else { Request::Update(subscribe) })
        }
        _ => {
            check(value, &UNSUBSCRIBE)?;
            Ok(Request::Unsubscribe { request_id: request_id_of(map) })
        }
    }
}

fn request_id_of(map: &Map<String, Value>) -> RequestId {
    match map.get("requestId") {
        Some(Value::Number(n)) => RequestId::new(n.clone()),
        _ => RequestId::from(0),
    }
}

/// Builds a subscribe from a frame that passed the schema.
fn subscribe_from(map: &Map<String, Value>) -> Subscribe {
    let query = map.get("query").and_then(Value::as_object);
    let field = |key: &str| query.and_then(|q| q.get(key));
    let strings = |key: &str| {
        field(key).and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
    };
    Subscribe {
        request_id: request_id_of(map),
        class_name: field("className").and_then(Value::as_str).unwrap_or_default().to_string(),
        where_: field("where").and_then(Value::as_object).cloned().unwrap_or_default(),
        keys: strings("keys"),
        watch: strings("watch"),
        session_token: map.get("sessionToken").and_then(Value::as_str).map(str::to_string),
        since: map.get("since").and_then(Value::as_str).map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(text: &str) -> String {
        match decode(text) {
            Decoded::Invalid(message) => message,
            other => panic!("expected a schema error for {text}, got {other:?}"),
        }
    }

    #[test]
    fn invalid_json_is_ignored() {
        assert_eq!(decode("{nope"), Decoded::Ignored);
        assert_eq!(decode(""), Decoded::Ignored);
    }

    #[test]
    fn tv4_messages() {
        let cases = [
            ("[]", "Invalid type: array (expected object)"),
            ("5", "Invalid type: number (expected object)"),
            ("{}", "Missing required property: op"),
            (r#"{"op":5}"#, "Invalid type: number (expected string)"),
            (r#"{"op":"hello"}"#, "No enum match for: \"hello\""),
            (r#"{"op":"connect"}"#, "Missing required property: applicationId"),
            (r#"{"op":"connect","applicationId":1}"#, "Invalid type: number (expected string)"),
            (r#"{"op":"connect","applicationId":"a","extra":1}"#, "Additional properties not allowed"),
            (r#"{"op":"connect","applicationId":"a","sessionToken":null}"#, "Invalid type: null (expected string)"),
            (r#"{"op":"subscribe","query":{}}"#, "Missing required property: requestId"),
            (r#"{"op":"subscribe","requestId":"1","query":{}}"#, "Invalid type: string (expected number)"),
            (r#"{"op":"subscribe","requestId":1}"#, "Missing required property: query"),
            (r#"{"op":"subscribe","requestId":1,"query":{"className":"A"}}"#, "Missing required property: where"),
            (r#"{"op":"subscribe","requestId":1,"query":{"where":{}}}"#, "Missing required property: className"),
            (
                r#"{"op":"subscribe","requestId":1,"query":{"className":"A","where":[]}}"#,
                "Invalid type: array (expected object)",
            ),
            (
                r#"{"op":"subscribe","requestId":1,"query":{"className":"A","where":{},"fields":["a"]}}"#,
                "Additional properties not allowed",
            ),
            (
                r#"{"op":"subscribe","requestId":1,"query":{"className":"A","where":{},"keys":[]}}"#,
                "Array is too short (0), minimum 1",
            ),
            (
                r#"{"op":"subscribe","requestId":1,"query":{"className":"A","where":{},"watch":["a","b","a"]}}"#,
                "Array items are not unique (indices 0 and 2)",
            ),
            (
                r#"{"op":"subscribe","requestId":1,"query":{"className":"A","where":{},"keys":[1]}}"#,
                "Invalid type: number (expected string)",
            ),
            (r#"{"op":"unsubscribe"}"#, "Missing required property: requestId"),
            (r#"{"op":"unsubscribe","requestId":1,"x":2}"#, "Additional properties not allowed"),
        ];
        for (frame, message) in cases {
            assert_eq!(invalid(frame), message, "frame {frame}");
        }
    }

    #[test]
    fn first_error_follows_the_frames_key_order() {
        assert_eq!(
            invalid(r#"{"op":"connect","applicationId":"a","x":1,"sessionToken":2}"#),
            "Additional properties not allowed"
        );
        assert_eq!(
            invalid(r#"{"op":"connect","applicationId":"a","sessionToken":2,"x":1}"#),
            "Invalid type: number (expected string)"
        );
    }

    #[test]
    fn decodes_requests() {
        let frame = r#"{"op":"subscribe","requestId":2,"query":{"className":"Msg","where":{"a":1},"keys":["a"],"watch":["b"]},"sessionToken":"t"}"#;
        let Decoded::Request(Request::Subscribe(s)) = decode(frame) else { panic!() };
        assert_eq!(s.request_id, RequestId::from(2));
        assert_eq!(s.class_name, "Msg");
        assert_eq!(s.keys.as_deref(), Some(&["a".to_string()][..]));
        assert_eq!(s.watch.as_deref(), Some(&["b".to_string()][..]));
        assert_eq!(s.session_token.as_deref(), Some("t"));
        let Decoded::Request(Request::Connect(c)) =
            decode(r#"{"op":"connect","applicationId":"app","masterKey":"m","installationId":"i"}"#)
        else {
            panic!()
        };
        assert_eq!(c.keys.master_key.as_deref(), Some("m"));
        assert_eq!(c.installation_id.as_deref(), Some("i"));
        assert!(matches!(
            decode(r#"{"op":"update","requestId":1.5,"query":{"className":"A","where":{}}}"#),
            Decoded::Request(Request::Update(_))
        ));
    }

    #[test]
    fn request_ids_compare_like_javascript_numbers() {
        let one: RequestId = RequestId::new(serde_json::from_str("1.0").unwrap());
        assert_eq!(one, RequestId::from(1));
        assert_eq!(one.to_string(), "1");
        assert_eq!(one.as_number().to_string(), "1.0", "echoed back as sent");
    }
}
