//! Browser rules: which web origins may use the gateway. CORS (with preflight) for the HTTP and
//! SSE endpoints, and an Origin check on WebSocket upgrades, which CORS does not cover: a browser
//! opens a WebSocket to any host from any page, so only the server's check keeps another site
//! from using it.
//!
//! One decision, [`OriginPolicy::check`], serves both, in one place: [`apply`] (the middleware
//! installed in `app.rs`) runs it for every request, WebSocket upgrades included (those before
//! the handshake, and without CORS headers). A refused request gets a JSON 403 and never reaches
//! its handler.

use std::collections::HashSet;
use std::future::Future;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::is_upgrade;

/// `[browser]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrowserConfig {
    /// Origins allowed to use the HTTP/SSE endpoints cross-origin and to open WebSockets:
    /// `scheme://host[:port]`, compared case-insensitively, default ports and a trailing slash
    /// ignored. `"*"` allows any origin, answered with `Access-Control-Allow-Origin: *` and
    /// without credentials; origins also listed explicitly keep their credentials. `"null"`
    /// (sandboxed frames, `file:` pages) is allowed only when listed itself, never by `"*"`.
    /// Empty (the default) means same-origin only: an Origin equal to the request's own
    /// `scheme://Host` is always allowed.
    pub allowed_origins: Vec<String>,
    /// Requests without an Origin header (native apps, curl, server to server) are allowed;
    /// when false they are refused with 403.
    pub allow_missing_origin: bool,
    /// Send `Access-Control-Allow-Credentials: true` to allowed origins (never with `*`), so
    /// cookies work on SSE.
    pub allow_credentials: bool,
    /// Preflight cache lifetime (`Access-Control-Max-Age`), in seconds.
    pub max_age_secs: u64,
}

impl Default for BrowserConfig {
    fn default() -> Self {
        BrowserConfig {
            allowed_origins: Vec::new(),
            allow_missing_origin: true,
            allow_credentials: true,
            max_age_secs: 600,
        }
    }
}

/// Methods a page may use cross-origin: everything the gateway serves is read with GET.
const ALLOWED_METHODS: &str = "GET, OPTIONS";

/// Request headers a preflight may ask for: bearer tokens and Parse session tokens, SSE resume
/// (`Last-Event-ID`) and what fetch-based SSE clients add.
const ALLOWED_HEADERS: [&str; 5] =
    ["authorization", "last-event-id", "cache-control", "content-type", "x-parse-session-token"];

/// What to do with a request, judged by its Origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No Origin header and such requests are allowed: not a cross-origin browser request,
    /// nothing to add.
    NoOrigin,
    /// Allowed: answer with `Access-Control-Allow-Origin: allow_origin` (the Origin as sent, or
    /// `*`) and, when `credentials`, `Access-Control-Allow-Credentials: true`.
    Allow { allow_origin: String, credentials: bool },
    /// Refused (403) with this message.
    Refuse(String),
}

/// [`BrowserConfig`] in the form requests are checked against.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    /// Listed origins, normalised; `"null"` kept as is.
    origins: HashSet<String>,
    any: bool,
    allow_missing: bool,
    credentials: bool,
    max_age: HeaderValue,
}

impl OriginPolicy {
    /// Fails with a one-line message when an entry of `allowed_origins` is not an origin.
    pub fn new(config: &BrowserConfig) -> Result<OriginPolicy, String> {
        let mut origins = HashSet::new();
        let mut any = false;
        for entry in &config.allowed_origins {
            match entry.as_str() {
                "*" => any = true,
                "null" => {
                    origins.insert("null".to_string());
                }
                _ => {
                    let origin = normalise_origin(entry)
                        .ok_or_else(|| format!("{entry:?} is not an origin (scheme://host[:port])"))?;
                    origins.insert(origin);
                }
            }
        }
        Ok(OriginPolicy {
            origins,
            any,
            allow_missing: config.allow_missing_origin,
            credentials: config.allow_credentials,
            max_age: HeaderValue::from(config.max_age_secs),
        })
    }

    /// The decision for a request carrying `origin` (its Origin header, if any) and arriving as
    /// `own_origin` (`scheme://Host` of the request itself, when known).
    pub fn check(&self, origin: Option<&str>, own_origin: Option<&str>) -> Decision {
        let Some(origin) = origin else {
            return if self.allow_missing {
                Decision::NoOrigin
            } else {
                Decision::Refuse("requests without an Origin header are not allowed".into())
            };
        };
        let refused = || Decision::Refuse(format!("origin {origin} is not allowed"));
        let key = if origin == "null" { Some("null".to_string()) } else { normalise_origin(origin) };
        let Some(key) = key else { return refused() };
        let same_origin = own_origin.and_then(normalise_origin).is_some_and(|own| own == key);
        if same_origin || self.origins.contains(&key) {
            Decision::Allow { allow_origin: origin.to_string(), credentials: self.credentials }
        } else if self.any && key != "null" {
            // The spec forbids credentials with `*`; reflecting any origin with credentials
            // instead would let every site read a visitor's cookie-authenticated streams.
            Decision::Allow { allow_origin: "*".into(), credentials: false }
        } else {
            refused()
        }
    }

