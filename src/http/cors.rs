//! Browser rules: which web origins may use the gateway. CORS (with preflight) for the HTTP and
//! SSE endpoints, and an Origin check on WebSocket upgrades, which CORS does not cover: a browser
//! opens a WebSocket to any host from any page, so only the server's check keeps another site
//! from using it.
//!
//! One decision, [`OriginPolicy::check`], serves both, in one place: [`apply`] (the middleware
//! installed in `app.rs`) runs it for every request, WebSocket upgrades included (those before
//! the handshake, and without CORS headers). A refused request gets a JSON 403 and never reaches
//! its handler.
//!
//! Which origins are the gateway's own is configuration (`public_origins`), never something a
//! request says about itself. The Host header names whatever the page's address was: a page on
//! `http://evil.example` whose name an attacker re-points at this gateway's address (DNS
//! rebinding) sends `Host: evil.example` with `Origin: http://evil.example`, so a "same-origin"
//! test built on Host would let any site in. The decision therefore reads neither Host nor
//! `X-Forwarded-Host`, `X-Forwarded-Proto` or `Forwarded`, which any client can send too. The
//! only other input is the address the server listens on (not the request's): without
//! `public_origins`, a loopback listener's own origins are allowed (see `is_loopback_own`).
//! Pages served by the gateway that only read need none of this: browsers send no Origin on a
//! same-origin GET, so the demo page's EventSource passes as a request without an Origin.

use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::is_upgrade;

/// `[browser]` config section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrowserConfig {
    /// Other sites' origins allowed to use the HTTP/SSE endpoints cross-origin and to open
    /// WebSockets: `scheme://host[:port]`, compared case-insensitively, default ports and a
    /// trailing slash ignored. `"*"` allows any origin, answered with
    /// `Access-Control-Allow-Origin: *` and without credentials; origins also listed explicitly
    /// (here or in `public_origins`) keep their credentials. `"null"` (sandboxed frames, `file:`
    /// pages) is allowed only when listed itself, never by `"*"`. Empty (the default): no other
    /// site.
    pub allowed_origins: Vec<String>,
    /// The origins the gateway itself is served at, as browsers address it (behind a TLS proxy,
    /// the proxy's `https://live.example.com`): pages there, such as the demo page, are allowed
    /// exactly like `allowed_origins` entries, credentials included; only `http://` and
    /// `https://` origins. Empty (the default): when the server listens on a loopback address,
    /// `http://localhost:<port>` and `http://<listen address>:<port>`, nothing otherwise; a
    /// non-empty list replaces that default. A request's Host header never makes an origin the
    /// gateway's own.
    pub public_origins: Vec<String>,
    /// Requests without an Origin header (native apps, curl, server to server) are allowed;
    /// when false they are refused with 403, and so are same-origin GETs from pages served by
    /// the gateway (the demo page's EventSource), which browsers send without one.
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
            public_origins: Vec::new(),
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
    /// Allowed and public origins, normalised; `"null"` kept as is.
    origins: HashSet<String>,
    /// `public_origins` is empty, so a loopback listener's own origins stand in for it.
    loopback_default: bool,
    any: bool,
    allow_missing: bool,
    credentials: bool,
    max_age: HeaderValue,
}

