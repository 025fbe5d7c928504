//! Server → client frames, byte for byte as Parse's `Client._pushEvent` builds them: keys in
//! the order `op, clientId, installationId, requestId, object, original` (absent when unset);
//! errors as `op, error, code, reconnect, requestId` with `requestId: null` when there is none.
//!
//! The resume extension adds a trailing `position` to events and to `subscribed`, and a `gap`
//! frame, only for subscriptions that asked for them with `since`; Parse SDKs never see them.

use std::fmt::Write;

use super::RequestId;

/// A protocol reply (anything that is not a data event).
#[derive(Debug, Clone, PartialEq)]
pub enum Reply<'a> {
    Connected,
    Subscribed(&'a RequestId),
    /// `subscribed` for a subscription that tracks positions: live from `position`.
    SubscribedAt(&'a RequestId, &'a str),
    Unsubscribed(&'a RequestId),
    /// History between the client's position and `position` cannot be replayed: refetch.
    Gap {
        request_id: &'a RequestId,
        reason: &'a str,
        position: &'a str,
        /// A fresh snapshot (`result`) follows.
        snapshot: bool,
    },
}

/// The data events of §3 of the protocol study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventOp {
    Create,
    Enter,
    Update,
    Leave,
    Delete,
}

impl EventOp {
    pub const ALL: [EventOp; 5] = [EventOp::Create, EventOp::Enter, EventOp::Update, EventOp::Leave, EventOp::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            EventOp::Create => "create",
            EventOp::Enter => "enter",
            EventOp::Update => "update",
            EventOp::Leave => "leave",
            EventOp::Delete => "delete",
        }
    }
}

fn push_str(out: &mut String, s: &str) {
    // Serialising a &str cannot fail; fall back to an empty string rather than panic.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

fn head(out: &mut String, op: &str, client_id: &str, installation_id: Option<&str>) {
    out.push_str("{\"op\":");
    push_str(out, op);
    out.push_str(",\"clientId\":");
    push_str(out, client_id);
    if let Some(id) = installation_id {
        out.push_str(",\"installationId\":");
        push_str(out, id);
    }
}

/// The requestId as JavaScript prints the number (`1e15` → `1000000000000000`, `-0` → `0`).
fn push_request_id(out: &mut String, request_id: &RequestId) {
    out.push_str(",\"requestId\":");
    out.push_str(request_id.as_str());
}

fn push_position(out: &mut String, position: &str) {
    out.push_str(",\"position\":");
    push_str(out, position);
}

pub fn encode_reply(reply: &Reply<'_>, client_id: &str, installation_id: Option<&str>) -> String {
    let mut out = String::with_capacity(96);
    match reply {
        Reply::Connected => head(&mut out, "connected", client_id, installation_id),
        Reply::Subscribed(id) => {
            head(&mut out, "subscribed", client_id, installation_id);
            push_request_id(&mut out, id);
        }
        Reply::SubscribedAt(id, position) => {
            head(&mut out, "subscribed", client_id, installation_id);
            push_request_id(&mut out, id);
            push_position(&mut out, position);
        }
        Reply::Unsubscribed(id) => {
            head(&mut out, "unsubscribed", client_id, installation_id);
            push_request_id(&mut out, id);
        }
        Reply::Gap { request_id, reason, position, snapshot } => {
            head(&mut out, "gap", client_id, installation_id);
            push_request_id(&mut out, request_id);
            out.push_str(",\"reason\":");
            push_str(&mut out, reason);
            push_position(&mut out, position);
            if *snapshot {
                out.push_str(",\"snapshot\":true");
            }
        }
    }
    out.push('}');
    out
}

/// `result`: the rows of a subscription's query (each an encoded object), for `query` or a
/// `subscribe` with `snapshot`.
pub fn encode_result(
    objects: &[String],
    request_id: &RequestId,
    client_id: &str,
    installation_id: Option<&str>,
) -> String {
    let mut out = String::with_capacity(96 + objects.iter().map(|o| o.len() + 1).sum::<usize>());
    head(&mut out, "result", client_id, installation_id);
    push_request_id(&mut out, request_id);
    out.push_str(",\"results\":[");
    for (i, object) in objects.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(object);
    }
    out.push_str("]}");
    out
}

