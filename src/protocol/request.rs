//! Client → server requests. Validation mirrors Parse's `RequestSchema.js` as tv4 applies it:
//! the general schema first, then the schema of the op; the first error wins, with tv4's message
//! (required properties in schema order, then each property in the frame's key order).
//! `keys`/`watch` uniqueness is tv4's check and message, in linear time (`unique.rs`).
//!
//! Numbers are read as JavaScript reads them. A fractional or huge `requestId` is taken from its
//! literal (serde_json reads such digits only approximately). A number beyond f64 (`1e400`,
//! Infinity to JavaScript) makes serde_json refuse the whole frame, which is then read again
//! with `null` in its place (`literal.rs` finds it) and answered: inside a subscribe's or
//! update's `query.where`, once the frame passes the schema, it is refused with 102 and the
//! frame's requestId ([`Decoded::Refused`]); anywhere else the frame fails with code 1.

use serde_json::{Map, Value};

use super::literal::{literals, with_nulls, Literal, Place};
use super::unique::first_duplicate;
use super::{code, Refusal, RequestId};

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Connect(Connect),
    Subscribe(Subscribe),
    /// Replace a subscription's query in place (Parse's `update` op).
    Update(Subscribe),
    Unsubscribe {
        request_id: RequestId,
    },
    /// The current rows of an existing subscription's query (Parse SDK's `subscription.find()`).
    Query {
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
#[derive(Clone, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
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
    /// Snapshot extension: send the query's current rows (`result`) before `subscribed`.
    pub snapshot: bool,
}

/// What one incoming text frame amounts to.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // short-lived, one per frame; boxing would buy nothing
pub enum Decoded {
    Request(Request),
    /// Failed schema validation, or holds a number beyond f64 outside a `where`: answer with
    /// code 1 and this message.
    Invalid(String),
    /// A subscribe or update that passed the schema but cannot be served as written (its
    /// `where` holds a number beyond f64: 102): answer with this refusal and its requestId.
    /// Decided here, before the session sees the request, so its state stays as it was.
    Refused {
        request_id: RequestId,
        refusal: Refusal,
    },
    /// Not JSON: Parse logs and drops it without a reply.
    Ignored,
}

/// Decodes and validates one text frame.
pub fn decode(text: &str) -> Decoded {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return decode_out_of_range(text);
    };
    match validate(&value, text) {
        Ok(request) => Decoded::Request(request),
        Err(message) => Decoded::Invalid(message),
    }
}

/// A frame serde_json refused: if only over numbers beyond f64, it is read with `null` in
/// their place; inside a subscribe's or update's `query.where` they are a query the matcher
/// cannot evaluate (102, after the schema), anywhere else a schema failure. Otherwise, or if it
/// still does not parse, it is not JSON.
fn decode_out_of_range(text: &str) -> Decoded {
    let overflowing: Vec<Literal<'_>> = literals(text).filter(Literal::overflows).collect();
    let Some(first) = overflowing.first() else {
        return Decoded::Ignored;
    };
    let readable = with_nulls(text, &overflowing);
    let Ok(value) = serde_json::from_str::<Value>(&readable) else {
        return Decoded::Ignored;
    };
    let query_op = matches!(value.get("op").and_then(Value::as_str), Some("subscribe" | "update"));
    let outside_where =
        if query_op { overflowing.iter().find(|literal| literal.place != Place::Where) } else { Some(first) };
    if let Some(literal) = outside_where {
        return Decoded::Invalid(out_of_range(literal));
    }
    match validate(&value, &readable) {
        Ok(Request::Subscribe(subscribe) | Request::Update(subscribe)) => Decoded::Refused {
            request_id: subscribe.request_id,
            refusal: Refusal::new(code::INVALID_QUERY, out_of_range(first)),
        },
        Ok(_) => Decoded::Invalid(out_of_range(first)), // not reached: the op is a query's
        Err(message) => Decoded::Invalid(message),
    }
}