    /// The decision for an actix request: its Origin header against its own `scheme://Host`.
    pub fn decide(&self, req: &HttpRequest) -> Decision {
        let origin = match req.headers().get(header::ORIGIN).map(|v| v.to_str()) {
            None => None,
            Some(Ok(origin)) => Some(origin),
            Some(Err(_)) => return Decision::Refuse("the Origin header is not valid".into()),
        };
        self.check(origin, own_origin(req).as_deref())
    }

    /// What the middleware does with a WebSocket upgrade: CORS does not apply to sockets, so
    /// an origin that may not connect is refused (403) before the handshake, and an allowed
    /// one passes with nothing added.
    fn upgrade_step(&self, req: &HttpRequest) -> Step {
        match self.decide(req) {
            Decision::Refuse(why) => {
                tracing::debug!(reason = %why, "websocket upgrade refused");
                Step::Answer(forbidden(&why))
            }
            Decision::NoOrigin | Decision::Allow { .. } => Step::Continue(Vec::new()),
        }
    }

    /// What the middleware does with a request that is not a WebSocket upgrade.
    fn http_step(&self, req: &HttpRequest) -> Step {
        let (allow_origin, credentials) = match self.decide(req) {
            Decision::Refuse(why) => {
                tracing::debug!(reason = %why, path = req.path(), "cross-origin request refused");
                return Step::Answer(forbidden(&why));
            }
            // The answer still varies with Origin, for caches between us and browsers.
            Decision::NoOrigin => return Step::Continue(vec![vary_origin()]),
            Decision::Allow { allow_origin, credentials } => (allow_origin, credentials),
        };
        let Ok(allow_origin) = HeaderValue::from_str(&allow_origin) else {
            return Step::Answer(forbidden("the Origin header is not valid"));
        };
        let mut headers = vec![(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin)];
        if credentials {
            headers.push((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true")));
        }
        let preflight =
            req.headers().get(header::ACCESS_CONTROL_REQUEST_METHOD).filter(|_| req.method() == Method::OPTIONS);
        match preflight {
            Some(method) => {
                Step::Answer(self.preflight(headers, method, req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS)))
            }
            None => {
                headers.push(vary_origin());
                Step::Continue(headers)
            }
        }
    }

    /// The answer to a preflight from an allowed origin, whose CORS headers are `headers`.
    fn preflight(
        &self,
        mut headers: Vec<(HeaderName, HeaderValue)>,
        method: &HeaderValue,
        requested: Option<&HeaderValue>,
    ) -> HttpResponse {
        let method = method.to_str().unwrap_or_default();
        if !ALLOWED_METHODS.split(", ").any(|allowed| allowed == method) {
            return forbidden(&format!("method {method} is not allowed"));
        }
        let requested = match requested.map(|v| v.to_str()) {
            None => None,
            Some(Ok(list)) => match allowed_request_headers(list) {
                Ok(list) => Some(list),
                Err(why) => return forbidden(&why),
            },
            Some(Err(_)) => return forbidden("the Access-Control-Request-Headers header is not valid"),
        };
        headers.push((header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOWED_METHODS)));
        if let Some(list) = requested.filter(|list| !list.is_empty()) {
            // Built from the allowlist's own names, so always a valid header value.
            if let Ok(value) = HeaderValue::from_str(&list) {
                headers.push((header::ACCESS_CONTROL_ALLOW_HEADERS, value));
            }
        }
        headers.push((header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone()));
        headers.push((
            header::VARY,
            HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        ));
        let mut response = HttpResponse::NoContent();
        for header in headers {
            response.append_header(header);
        }
        response.finish()
    }
}

/// What the middleware does with a request: answer it here, or run the handler and add headers.
enum Step {
    Answer(HttpResponse),
    Continue(Vec<(HeaderName, HeaderValue)>),
}