pub fn encode_error(code: i64, message: &str, reconnect: bool, request_id: Option<&RequestId>) -> String {
    let mut out = String::with_capacity(64 + message.len());
    out.push_str("{\"op\":\"error\",\"error\":");
    push_str(&mut out, message);
    let _ = write!(out, ",\"code\":{code},\"reconnect\":{reconnect},\"requestId\":");
    match request_id {
        Some(id) => out.push_str(id.as_str()),
        None => out.push_str("null"),
    }
    out.push('}');
    out
}

/// An event frame around already-encoded object JSON (encoded once per change, shared).
pub fn encode_event(
    op: EventOp,
    client_id: &str,
    installation_id: Option<&str>,
    request_id: &RequestId,
    object: &str,
    original: Option<&str>,
    position: Option<&str>,
) -> String {
    let mut out = String::with_capacity(96 + object.len() + original.map_or(0, str::len));
    head(&mut out, op.as_str(), client_id, installation_id);
    push_request_id(&mut out, request_id);
    out.push_str(",\"object\":");
    out.push_str(object);
    if let Some(original) = original {
        out.push_str(",\"original\":");
        out.push_str(original);
    }
    if let Some(position) = position {
        push_position(&mut out, position);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_match_parse_byte_for_byte() {
        let id = RequestId::from(3);
        assert_eq!(encode_reply(&Reply::Connected, "c1", None), r#"{"op":"connected","clientId":"c1"}"#);
        assert_eq!(
            encode_reply(&Reply::Subscribed(&id), "c1", Some("inst")),
            r#"{"op":"subscribed","clientId":"c1","installationId":"inst","requestId":3}"#
        );
        assert_eq!(
            encode_reply(&Reply::Unsubscribed(&id), "c1", None),
            r#"{"op":"unsubscribed","clientId":"c1","requestId":3}"#
        );
        assert_eq!(
            encode_error(4, "Key in request is not valid", true, None),
            r#"{"op":"error","error":"Key in request is not valid","code":4,"reconnect":true,"requestId":null}"#
        );
        assert_eq!(
            encode_error(102, "bad \"q\"", false, Some(&id)),
            r#"{"op":"error","error":"bad \"q\"","code":102,"reconnect":false,"requestId":3}"#
        );
        assert_eq!(
            encode_event(EventOp::Update, "c1", None, &id, r#"{"a":1}"#, Some(r#"{"a":0}"#), None),
            r#"{"op":"update","clientId":"c1","requestId":3,"object":{"a":1},"original":{"a":0}}"#
        );
        assert_eq!(
            encode_event(EventOp::Create, "c1", Some("i"), &id, "{}", None, None),
            r#"{"op":"create","clientId":"c1","installationId":"i","requestId":3,"object":{}}"#
        );
        assert_eq!(
            encode_event(EventOp::Create, "c1", None, &id, "{}", None, Some("5-ab")),
            r#"{"op":"create","clientId":"c1","requestId":3,"object":{},"position":"5-ab"}"#
        );
        assert_eq!(
            encode_reply(&Reply::SubscribedAt(&id, "5-ab"), "c1", None),
            r#"{"op":"subscribed","clientId":"c1","requestId":3,"position":"5-ab"}"#
        );
        assert_eq!(
            encode_reply(
                &Reply::Gap { request_id: &id, reason: "expired", position: "9-ab", snapshot: false },
                "c1",
                None
            ),
            r#"{"op":"gap","clientId":"c1","requestId":3,"reason":"expired","position":"9-ab"}"#
        );
    }

    #[test]
    fn request_ids_are_written_as_javascript_prints_them() {
        let cases = [(1e15, "1000000000000000"), (-0.0, "0"), (1e21, "1e+21"), (1.5, "1.5"), (5e-7, "5e-7")];
        for (value, text) in cases {
            let id = RequestId::new(value);
            assert_eq!(
                encode_reply(&Reply::Subscribed(&id), "c", None),
                format!(r#"{{"op":"subscribed","clientId":"c","requestId":{text}}}"#)
            );
            assert_eq!(
                encode_error(102, "m", false, Some(&id)),
                format!(r#"{{"op":"error","error":"m","code":102,"reconnect":false,"requestId":{text}}}"#)
            );
            assert_eq!(
                encode_event(EventOp::Create, "c", None, &id, "{}", None, None),
                format!(r#"{{"op":"create","clientId":"c","requestId":{text},"object":{{}}}}"#)
            );
        }
    }
}