/// `number 1e400 is out of range`, the literal cut to 64 characters.
fn out_of_range(literal: &Literal<'_>) -> String {
    match literal.text.get(..64) {
        Some(head) if literal.text.len() > 64 => format!("number {head}… is out of range"),
        _ => format!("number {} is out of range", literal.text),
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
    Boolean,
}

const GENERAL_OP: Schema = Schema::String;
const OPS: [&str; 5] = ["connect", "subscribe", "unsubscribe", "update", "query"];

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
        // livegate's snapshot extension: the current rows first.
        ("snapshot", Schema::Boolean),
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
        Schema::Boolean => value.is_boolean().then_some(()).ok_or_else(|| invalid_type(value, "boolean")),
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
            if let Some((i, j)) = first_duplicate(items) {
                return Err(format!("Array items are not unique (indices {i} and {j})"));
            }
            items.iter().try_for_each(|item| check(item, &Schema::String))
        }
    }
}

/// `text` is the frame `value` was read from, for the literal of a `requestId`.
fn validate(value: &Value, text: &str) -> Result<Request, String> {
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
            let subscribe = subscribe_from(map, text);
            Ok(if op == "subscribe" { Request::Subscribe(subscribe) } else { Request::Update(subscribe) })
        }
        "query" => {
            check(value, &UNSUBSCRIBE)?;
            Ok(Request::Query { request_id: request_id_of(map, text) })
        }
        _ => {
            check(value, &UNSUBSCRIBE)?;
            Ok(Request::Unsubscribe { request_id: request_id_of(map, text) })
        }
    }
}

/// The frame's `requestId` as JavaScript reads it: integers serde_json read exactly are
/// converted (rounding to the nearest f64 as JavaScript does), others read from the literal.
fn request_id_of(map: &Map<String, Value>, text: &str) -> RequestId {
    let Some(Value::Number(n)) = map.get("requestId") else {
        return RequestId::from(0);
    };
    let value = if let Some(u) = n.as_u64() {
        u as f64
    } else if let Some(i) = n.as_i64() {
        i as f64
    } else {
        let literal = literals(text).filter(|literal| literal.place == Place::RequestId).last();
        literal.and_then(|literal| literal.value()).or(n.as_f64()).unwrap_or_default()
    };
    RequestId::new(value)
}