/// The middleware (install with `App::wrap_fn`): preflights are answered here, refused requests
/// get a 403 without reaching their handler, allowed ones get their CORS headers. WebSocket
/// upgrades are judged by the same policy but get no CORS headers.
pub fn apply<S, B>(
    policy: &OriginPolicy,
    req: ServiceRequest,
    service: &S,
) -> impl Future<Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let upgrade = req.method() == Method::GET && is_upgrade(req.head());
    let step = if upgrade { policy.upgrade_step(req.request()) } else { policy.http_step(req.request()) };
    let step = match step {
        Step::Answer(response) => Err(req.into_response(response)),
        Step::Continue(headers) => Ok((service.call(req), headers)),
    };
    async move {
        match step {
            Err(answer) => Ok(answer.map_into_right_body()),
            Ok((call, headers)) => {
                let mut response = call.await?;
                for (name, value) in headers {
                    response.headers_mut().append(name, value);
                }
                Ok(response.map_into_left_body())
            }
        }
    }
}

/// The request's own origin: the scheme actix sees (TLS, or `Forwarded`/`X-Forwarded-Proto`
/// from a proxy) and the Host header.
fn own_origin(req: &HttpRequest) -> Option<String> {
    let host = match req.headers().get(header::HOST) {
        Some(host) => host.to_str().ok()?.to_string(),
        None => req.uri().authority()?.as_str().to_string(),
    };
    Some(format!("{}://{host}", req.connection_info().scheme()))
}

/// The requested header names, lowercased, when all are in [`ALLOWED_HEADERS`]; else why not.
fn allowed_request_headers(list: &str) -> Result<String, String> {
    let mut names = Vec::new();
    for name in list.split(',').map(str::trim).filter(|name| !name.is_empty()) {
        let name = name.to_ascii_lowercase();
        if !ALLOWED_HEADERS.contains(&name.as_str()) {
            return Err(format!("header {name} is not allowed"));
        }
        names.push(name);
    }
    Ok(names.join(", "))
}