impl OriginPolicy {
    /// Fails with a one-line message when an entry of `allowed_origins` or `public_origins` is
    /// not an origin of its kind.
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
                        .ok_or_else(|| format!("allowed_origins: {entry:?} is not an origin (scheme://host[:port])"))?;
                    origins.insert(origin);
                }
            }
        }
        for entry in &config.public_origins {
            origins.insert(public_origin(entry)?);
        }
        Ok(OriginPolicy {
            origins,
            loopback_default: config.public_origins.is_empty(),
            any,
            allow_missing: config.allow_missing_origin,
            credentials: config.allow_credentials,
            max_age: HeaderValue::from(config.max_age_secs),
        })
    }

    /// The decision for a request carrying `origin` (its Origin header, if any) to a server
    /// listening on `listener` (the bound address, which no request can change).
    pub fn check(&self, origin: Option<&str>, listener: SocketAddr) -> Decision {
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
        let own = self.loopback_default && is_loopback_own(&key, listener);
        if own || self.origins.contains(&key) {
            Decision::Allow { allow_origin: origin.to_string(), credentials: self.credentials }
        } else if self.any && key != "null" {
            // The spec forbids credentials with `*`; reflecting any origin with credentials
            // instead would let every site read a visitor's cookie-authenticated streams.
            Decision::Allow { allow_origin: "*".into(), credentials: false }
        } else {
            refused()
        }
    }

    /// The decision for an actix request: its Origin header, and the address its server listens
    /// on. Host and forwarding headers are not read (see the module doc).
    pub fn decide(&self, req: &HttpRequest) -> Decision {
        let origin = match req.headers().get(header::ORIGIN).map(|v| v.to_str()) {
            None => None,
            Some(Ok(origin)) => Some(origin),
            Some(Err(_)) => return Decision::Refuse("the Origin header is not valid".into()),
        };
        self.check(origin, req.app_config().local_addr())
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

/// A `public_origins` entry, normalised. Pages are served over HTTP(S), and their WebSockets
/// carry the page's origin, so a `ws://` entry (a common slip) could never match anything.
fn public_origin(entry: &str) -> Result<String, String> {
    if entry == "*" || entry == "null" {
        return Err(format!(
            "public_origins: {entry:?} is not an address the gateway is served at; list it in allowed_origins instead"
        ));
    }
    let origin = normalise_origin(entry)
        .ok_or_else(|| format!("public_origins: {entry:?} is not an origin (http[s]://host[:port])"))?;
    if !origin.starts_with("http://") && !origin.starts_with("https://") {
        return Err(format!("public_origins: {entry:?} is not an http:// or https:// origin"));
    }
    Ok(origin)
}

/// Whether `origin` (normalised) is one of a loopback `listener`'s own origins:
/// `http://localhost:<port>` or `http://<listen address>:<port>`. Only browsers on this machine
/// reach a loopback listener, and a page at that address and port is served by this gateway, so
/// the default is safe without configuration. On any other address nothing is the gateway's
/// own until `public_origins` says so: its public name is not something it can know.
fn is_loopback_own(origin: &str, listener: SocketAddr) -> bool {
    let address = match listener.ip() {
        ip if !ip.is_loopback() => return false,
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    let port = listener.port();
    ["localhost", address.as_str()]
        .iter()
        .any(|host| normalise_origin(&format!("http://{host}:{port}")).as_deref() == Some(origin))
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

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|o| o.to_string()).collect()
    }

    fn policy(origins: &[&str]) -> OriginPolicy {
        policy_with(origins, &[])
    }

    fn policy_with(allowed: &[&str], public: &[&str]) -> OriginPolicy {
        let config =
            BrowserConfig { allowed_origins: strings(allowed), public_origins: strings(public), ..Default::default() };
        OriginPolicy::new(&config).unwrap()
    }

    fn listening(address: &str) -> SocketAddr {
        address.parse().unwrap()
    }

    fn allow(origin: &str) -> Decision {
        Decision::Allow { allow_origin: origin.into(), credentials: true }
    }

    fn refuse(origin: &str) -> Decision {
        Decision::Refuse(format!("origin {origin} is not allowed"))
    }

    /// A listener that is not on loopback: no origin is the gateway's own unless configured.
    const OWN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(192, 0, 2, 1), 8080));

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
        // Listed and same-origin (public) requests keep their credentials next to the wildcard.
        let p = policy_with(&["*", "https://app.example"], &["http://gateway.example:8080"]);
        assert_eq!(p.check(Some("https://app.example"), OWN), allow("https://app.example"));
        assert_eq!(p.check(Some("http://gateway.example:8080"), OWN), allow("http://gateway.example:8080"));
        assert_eq!(p.check(Some("https://other.example"), OWN), any);
        // Neither a malformed origin nor "null" is "any origin".
        assert_eq!(p.check(Some("garbage"), OWN), refuse("garbage"));
        assert_eq!(p.check(Some("null"), OWN), refuse("null"));
    }

    #[test]
    fn public_origins_are_the_gateways_own() {
        // Was "same-origin is always allowed", judged against the request's own scheme://Host;
        // the gateway's own origins are now configured, with the same normalisation.
        let p = policy_with(&[], &["http://gateway.example:8080/", "HTTPS://gateway.example:443"]);
        assert_eq!(p.check(Some("http://gateway.example:8080"), OWN), allow("http://gateway.example:8080"));
        assert_eq!(p.check(Some("http://GATEWAY.example:8080"), OWN), allow("http://GATEWAY.example:8080"));
        assert_eq!(p.check(Some("https://gateway.example"), OWN), allow("https://gateway.example"));
        // Another scheme or port is another origin.
        assert_eq!(p.check(Some("https://gateway.example:8080"), OWN), refuse("https://gateway.example:8080"));
        assert_eq!(p.check(Some("http://gateway.example"), OWN), refuse("http://gateway.example"));
        // Nothing configured and not on loopback: nothing is the gateway's own.
        assert_eq!(policy(&[]).check(Some("http://gateway.example:8080"), OWN), refuse("http://gateway.example:8080"));
    }

    #[test]
    fn a_loopback_listener_owns_its_loopback_origins_by_default() {
        let p = policy(&[]);
        let at = listening("127.0.0.1:8080");
        for own in ["http://127.0.0.1:8080", "http://localhost:8080", "http://LocalHost:8080/"] {
            assert_eq!(p.check(Some(own), at), allow(own), "{own}");
        }
        for other in [
            "https://127.0.0.1:8080",
            "http://127.0.0.1:8081",
            "http://127.0.0.2:8080",
            "http://[::1]:8080",
            "http://localhost",
            "http://evil.example:8080",
        ] {
            assert_eq!(p.check(Some(other), at), refuse(other), "{other}");
        }
        assert_eq!(p.check(Some("http://[::1]:9000"), listening("[::1]:9000")), allow("http://[::1]:9000"));
        assert_eq!(p.check(Some("http://127.0.0.1:9000"), listening("[::1]:9000")), refuse("http://127.0.0.1:9000"));
        // The default port is spelled away on both sides.
        assert_eq!(p.check(Some("http://localhost"), listening("127.0.0.1:80")), allow("http://localhost"));
        // Listening on every interface: the gateway's public name is unknown, nothing is its own.
        assert_eq!(p.check(Some("http://localhost:8080"), listening("0.0.0.0:8080")), refuse("http://localhost:8080"));
        // Configured public origins replace the default.
        let p = policy_with(&[], &["https://live.example"]);
        assert_eq!(p.check(Some("http://127.0.0.1:8080"), at), refuse("http://127.0.0.1:8080"));
        assert_eq!(p.check(Some("https://live.example"), at), allow("https://live.example"));
        // Listed origins do not: they are other sites.
        assert_eq!(
            policy(&["https://app.example"]).check(Some("http://localhost:8080"), at),
            allow("http://localhost:8080")
        );
    }

    #[test]
    fn the_host_and_forwarding_headers_never_make_an_origin_allowed() {
        use actix_web::test::TestRequest;
        let rebinding = |origin: &str, host: &str| {
            TestRequest::get()
                .uri("/events/messages")
                .insert_header((header::HOST, host))
                .insert_header((header::ORIGIN, origin))
                .insert_header(("X-Forwarded-Host", host))
                .insert_header(("X-Forwarded-Proto", "https"))
                .insert_header((header::FORWARDED, format!("proto=https;host={host}")))
                .to_http_request()
        };
        for p in [policy(&[]), policy_with(&[], &["https://live.example"])] {
            let decision = p.decide(&rebinding("http://evil.example", "evil.example"));
            assert_eq!(decision, refuse("http://evil.example"));
            let decision = p.decide(&rebinding("https://evil.example", "evil.example"));
            assert_eq!(decision, refuse("https://evil.example"));
        }
        // The test server listens on 127.0.0.1:8080: its own origin passes whatever Host says,
        // and so does a configured one.
        let p = policy(&[]);
        assert_eq!(p.decide(&rebinding("http://127.0.0.1:8080", "evil.example")), allow("http://127.0.0.1:8080"));
        let p = policy_with(&[], &["https://live.example"]);
        assert_eq!(p.decide(&rebinding("https://live.example", "live.example")), allow("https://live.example"));
    }

    #[test]
    fn public_origins_must_be_http_origins() {
        for (bad, why) in [
            ("*", "is not an address the gateway is served at"),
            ("null", "is not an address the gateway is served at"),
            ("ws://live.example", "is not an http:// or https:// origin"),
            ("capacitor://localhost", "is not an http:// or https:// origin"),
            ("live.example", "is not an origin"),
            ("https://live.example/app", "is not an origin"),
        ] {
            let config = BrowserConfig { public_origins: vec![bad.into()], ..Default::default() };
            let err = OriginPolicy::new(&config).unwrap_err();
            assert!(err.starts_with("public_origins: ") && err.contains(bad) && err.contains(why), "{bad}: {err}");
        }
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