/// Builds a subscribe from a frame that passed the schema.
fn subscribe_from(map: &Map<String, Value>, text: &str) -> Subscribe {
    let query = map.get("query").and_then(Value::as_object);
    let field = |key: &str| query.and_then(|q| q.get(key));
    let strings = |key: &str| {
        field(key).and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
    };
    Subscribe {
        request_id: request_id_of(map, text),
        class_name: field("className").and_then(Value::as_str).unwrap_or_default().to_string(),
        where_: field("where").and_then(Value::as_object).cloned().unwrap_or_default(),
        keys: strings("keys"),
        watch: strings("watch"),
        session_token: map.get("sessionToken").and_then(Value::as_str).map(str::to_string),
        since: map.get("since").and_then(Value::as_str).map(str::to_string),
        snapshot: map.get("snapshot").and_then(Value::as_bool).unwrap_or(false),
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

    fn request_id(literal: &str) -> RequestId {
        match decode(&format!(r#"{{"op":"unsubscribe","requestId":{literal}}}"#)) {
            Decoded::Request(Request::Unsubscribe { request_id }) => request_id,
            other => panic!("{literal}: {other:?}"),
        }
    }

    #[test]
    fn request_ids_are_javascript_numbers() {
        // Literal as sent → the id JavaScript reads, printed as JSON.stringify prints it (Node).
        let cases = [
            ("1", "1"),
            ("1.0", "1"),
            ("1e0", "1"),
            ("10e-1", "1"),
            ("1e15", "1000000000000000"),
            ("1000000000000000", "1000000000000000"),
            ("1000000000000000.0", "1000000000000000"),
            ("-0", "0"),
            ("-0.0", "0"),
            ("0", "0"),
            ("9007199254740993", "9007199254740992"),
            ("9007199254740992", "9007199254740992"),
            ("-9007199254740993", "-9007199254740992"),
            ("18446744073709551615", "18446744073709552000"),
            ("1e21", "1e+21"),
            ("1000000000000000000000", "1e+21"),
            ("123456789012345678901234567890123456789", "1.2345678901234568e+38"),
            ("1234567890123456789012345678901234567890", "1.2345678901234568e+39"),
            ("0.1", "0.1"),
            ("1.5e-7", "1.5e-7"),
            ("0.00000015", "1.5e-7"),
            ("1.2e-7", "1.2e-7"),
            ("5e-7", "5e-7"),
            ("1e-400", "0"),
            ("-1.5", "-1.5"),
        ];
        let ids: Vec<(RequestId, &str)> = cases.iter().map(|(literal, text)| (request_id(literal), *text)).collect();
        for ((literal, _), (id, text)) in cases.iter().zip(&ids) {
            assert_eq!(id.to_string(), *text, "{literal}");
            assert_eq!(id.as_str(), *text, "{literal}");
        }
        // Equal exactly when printed alike, and hashed alike.
        for (a, text_a) in &ids {
            for (b, text_b) in &ids {
                assert_eq!(a == b, text_a == text_b, "{a:?} vs {b:?}");
            }
        }
        let distinct: std::collections::HashSet<&RequestId> = ids.iter().map(|(id, _)| id).collect();
        let texts: std::collections::HashSet<&str> = ids.iter().map(|(_, text)| *text).collect();
        assert_eq!(distinct.len(), texts.len());
        assert_eq!(RequestId::from(1), request_id("1.0"));
        assert_eq!(request_id("-0").as_f64().to_bits(), 0.0f64.to_bits());
    }

    #[test]
    fn a_request_ids_literal_is_the_top_level_one() {
        // Not a requestId nested elsewhere, nor one inside a string; the last of duplicates,
        // as serde_json keeps it; an escaped key is the same key.
        let frame = r#"{"op":"subscribe","requestId":0.5,"query":{"className":"A","where":{"requestId":7.5}},
            "sessionToken":"\"requestId\":9.5","requestId":123456789012345678901234567890123456789}"#;
        let Decoded::Request(Request::Subscribe(s)) = decode(frame) else { panic!("{:?}", decode(frame)) };
        assert_eq!(s.request_id.as_str(), "1.2345678901234568e+38");
        assert_eq!(request_id(r#"2.5,"request\u0049d":1.25"#).as_str(), "1.25");
    }

    fn refused(text: &str) -> (RequestId, Refusal) {
        match decode(text) {
            Decoded::Refused { request_id, refusal } => (request_id, refusal),
            other => panic!("expected a refusal for {text}, got {other:?}"),
        }
    }

    #[test]
    fn a_where_number_beyond_f64_is_refused_with_102() {
        let (id, refusal) =
            refused(r#"{"op":"subscribe","requestId":7,"query":{"className":"A","where":{"n":1e400}}}"#);
        assert_eq!(id, RequestId::from(7));
        assert_eq!(refusal, Refusal::new(code::INVALID_QUERY, "number 1e400 is out of range"));
        assert!(!refusal.reconnect);
        let (id, refusal) = refused(
            r#"{"op":"update","requestId":1e15,"query":{"className":"A","where":{"$or":[{"n":{"$in":[1,-1e400]}}],"m":2E+999}}}"#,
        );
        assert_eq!(id.as_str(), "1000000000000000");
        assert_eq!(refusal.message, "number -1e400 is out of range", "the first one is named");
        let long = format!("1{}", "0".repeat(400));
        let (_, refusal) = refused(&format!(
            r#"{{"op":"subscribe","requestId":1,"query":{{"className":"A","where":{{"n":{long}}}}}}}"#
        ));
        assert_eq!(refusal.message, format!("number {}… is out of range", &long[..64]));
    }

    #[test]
    fn numbers_beyond_f64_elsewhere_fail_the_schema() {
        let cases = [
            (
                r#"{"op":"subscribe","requestId":1e400,"query":{"className":"A","where":{}}}"#,
                "number 1e400 is out of range",
            ),
            (r#"{"op":"connect","applicationId":"a","x":-1e400}"#, "number -1e400 is out of range"),
            (r#"{"op":"unsubscribe","requestId":1,"query":{"where":{"n":1e400}}}"#, "number 1e400 is out of range"),
            (
                r#"{"op":"subscribe","requestId":1,"query":{"className":"A","where":1e400}}"#,
                "number 1e400 is out of range",
            ),
            (
                r#"{"op":"subscribe","requestId":1,"query":{"className":"A","where":{"n":1e400}},"x":1e999}"#,
                "number 1e999 is out of range",
            ),
            // Schema errors of the frame come first, as in Parse.
            (
                r#"{"op":"subscribe","requestId":1,"query":{"where":{"n":1e400}}}"#,
                "Missing required property: className",
            ),
            (
                r#"{"op":"subscribe","requestId":"1","query":{"className":"A","where":{"n":1e400}}}"#,
                "Invalid type: string (expected number)",
            ),
        ];
        for (frame, message) in cases {
            assert_eq!(invalid(frame), message, "frame {frame}");
        }
    }

    #[test]
    fn numbers_in_strings_and_other_broken_frames() {
        let frame = r#"{"op":"subscribe","requestId":1,"query":{"className":"A","where":{"n":"1e400","m":1e-400}}}"#;
        let Decoded::Request(Request::Subscribe(s)) = decode(frame) else { panic!("{:?}", decode(frame)) };
        assert_eq!(s.where_["n"], "1e400");
        assert_eq!(s.where_["m"], 0.0);
        // Broken apart from the number, or a number JSON does not allow: not JSON.
        for text in [
            r#"{"op":"subscribe","requestId":1,"query":{"className":"A","where":{"n":1e400,}}}"#,
            r#"{"op":"subscribe","requestId":1,"query":{"className":"A","where":{"n":01e400}}}"#,
            r#"{"op":"subscribe","requestId":1,"query":{"className":"A","where":{"n":1e400"#,
            "1e400x",
        ] {
            assert_eq!(decode(text), Decoded::Ignored, "{text}");
        }
        assert_eq!(decode("1e400"), Decoded::Invalid("number 1e400 is out of range".into()));
    }

    #[test]
    fn a_long_keys_list_is_checked_in_linear_time() {
        let names: Vec<String> = (0..10_000).map(|i| format!("f{i}")).collect();
        let list = serde_json::json!(names);
        let started = std::time::Instant::now();
        let checked = check(&list, &Schema::UniqueStrings);
        let elapsed = started.elapsed();
        println!("a 10,000-name list validated in {elapsed:?}");
        assert_eq!(checked, Ok(()));
        assert!(elapsed < std::time::Duration::from_secs(1), "took {elapsed:?}");

        let frame = serde_json::json!({"op": "subscribe", "requestId": 1,
            "query": {"className": "A", "where": {}, "keys": names, "watch": names}})
        .to_string();
        let started = std::time::Instant::now();
        let decoded = decode(&frame);
        println!("a {} KB frame with two such lists decoded in {:?}", frame.len() / 1024, started.elapsed());
        let Decoded::Request(Request::Subscribe(s)) = decoded else { panic!("{decoded:?}") };
        assert_eq!(s.keys.map(|k| k.len()), Some(10_000));

        let mut repeated = names.clone();
        repeated.push("f5".into());
        repeated.push("f3".into());
        let frame = serde_json::json!({"op": "subscribe", "requestId": 1,
            "query": {"className": "A", "where": {}, "keys": repeated}})
        .to_string();
        assert_eq!(invalid(&frame), "Array items are not unique (indices 3 and 10001)");
    }

    /// Random frames, well-formed and mangled: `decode` always answers and never panics. The
    /// CI run is short; `LIVEGATE_FUZZ_ITERATIONS` runs it longer (and `LIVEGATE_FUZZ_SEED`
    /// another sequence).
    #[test]
    fn random_frames_never_panic() {
        let iterations = std::env::var("LIVEGATE_FUZZ_ITERATIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(20_000);
        let seed = std::env::var("LIVEGATE_FUZZ_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or(7);
        let mut rng = crate::testing::Rng::new(seed);
        for _ in 0..iterations {
            let frame = random_frame(&mut rng);
            let frame = if rng.chance(30) { mangle(&mut rng, &frame) } else { frame };
            if let Decoded::Request(Request::Subscribe(s) | Request::Update(s)) = decode(&frame) {
                for list in [&s.keys, &s.watch].into_iter().flatten() {
                    let unique: std::collections::HashSet<&String> = list.iter().collect();
                    assert_eq!(unique.len(), list.len(), "accepted a repeated name: {frame}");
                }
            }
        }
    }

    const NUMBERS: &[&str] =
        &["1", "-0", "1e15", "1000000000000000", "1.5", "1e400", "-1e400", "1e-400", "9007199254740993", "0.1"];

    fn random_frame(rng: &mut crate::testing::Rng) -> String {
        let op = *rng.pick(&["connect", "subscribe", "update", "unsubscribe", "nope", ""]);
        let id = *rng.pick(NUMBERS);
        let names = |rng: &mut crate::testing::Rng| {
            let n = rng.below(5);
            (0..n).map(|_| format!("\"{}\"", rng.pick(&["a", "b", "c", "", "a.b"]))).collect::<Vec<_>>().join(",")
        };
        let value = |rng: &mut crate::testing::Rng| match rng.below(6) {
            0 => rng.pick(NUMBERS).to_string(),
            1 => "\"x\"".to_string(),
            2 => "null".to_string(),
            3 => format!("{{\"$regex\":\"{}\"}}", rng.pick(&["a+", "(", "\\\\Q"])),
            4 => format!("[{}]", rng.pick(NUMBERS)),
            _ => format!("{{\"$in\":[{}]}}", rng.pick(NUMBERS)),
        };
        let where_ = format!("{{\"n\":{},\"s\":{}}}", value(rng), value(rng));
        let (keys, watch) = (names(rng), names(rng));
        match rng.below(4) {
            0 => format!("{{\"op\":\"{op}\",\"applicationId\":\"a\",\"sessionToken\":{}}}", value(rng)),
            1 => format!("{{\"op\":\"{op}\",\"requestId\":{id}}}"),
            _ => format!(
                "{{\"op\":\"{op}\",\"requestId\":{id},\"query\":{{\"className\":\"C\",\"where\":{where_},\
                 \"keys\":[{keys}],\"watch\":[{watch}]}},\"since\":\"now\"}}"
            ),
        }
    }

    /// The frame with a few bytes cut, repeated or replaced (kept valid UTF-8).
    fn mangle(rng: &mut crate::testing::Rng, frame: &str) -> String {
        let mut chars: Vec<char> = frame.chars().collect();
        for _ in 0..1 + rng.below(3) {
            if chars.is_empty() {
                break;
            }
            let at = rng.below(chars.len());
            match rng.below(3) {
                0 => {
                    chars.remove(at);
                }
                1 => chars.insert(at, *rng.pick(&['{', '}', '"', '\\', ',', ':', '9', 'e', '\u{0}', 'é'])),
                _ => chars.truncate(at),
            }
        }
        chars.into_iter().collect()
    }
}