/// `scheme://host[:port]` in one spelling: lowercase, without the scheme's default port or a
/// trailing slash. `None` when `text` is not an origin (a path, user info, a bad port...).
fn normalise_origin(text: &str) -> Option<String> {
    let text = text.strip_suffix('/').unwrap_or(text);
    let (scheme, authority) = text.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let authority_ok = !authority.is_empty()
        && !authority
            .contains(|c: char| matches!(c, '/' | '?' | '#' | '@' | '\\') || c.is_whitespace() || c.is_control());
    if !scheme_ok || !authority_ok {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        // An IPv6 literal: the port, if any, follows the closing bracket.
        let end = authority.find(']')?;
        let port = &authority[end + 1..];
        (&authority[..=end], if port.is_empty() { None } else { Some(port.strip_prefix(':')?) })
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host == "[]" {
        return None;
    }
    let port = match port {
        Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => Some(port.parse::<u16>().ok()?),
        Some(_) => return None,
        None => None,
    };
    let scheme = scheme.to_ascii_lowercase();
    let host = host.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    };
    Some(match port {
        Some(port) if Some(port) != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

fn vary_origin() -> (HeaderName, HeaderValue) {
    (header::VARY, HeaderValue::from_static("Origin"))
}

fn forbidden(why: &str) -> HttpResponse {
    HttpResponse::Forbidden().insert_header(vary_origin()).json(json!({"code": 403, "error": why}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str]) -> OriginPolicy {
        let config =
            BrowserConfig { allowed_origins: origins.iter().map(|o| o.to_string()).collect(), ..Default::default() };
        OriginPolicy::new(&config).unwrap()
    }

    fn allow(origin: &str) -> Decision {
        Decision::Allow { allow_origin: origin.into(), credentials: true }
    }

    fn refuse(origin: &str) -> Decision {
        Decision::Refuse(format!("origin {origin} is not allowed"))
    }

    const OWN: Option<&str> = Some("http://gateway.example:8080");

    #[test]
    fn listed_origins_match_exactly() {
        let p = policy(&["https://app.example", "http://localhost:3000"]);
        assert_eq!(p.check(Some("https://app.example"), OWN), allow("https://app.example"));
        assert_eq!(p.check(Some("http://localhost:3000"), OWN), allow("http://localhost:3000"));
        for other in ["http://app.example", "https://app.example:8443", "https://sub.app.example", "http://localhost"] {
            assert_eq!(p.check(Some(other), OWN), refuse(other), "{other}");
        }
        assert_eq!(p.check(Some("https://app.example.evil.example"), OWN), refuse("https://app.example.evil.example"));
    }

    #[test]
    fn case_default_ports_and_trailing_slashes_are_normalised() {
        let p = policy(&["HTTPS://App.Example:443/", "http://[::1]:8080"]);
        // The header is echoed as sent.
        assert_eq!(p.check(Some("https://app.example"), OWN), allow("https://app.example"));
        assert_eq!(p.check(Some("https://APP.example"), OWN), allow("https://APP.example"));
        assert_eq!(p.check(Some("http://[::1]:8080"), OWN), allow("http://[::1]:8080"));
        assert_eq!(normalise_origin("http://Example.COM:80"), Some("http://example.com".into()));
        assert_eq!(normalise_origin("https://example.com:08443"), Some("https://example.com:8443".into()));
        assert_eq!(normalise_origin("capacitor://localhost"), Some("capacitor://localhost".into()));
    }

    #[test]
    fn entries_that_are_not_origins_are_config_errors() {
        for bad in [
            "",
            "app.example",
            "https://",
            "https://app.example/path",
            "https://u@app.example",
            "https://a:x",
            "https://a:70000",
            "https://a.example?x",
            " https://a.example",
            "https://[::1",
        ] {
            let config = BrowserConfig { allowed_origins: vec![bad.into()], ..Default::default() };
            let err = OriginPolicy::new(&config).unwrap_err();
            assert!(err.contains("is not an origin"), "{bad}: {err}");
        }
    }

    #[test]
    fn wildcard_allows_any_origin_without_credentials() {
        let p = policy(&["*"]);
        let any = Decision::Allow { allow_origin: "*".into(), credentials: false };
        assert_eq!(p.check(Some("https://anyone.example"), OWN), any);
        // Listed and same-origin requests keep their credentials next to the wildcard.
        let p = policy(&["*", "https://app.example"]);
        assert_eq!(p.check(Some("https://app.example"), OWN), allow("https://app.example"));
        assert_eq!(p.check(Some("http://gateway.example:8080"), OWN), allow("http://gateway.example:8080"));
        assert_eq!(p.check(Some("https://other.example"), OWN), any);
        // Neither a malformed origin nor "null" is "any origin".
        assert_eq!(p.check(Some("garbage"), OWN), refuse("garbage"));
        assert_eq!(p.check(Some("null"), OWN), refuse("null"));
    }

    #[test]
    fn same_origin_is_always_allowed() {
        let p = policy(&[]);
        assert_eq!(p.check(Some("http://gateway.example:8080"), OWN), allow("http://gateway.example:8080"));
        assert_eq!(
            p.check(Some("http://GATEWAY.example:8080"), Some("http://gateway.example:8080/")),
            allow("http://GATEWAY.example:8080")
        );
        assert_eq!(
            p.check(Some("https://gateway.example"), Some("https://gateway.example:443")),
            allow("https://gateway.example")
        );
        // Another scheme or port is another origin.
        assert_eq!(p.check(Some("https://gateway.example:8080"), OWN), refuse("https://gateway.example:8080"));
        assert_eq!(p.check(Some("http://gateway.example"), OWN), refuse("http://gateway.example"));
        // Unknown own origin: nothing is same-origin.
        assert_eq!(p.check(Some("http://gateway.example:8080"), None), refuse("http://gateway.example:8080"));
    }

    #[test]
    fn missing_origin_follows_the_setting() {
        let p = policy(&["https://app.example"]);
        assert_eq!(p.check(None, OWN), Decision::NoOrigin);
        let config = BrowserConfig { allow_missing_origin: false, ..Default::default() };
        let p = OriginPolicy::new(&config).unwrap();
        assert_eq!(p.check(None, OWN), Decision::Refuse("requests without an Origin header are not allowed".into()));
    }

    #[test]
    fn null_origin_is_refused_unless_listed() {
        assert_eq!(policy(&[]).check(Some("null"), OWN), refuse("null"));
        assert_eq!(policy(&["null"]).check(Some("null"), OWN), allow("null"));
    }

    #[test]
    fn credentials_follow_the_setting() {
        let config = BrowserConfig {
            allowed_origins: vec!["https://app.example".into()],
            allow_credentials: false,
            ..Default::default()
        };
        let p = OriginPolicy::new(&config).unwrap();
        assert_eq!(
            p.check(Some("https://app.example"), OWN),
            Decision::Allow { allow_origin: "https://app.example".into(), credentials: false }
        );
    }

    #[test]
    fn requested_headers_must_be_on_the_allowlist() {
        assert_eq!(allowed_request_headers("Authorization, last-event-id"), Ok("authorization, last-event-id".into()));
        assert_eq!(allowed_request_headers(" ,X-Parse-Session-Token,"), Ok("x-parse-session-token".into()));
        assert_eq!(allowed_request_headers(""), Ok(String::new()));
        assert_eq!(allowed_request_headers("authorization, x-evil"), Err("header x-evil is not allowed".into()));
    }
}
