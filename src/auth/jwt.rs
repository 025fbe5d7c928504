//! JWT verification with configured keys: the `[jwt]` config section, loading its keys (HMAC
//! secrets, PEM public keys or certificates, a JWKS file) once at start-up, checking a token's
//! signature under a pinned algorithm that must fit the chosen key, its time and issuer/audience
//! claims, and turning it into [`Claims`]. Also owns the cheap shape test that tells a JWT from an
//! opaque session token. Nothing here does network I/O: keys come from local files only.
//!
//! The clock leeway is applied here once: [`Claims::expires_at`] of a verified token is its `exp`
//! plus `leeway_secs`, the instant it stops being accepted, so that every later decision about
//! its expiry (the identity check, the re-check timer) agrees with this verification.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::access::role_name;
use super::{Claims, TokenError};

/// Shorter HMAC secrets can be brute-forced offline from a single token.
const MIN_HMAC_SECRET_BYTES: usize = 32;
/// RSA moduli below this are factorable with public effort.
const MIN_RSA_BITS: usize = 2048;
/// Real tokens are a few hundred bytes to a few KiB; anything larger is refused before decoding.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Bounds the work of [`looks_like_jwt`] on hostile input.
const MAX_HEADER_CHARS: usize = 4 * 1024;
/// A token without `kid` is tried against at most this many keys, so one token costs a bounded
/// number of signature checks.
const MAX_KIDLESS_TRIES: usize = 8;
/// A larger leeway makes `exp` meaningless (and `now - leeway` must not underflow).
const MAX_LEEWAY_SECS: u64 = 3600;
/// Client-supplied strings echoed in error messages are cut to this many characters.
const MAX_ECHO_CHARS: usize = 64;

const ALGORITHM_NAMES: &str = "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

/// The `[jwt]` config section. JWT support is off while `algorithms` is empty.
///
/// Relative `pem_file` and `jwks_file` paths are resolved against the process's current
/// directory, not against the config file's directory.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Accepted algorithms, pinned (RFC 7518 names: HS256, HS384, HS512, RS256, RS384, RS512,
    /// PS256, PS384, PS512, ES256, ES384, EdDSA). Empty = JWT disabled. `none` is refused.
    pub algorithms: Vec<String>,
    /// Keys given inline or as PEM files.
    pub keys: Vec<JwtKeyConfig>,
    /// Path to a JWKS JSON file (RFC 7517 `{"keys":[...]}`); tokens pick a key by `kid`.
    /// Keys it holds that cannot verify a pinned algorithm (encryption keys, other curves) are
    /// skipped with a warning; a malformed key is an error.
    pub jwks_file: Option<String>,
    /// When non-empty, `iss` must be present and equal one of these.
    pub issuers: Vec<String>,
    /// When non-empty, `aud` must be present and contain one of these. When empty, `aud` is
    /// not checked.
    pub audiences: Vec<String>,
    /// Clock leeway for `exp` and `nbf`, in seconds (at most 3600): a token is accepted until
    /// `exp + leeway_secs`, at connect and subscribe as in re-checks while connected.
    pub leeway_secs: u64,
    /// Claim holding the user id; must be a non-empty string in the token.
    pub user_claim: String,
    /// Claim holding role names: an array of strings, or absent for no roles. A dotted path
    /// (`app_metadata.roles`) reaches into objects when no top-level claim has the full name.
    /// A `role:` prefix on a name is stripped.
    pub roles_claim: String,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            algorithms: Vec::new(),
            keys: Vec::new(),
            jwks_file: None,
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway_secs: 30,
            user_claim: "sub".into(),
            roles_claim: "roles".into(),
            require_exp: true,
        }
    }
}

/// One configured key: an optional `kid` and exactly one of `secret`, `secret_base64`,
/// `pem_file`.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtKeyConfig {
    /// Key id matched against the token header's `kid`. A key without one serves tokens that
    /// carry no `kid` or a `kid` no key has.
    pub kid: Option<String>,
    /// HMAC shared secret (UTF-8 bytes), at least 32 bytes.
    pub secret: Option<String>,
    /// HMAC shared secret in base64 (standard or URL-safe alphabet, padding optional).
    pub secret_base64: Option<String>,
    /// PEM public key (RSA, EC P-256/P-384, Ed25519) or X.509 certificate holding one.
    pub pem_file: Option<String>,
}

// Hand-written so that secrets never reach logs through `{:?}` of the config.
impl fmt::Debug for JwtKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "[redacted]");
        f.debug_struct("JwtKeyConfig")
            .field("kid", &self.kid)
            .field("secret", &redacted(&self.secret))
            .field("secret_base64", &redacted(&self.secret_base64))
            .field("pem_file", &self.pem_file)
            .finish()
    }
}

/// What kind of key material a key is; decides which algorithms may ever be verified with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    /// The heart of the algorithm-confusion defence: a public key never serves as an HMAC
    /// secret, and an EC key only serves the algorithm of its own curve.
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Hmac => matches!(alg, HS256 | HS384 | HS512),
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }

    /// Any one algorithm this kind fits, to build a verifier with at load time.
    fn probe_algorithm(self) -> Algorithm {
        match self {
            KeyKind::Hmac => Algorithm::HS256,
            KeyKind::Rsa => Algorithm::RS256,
            KeyKind::EcP256 => Algorithm::ES256,
            KeyKind::EcP384 => Algorithm::ES384,
            KeyKind::Ed25519 => Algorithm::EdDSA,
        }
    }

    fn name(self) -> &'static str {
        match self {
            KeyKind::Hmac => "HMAC secret",
            KeyKind::Rsa => "RSA key",
            KeyKind::EcP256 => "EC P-256 key",
            KeyKind::EcP384 => "EC P-384 key",
            KeyKind::Ed25519 => "Ed25519 key",
        }
    }
}

#[derive(Debug)]
struct VerifyKey {
    kid: Option<String>,
    key: DecodingKey,
    /// Pinned algorithms this key may verify: fit its kind and, for a JWK with `alg`, that one.
    algorithms: Vec<Algorithm>,
}

/// Verifies JWTs against the keys and rules of a [`JwtConfig`]. Built once at start-up; cheap to
/// share behind an `Arc`.
#[derive(Debug)]
pub struct JwtVerifier {
    keys: Vec<VerifyKey>,
    /// One prepared validation per accepted algorithm (pinned and served by some key).
    validations: Vec<(Algorithm, Validation)>,
    user_claim: String,
    roles_claim: String,
    /// `leeway_secs`, added to `exp` in [`Claims::expires_at`].
    leeway: Duration,
}

impl JwtVerifier {
    /// `Ok(None)` when `config.algorithms` is empty (JWT disabled). Reads key files now, so a
    /// bad key stops start-up with a one-line message instead of failing every token later.
    pub fn from_config(config: &JwtConfig) -> Result<Option<JwtVerifier>, String> {
        if config.algorithms.is_empty() {
            return Ok(None);
        }
        let pinned = parse_algorithms(&config.algorithms)?;
        if config.leeway_secs > MAX_LEEWAY_SECS {
            return Err(format!("jwt.leeway_secs is {}; at most {MAX_LEEWAY_SECS} is allowed", config.leeway_secs));
        }
        if config.user_claim.is_empty() {
            return Err("jwt.user_claim must not be empty".into());
        }
        if config.roles_claim.is_empty() {
            return Err("jwt.roles_claim must not be empty".into());
        }

        let mut keys = Vec::new();
        for (index, key) in config.keys.iter().enumerate() {
            keys.push(load_config_key(key, index, &pinned)?);
        }
        if let Some(path) = &config.jwks_file {
            keys.extend(load_jwks(path, &pinned)?);
        }
        if keys.is_empty() {
            return Err("jwt: no keys configured; set jwt.keys or jwt.jwks_file".into());
        }
        for (i, key) in keys.iter().enumerate() {
            if let Some(kid) = &key.kid {
                if keys[..i].iter().any(|other| other.kid.as_ref() == Some(kid)) {
                    return Err(format!("jwt: duplicate key id {kid:?}"));
                }
            }
        }

        let mut validations = Vec::new();
        for alg in pinned {
            let served = keys.iter().filter(|k| k.algorithms.contains(&alg)).count();
            if served == 0 {
                tracing::warn!(algorithm = ?alg, "jwt: no configured key fits this algorithm; its tokens are refused");
                continue;
            }
            if served > MAX_KIDLESS_TRIES {
                let limit = MAX_KIDLESS_TRIES;
                tracing::warn!(algorithm = ?alg, keys = served, "jwt: a token without kid tries {limit} keys at most");
            }
            validations.push((alg, validation_for(alg, config)));
        }

        Ok(Some(JwtVerifier {
            keys,
            validations,
            user_claim: config.user_claim.clone(),
            roles_claim: config.roles_claim.clone(),
            leeway: Duration::from_secs(config.leeway_secs),
        }))
    }

    /// Checks `token` and returns who it names, and until when it is accepted (`exp` plus the
    /// leeway). The header's `alg` must be pinned and must fit the key: the key is the one named
    /// by `kid`, or else each key without a `kid` (or, for a token without `kid`, each key) that
    /// fits `alg`, up to a small bound.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("token is too long"));
        }
        let header = parse_header(token).ok_or_else(|| invalid("token is not a well-formed JWT"))?;
        if header.has_crit {
            // RFC 7515 §4.1.11: extensions we do not implement must make the token unacceptable.
            return Err(invalid("token uses critical header extensions that are not supported"));
        }
        let (alg, validation) = self.validation(&header.alg)?;

        let mut tried = 0;
        for key in self.candidates(alg, header.kid.as_deref())? {
            tried += 1;
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => return self.claims(&data.claims),
                // Another candidate may still hold the right key.
                Err(e) if is_signature_failure(e.kind()) => continue,
                Err(e) => return Err(map_error(e.kind())),
            }
        }
        if tried == 0 {
            return Err(invalid(format!("no key accepts algorithm {alg:?}")));
        }
        Err(invalid("token signature is invalid"))
    }

    fn validation(&self, name: &str) -> Result<(Algorithm, &Validation), TokenError> {
        let not_accepted = || {
            // Only echo names we know, never arbitrary client text.
            match Algorithm::from_str(name) {
                Ok(alg) => invalid(format!("algorithm {alg:?} is not accepted")),
                Err(_) if name.eq_ignore_ascii_case("none") => invalid("algorithm none is not accepted"),
                Err(_) => invalid("algorithm is not supported"),
            }
        };
        let alg = Algorithm::from_str(name).map_err(|_| not_accepted())?;
        self.validations.iter().find(|(a, _)| *a == alg).map(|(a, v)| (*a, v)).ok_or_else(not_accepted)
    }

    fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Result<Vec<&VerifyKey>, TokenError> {
        let fits = |k: &&VerifyKey| k.algorithms.contains(&alg);
        let Some(kid) = kid else {
            return Ok(self.keys.iter().filter(fits).take(MAX_KIDLESS_TRIES).collect());
        };
        if let Some(named) = self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
            return if fits(&named) {
                Ok(vec![named])
            } else {
                Err(invalid(format!("algorithm {alg:?} is not accepted for key id {:?}", echo(kid))))
            };
        }
        // Keys configured without a kid accept any token, whatever id its issuer gave it.
        let unnamed: Vec<&VerifyKey> =
            self.keys.iter().filter(|k| k.kid.is_none()).filter(fits).take(MAX_KIDLESS_TRIES).collect();
        if unnamed.is_empty() {
            return Err(invalid(format!("unknown key id {:?}", echo(kid))));
        }
        Ok(unnamed)
    }

    fn claims(&self, claims: &Map<String, Value>) -> Result<Claims, TokenError> {
        let user_id = match claim(claims, &self.user_claim) {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => return Err(invalid(format!("token has no user id ({:?} claim)", self.user_claim))),
        };
        let roles = match claim(claims, &self.roles_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut roles = Vec::with_capacity(items.len());
                for item in items {
                    let Value::String(name) = item else {
                        return Err(invalid(format!("{:?} claim must be an array of strings", self.roles_claim)));
                    };
                    let name = role_name(name);
                    if !name.is_empty() {
                        roles.push(name.to_string());
                    }
                }
                roles
            }
            Some(_) => return Err(invalid(format!("{:?} claim must be an array of strings", self.roles_claim))),
        };
        let expires_at = match claims.get("exp") {
            None | Some(Value::Null) => None,
            Some(exp) => {
                let accepted_until = exp_time(exp).and_then(|at| at.checked_add(self.leeway));
                Some(accepted_until.ok_or_else(|| invalid("\"exp\" claim is out of range"))?)
            }
        };
        Ok(Claims { user_id, roles, expires_at })
    }
}

/// Cheap shape test that tells JWTs from opaque session tokens: three base64url segments
/// separated by dots, the first decoding to a JSON object with an `"alg"` string. It does not
/// check the signature. Never panics; work is bounded by the header size cap.
pub fn looks_like_jwt(token: &str) -> bool {
    parse_header(token).is_some()
}

fn invalid(why: impl Into<String>) -> TokenError {
    TokenError::Invalid(why.into())
}

/// Client text cut short for error messages.
fn echo(s: &str) -> String {
    s.chars().take(MAX_ECHO_CHARS).collect()
}

struct RawHeader {
    alg: String,
    kid: Option<String>,
    has_crit: bool,
}

/// Reads the header without trusting it, so a refused `alg` (including `none`) gets a precise
/// message rather than a generic parse failure.
fn parse_header(token: &str) -> Option<RawHeader> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let b64url = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if header.is_empty() || header.len() > MAX_HEADER_CHARS || payload.is_empty() {
        return None;
    }
    if !b64url(header) || !b64url(payload) || !b64url(signature) {
        return None;
    }
    let json = URL_SAFE_NO_PAD.decode(header).ok()?;
    let Value::Object(fields) = serde_json::from_slice::<Value>(&json).ok()? else {
        return None;
    };
    let alg = fields.get("alg")?.as_str()?.to_string();
    let kid = match fields.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return None,
    };
    Some(RawHeader { alg, kid, has_crit: fields.contains_key("crit") })
}

/// A claim by exact name, else by dotted path through nested objects (names such as
/// `https://example.com/roles` contain dots and must still work).
fn claim<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let mut segments = path.split('.');
    let mut value = claims.get(segments.next()?)?;
    for segment in segments {
        value = value.as_object()?.get(segment)?;
    }
    Some(value)
}

fn exp_time(exp: &Value) -> Option<SystemTime> {
    let secs = match exp.as_u64() {
        Some(secs) => Duration::from_secs(secs),
        None => Duration::try_from_secs_f64(exp.as_f64()?).ok()?,
    };
    UNIX_EPOCH.checked_add(secs)
}

fn is_signature_failure(kind: &ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
    )
}

fn map_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => invalid("token is not valid yet"),
        ErrorKind::InvalidIssuer => invalid("issuer is not accepted"),
        ErrorKind::InvalidAudience => invalid("audience is not accepted"),
        // The claim names come from our own validation settings, not from the token.
        ErrorKind::MissingRequiredClaim(name) => invalid(format!("token has no valid {name:?} claim")),
        ErrorKind::InvalidClaimFormat(name) => invalid(format!("{name:?} claim must be a number")),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => invalid("algorithm is not accepted"),
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            invalid("token is not a well-formed JWT")
        }
        _ => invalid("token is not valid"),
    }
}

fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    let mut pinned = Vec::new();
    for name in names {
        if name.eq_ignore_ascii_case("none") {
            return Err("jwt.algorithms: \"none\" is refused: unsigned tokens would let anyone claim any user".into());
        }
        let alg = Algorithm::from_str(name)
            .map_err(|_| format!("jwt.algorithms: unknown algorithm {name:?} (expected one of {ALGORITHM_NAMES})"))?;
        if !pinned.contains(&alg) {
            pinned.push(alg);
        }
    }
    Ok(pinned)
}

fn validation_for(alg: Algorithm, config: &JwtConfig) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = config.leeway_secs;
    // A present exp or nbf is always enforced; require_exp only decides whether exp may be absent.
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = Vec::new();
    if config.require_exp {
        required.push("exp");
    }
    if !config.issuers.is_empty() {
        validation.set_issuer(&config.issuers);
        required.push("iss");
    }
    // Without configured audiences, aud is ignored rather than refused.
    validation.validate_aud = !config.audiences.is_empty();
    if !config.audiences.is_empty() {
        validation.set_audience(&config.audiences);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    validation
}

fn load_config_key(config: &JwtKeyConfig, index: usize, pinned: &[Algorithm]) -> Result<VerifyKey, String> {
    let label = match &config.kid {
        Some(kid) => format!("jwt.keys[{index}] (kid {kid:?})"),
        None => format!("jwt.keys[{index}]"),
    };
    if config.kid.as_deref() == Some("") {
        return Err(format!("{label}: kid must not be empty"));
    }
    let sources = [config.secret.is_some(), config.secret_base64.is_some(), config.pem_file.is_some()];
    if sources.iter().filter(|set| **set).count() != 1 {
        return Err(format!("{label}: set exactly one of secret, secret_base64, pem_file"));
    }

    let (key, kind) = if let Some(secret) = &config.secret {
        (hmac_key(secret.as_bytes(), &label)?, KeyKind::Hmac)
    } else if let Some(encoded) = &config.secret_base64 {
        let bytes =
            decode_base64_secret(encoded).ok_or_else(|| format!("{label}: secret_base64 is not valid base64"))?;
        (hmac_key(&bytes, &label)?, KeyKind::Hmac)
    } else if let Some(path) = &config.pem_file {
        load_pem(path).map_err(|why| format!("{label}: {why}"))?
    } else {
        return Err(format!("{label}: set exactly one of secret, secret_base64, pem_file"));
    };

    let algorithms: Vec<Algorithm> = pinned.iter().copied().filter(|alg| kind.fits(*alg)).collect();
    if algorithms.is_empty() {
        return Err(format!("{label}: {} fits none of the accepted algorithms ({})", kind.name(), names(pinned)));
    }
    Ok(VerifyKey { kid: config.kid.clone(), key, algorithms })
}

fn names(algorithms: &[Algorithm]) -> String {
    algorithms.iter().map(|alg| format!("{alg:?}")).collect::<Vec<_>>().join(", ")
}

fn hmac_key(secret: &[u8], label: &str) -> Result<DecodingKey, String> {
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        return Err(format!(
            "{label}: HMAC secret is {} bytes; at least {MIN_HMAC_SECRET_BYTES} are required (shorter is guessable)",
            secret.len()
        ));
    }
    Ok(DecodingKey::from_secret(secret))
}

fn decode_base64_secret(encoded: &str) -> Option<Vec<u8>> {
    let config = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let alphabet = if encoded.contains(['-', '_']) { &alphabet::URL_SAFE } else { &alphabet::STANDARD };
    GeneralPurpose::new(alphabet, config).decode(encoded.trim()).ok()
}

/// A public key from a PEM file: `PUBLIC KEY` (SPKI), `RSA PUBLIC KEY` (PKCS#1) or a
/// `CERTIFICATE` whose subject key is used (its validity dates are not checked).
fn load_pem(path: &str) -> Result<(DecodingKey, KeyKind), String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read pem_file {path:?}: {e}"))?;
    if pem.windows(b"PRIVATE KEY-----".len()).any(|w| w == b"PRIVATE KEY-----") {
        return Err(format!(
            "pem_file {path:?} holds a private key; give the public key instead (openssl pkey -in KEY -pubout)"
        ));
    }
    let key = DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .map_err(|_| format!("pem_file {path:?} holds no RSA, EC or Ed25519 public key or certificate"))?;
    let kind = classify(&key).map_err(|why| format!("pem_file {path:?}: {why}"))?;
    Ok((key, kind))
}

/// Parses the key material now (jsonwebtoken would only do so per token) and tells its kind.
fn classify(key: &DecodingKey) -> Result<KeyKind, String> {
    let jwk = Jwk::from_decoding_key(key, None).map_err(|_| "key cannot be parsed".to_string())?;
    let kind = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => KeyKind::Hmac,
        AlgorithmParameters::RSA(rsa) => {
            let bits = rsa_bits(&rsa.n).ok_or("RSA key cannot be parsed")?;
            if bits < MIN_RSA_BITS {
                return Err(format!("RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"));
            }
            KeyKind::Rsa
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => KeyKind::EcP256,
            EllipticCurve::P384 => KeyKind::EcP384,
            _ => return Err("unsupported elliptic curve (P-256 and P-384 are)".into()),
        },
        AlgorithmParameters::OctetKeyPair(_) => KeyKind::Ed25519,
        _ => return Err("unsupported key type".into()),
    };
    // Building a verifier validates EC points and Ed25519 keys; the dummy signature never matches.
    jsonwebtoken::crypto::verify("AA", b"", key, kind.probe_algorithm())
        .map_err(|_| format!("{} cannot be parsed", kind.name()))?;
    Ok(kind)
}

fn rsa_bits(modulus_b64: &str) -> Option<usize> {
    let n = URL_SAFE_NO_PAD.decode(modulus_b64.trim_end_matches('=')).ok()?;
    let first = n.iter().position(|b| *b != 0)?;
    Some((n.len() - first) * 8 - n[first].leading_zeros() as usize)
}

fn load_jwks(path: &str, pinned: &[Algorithm]) -> Result<Vec<VerifyKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read jwt.jwks_file {path:?}: {e}"))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| format!("jwt.jwks_file {path:?} is not a JWKS ({{\"keys\":[…]}}): {e}"))?;
    let mut keys = Vec::new();
    for (index, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.clone();
        let label = match &kid {
            Some(kid) => format!("jwt.jwks_file {path:?} key {kid:?}"),
            None => format!("jwt.jwks_file {path:?} key #{index}"),
        };
        if let Some(why) = unusable_jwk(jwk, pinned) {
            tracing::warn!("{label}: skipped: {why}");
            continue;
        }
        if kid.as_deref() == Some("") {
            return Err(format!("{label}: kid must not be empty"));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|_| format!("{label}: key cannot be parsed"))?;
        let kind = classify(&key).map_err(|why| format!("{label}: {why}"))?;
        if kind == KeyKind::Hmac {
            let secret = key.try_get_as_bytes().map_err(|_| format!("{label}: key cannot be parsed"))?;
            hmac_key(secret, &label)?;
        }
        let declared = jwk.common.key_algorithm.and_then(|a| Algorithm::from_str(&a.to_string()).ok());
        let algorithms: Vec<Algorithm> =
            pinned.iter().copied().filter(|alg| kind.fits(*alg) && declared.is_none_or(|d| d == *alg)).collect();
        if algorithms.is_empty() {
            tracing::warn!("{label}: skipped: {} fits none of the accepted algorithms", kind.name());
            continue;
        }
        keys.push(VerifyKey { kid, key, algorithms });
    }
    Ok(keys)
}

/// Why a JWKS entry is not for us (as opposed to broken), if it is not.
fn unusable_jwk(jwk: &Jwk, pinned: &[Algorithm]) -> Option<String> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return Some("not a signature key (use)".into());
    }
    if let Some(declared) = jwk.common.key_algorithm {
        match Algorithm::from_str(&declared.to_string()) {
            Ok(alg) if !pinned.contains(&alg) => return Some(format!("its algorithm {alg:?} is not accepted")),
            Ok(_) => {}
            Err(_) => return Some(format!("algorithm {declared} is not a supported signature algorithm")),
        }
    }
    match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) if !matches!(ec.curve, EllipticCurve::P256 | EllipticCurve::P384) => {
            Some("unsupported curve".into())
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve != EllipticCurve::Ed25519 => {
            Some("unsupported curve".into())
        }
        AlgorithmParameters::Other(_) => Some("unsupported key type".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, get_current_timestamp, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test-only";

    fn fixture(name: &str) -> String {
        format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn read(name: &str) -> Vec<u8> {
        std::fs::read(fixture(name)).unwrap()
    }

    fn secret(kid: Option<&str>) -> JwtKeyConfig {
        JwtKeyConfig { kid: kid.map(Into::into), secret: Some(SECRET.into()), ..JwtKeyConfig::default() }
    }

    fn pem(kid: Option<&str>, file: &str) -> JwtKeyConfig {
        JwtKeyConfig { kid: kid.map(Into::into), pem_file: Some(fixture(file)), ..JwtKeyConfig::default() }
    }

    fn config(algorithms: &[&str], keys: Vec<JwtKeyConfig>) -> JwtConfig {
        JwtConfig { algorithms: algorithms.iter().map(|a| a.to_string()).collect(), keys, ..JwtConfig::default() }
    }

    fn verifier(config: &JwtConfig) -> JwtVerifier {
        JwtVerifier::from_config(config).unwrap().unwrap()
    }

    fn config_error(config: &JwtConfig) -> String {
        JwtVerifier::from_config(config).unwrap_err()
    }

    fn now() -> u64 {
        get_current_timestamp()
    }

    fn claims() -> Value {
        json!({"sub": "u1", "exp": now() + 600})
    }

    fn mint(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(Into::into);
        encode(&header, claims, key).unwrap()
    }

    fn hs256(claims: &Value) -> String {
        mint(Algorithm::HS256, None, claims, &EncodingKey::from_secret(SECRET.as_bytes()))
    }

    fn rsa_key() -> EncodingKey {
        EncodingKey::from_rsa_pem(&read("rsa_private.pem")).unwrap()
    }

    fn ec_key() -> EncodingKey {
        EncodingKey::from_ec_pem(&read("ec_private.pem")).unwrap()
    }

    /// A token assembled by hand, for headers jsonwebtoken refuses to produce.
    fn raw(header: &Value, claims: &Value, signature: &str) -> String {
        let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        format!("{}.{}.{signature}", part(header), part(claims))
    }

    fn refused(result: Result<Claims, TokenError>) -> String {
        match result {
            Err(TokenError::Invalid(why)) => why,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn disabled_without_algorithms() {
        assert!(JwtVerifier::from_config(&JwtConfig::default()).unwrap().is_none());
        let keyed = JwtConfig { keys: vec![secret(None)], ..JwtConfig::default() };
        assert!(JwtVerifier::from_config(&keyed).unwrap().is_none());
    }

    #[test]
    fn accepts_each_algorithm() {
        let all = ["HS256", "HS384", "HS512", "RS256", "PS256", "ES256", "EdDSA"];
        let keys = vec![
            secret(None),
            pem(None, "rsa_public.pem"),
            pem(None, "ec_public.pem"),
            pem(None, "ed25519_public.pem"),
        ];
        let v = verifier(&config(&all, keys));
        let exp = now() + 600;
        let claims = json!({"sub": "u1", "exp": exp});
        let hmac = EncodingKey::from_secret(SECRET.as_bytes());
        let ed = EncodingKey::from_ed_pem(&read("ed25519_private.pem")).unwrap();
        let tokens = [
            mint(Algorithm::HS256, None, &claims, &hmac),
            mint(Algorithm::HS384, None, &claims, &hmac),
            mint(Algorithm::HS512, None, &claims, &hmac),
            mint(Algorithm::RS256, None, &claims, &rsa_key()),
            mint(Algorithm::PS256, None, &claims, &rsa_key()),
            mint(Algorithm::ES256, None, &claims, &ec_key()),
            mint(Algorithm::EdDSA, None, &claims, &ed),
        ];
        for token in tokens {
            let got = v.verify(&token).unwrap_or_else(|e| panic!("{token}: {e}"));
            assert_eq!(got.user_id, "u1");
            assert!(got.roles.is_empty());
            // Accepted until exp plus the default leeway of 30 s.
            assert_eq!(got.expires_at, Some(UNIX_EPOCH + Duration::from_secs(exp + 30)));
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let v = verifier(&config(&["HS256"], vec![secret(None)]));
        let token = raw(&json!({"alg": "none", "typ": "JWT"}), &claims(), "");
        assert!(looks_like_jwt(&token));
        assert_eq!(refused(v.verify(&token)), "algorithm none is not accepted");
        let shouting = raw(&json!({"alg": "NONE"}), &claims(), "");
        assert_eq!(refused(v.verify(&shouting)), "algorithm none is not accepted");
        let unknown = raw(&json!({"alg": "XS999"}), &claims(), "c2ln");
        assert_eq!(refused(v.verify(&unknown)), "algorithm is not supported");
    }

    #[test]
    fn unpinned_algorithm_is_refused() {
        let v = verifier(&config(&["RS256"], vec![pem(None, "rsa_public.pem")]));
        assert_eq!(refused(v.verify(&hs256(&claims()))), "algorithm HS256 is not accepted");
        let ps = mint(Algorithm::PS256, None, &claims(), &rsa_key());
        assert_eq!(refused(v.verify(&ps)), "algorithm PS256 is not accepted");
        let es = mint(Algorithm::ES256, None, &claims(), &ec_key());
        assert_eq!(refused(v.verify(&es)), "algorithm ES256 is not accepted");
    }

    #[test]
    fn public_key_is_never_an_hmac_secret() {
        // The classic confusion: sign HS256 with the RSA public key's PEM bytes as the secret.
        let forged = |kid| mint(Algorithm::HS256, kid, &claims(), &EncodingKey::from_secret(&read("rsa_public.pem")));
        let rsa_only = verifier(&config(&["RS256"], vec![pem(None, "rsa_public.pem")]));
        assert_eq!(refused(rsa_only.verify(&forged(None))), "algorithm HS256 is not accepted");

        // Even with HS256 pinned for a real secret, the RSA key never serves HS256.
        let both =
            verifier(&config(&["RS256", "HS256"], vec![pem(Some("rsa"), "rsa_public.pem"), secret(Some("hmac"))]));
        assert_eq!(refused(both.verify(&forged(None))), "token signature is invalid");
        assert_eq!(refused(both.verify(&forged(Some("rsa")))), "algorithm HS256 is not accepted for key id \"rsa\"");
        assert_eq!(refused(both.verify(&forged(Some("hmac")))), "token signature is invalid");
        // The legitimate tokens still pass.
        assert!(both.verify(&mint(Algorithm::RS256, Some("rsa"), &claims(), &rsa_key())).is_ok());
        let hmac = EncodingKey::from_secret(SECRET.as_bytes());
        assert!(both.verify(&mint(Algorithm::HS256, Some("hmac"), &claims(), &hmac)).is_ok());
    }

    #[test]
    fn another_keys_signature_is_refused() {
        let v = verifier(&config(&["RS256"], vec![pem(None, "rsa_public.pem")]));
        let other = EncodingKey::from_rsa_pem(&read("rsa2_private.pem")).unwrap();
        let token = mint(Algorithm::RS256, None, &claims(), &other);
        assert_eq!(refused(v.verify(&token)), "token signature is invalid");
        // Tampered payload under a valid signature.
        let good = mint(Algorithm::RS256, None, &claims(), &rsa_key());
        let parts: Vec<&str> = good.split('.').collect();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&json!({"sub": "admin", "exp": now() + 600})).unwrap());
        let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
        assert_eq!(refused(v.verify(&tampered)), "token signature is invalid");
    }

    #[test]
    fn jwks_selects_key_by_kid() {
        let cfg = JwtConfig { jwks_file: Some(fixture("jwks.json")), ..config(&["RS256", "ES256"], vec![]) };
        let v = verifier(&cfg);
        assert_eq!(v.verify(&mint(Algorithm::RS256, Some("rsa-1"), &claims(), &rsa_key())).unwrap().user_id, "u1");
        assert_eq!(v.verify(&mint(Algorithm::ES256, Some("ec-1"), &claims(), &ec_key())).unwrap().user_id, "u1");
        // Without kid, the keys fitting the algorithm are tried.
        assert!(v.verify(&mint(Algorithm::ES256, None, &claims(), &ec_key())).is_ok());
        // The kid picks the key: an RS256 token naming the EC key is refused outright.
        let crossed = mint(Algorithm::RS256, Some("ec-1"), &claims(), &rsa_key());
        assert_eq!(refused(v.verify(&crossed)), "algorithm RS256 is not accepted for key id \"ec-1\"");
        let other = EncodingKey::from_rsa_pem(&read("rsa2_private.pem")).unwrap();
        let wrong = mint(Algorithm::RS256, Some("rsa-1"), &claims(), &other);
        assert_eq!(refused(v.verify(&wrong)), "token signature is invalid");
    }

    #[test]
    fn unknown_kid_is_refused() {
        let cfg = JwtConfig { jwks_file: Some(fixture("jwks.json")), ..config(&["RS256"], vec![]) };
        let v = verifier(&cfg);
        let token = mint(Algorithm::RS256, Some("k9"), &claims(), &rsa_key());
        assert_eq!(refused(v.verify(&token)), "unknown key id \"k9\"");
        // Long ids are cut in the message.
        let long = "k".repeat(500);
        let token = mint(Algorithm::RS256, Some(&long), &claims(), &rsa_key());
        assert!(refused(v.verify(&token)).len() < 100);

        // A key configured without kid serves tokens whatever kid they carry.
        let kidless = verifier(&config(&["RS256"], vec![pem(None, "rsa_public.pem")]));
        assert!(kidless.verify(&mint(Algorithm::RS256, Some("k9"), &claims(), &rsa_key())).is_ok());
    }

    #[test]
    fn expiry_and_leeway() {
        let v = verifier(&config(&["HS256"], vec![secret(None)]));
        assert_eq!(v.verify(&hs256(&json!({"sub": "u1", "exp": now() - 120}))), Err(TokenError::Expired));
        let just = v.verify(&hs256(&json!({"sub": "u1", "exp": now() - 10}))).unwrap();
        assert_eq!(just.user_id, "u1");
        let strict = verifier(&JwtConfig { leeway_secs: 0, ..config(&["HS256"], vec![secret(None)]) });
        assert_eq!(strict.verify(&hs256(&json!({"sub": "u1", "exp": now() - 10}))), Err(TokenError::Expired));
        let bad = refused(v.verify(&hs256(&json!({"sub": "u1", "exp": "tomorrow"}))));
        assert_eq!(bad, "token has no valid \"exp\" claim");
        let lax = verifier(&JwtConfig { require_exp: false, ..config(&["HS256"], vec![secret(None)]) });
        let bad = refused(lax.verify(&hs256(&json!({"sub": "u1", "exp": "tomorrow"}))));
        assert_eq!(bad, "\"exp\" claim must be a number");
        assert!(v.verify(&hs256(&json!({"sub": "u1", "exp": -5}))).is_err());
        let far = refused(v.verify(&hs256(&json!({"sub": "u1", "exp": 1.0e19}))));
        assert_eq!(far, "\"exp\" claim is out of range");
        let float = v.verify(&hs256(&json!({"sub": "u1", "exp": (now() + 60) as f64 + 0.5}))).unwrap();
        assert!(float.expires_at.is_some());
    }

    #[test]
    fn expires_at_is_when_the_token_stops_being_accepted() {
        let at = |secs: u64| Some(UNIX_EPOCH + Duration::from_secs(secs));
        let exp = now() - 20;
        let lenient = verifier(&config(&["HS256"], vec![secret(None)]));
        let claims = lenient.verify(&hs256(&json!({"sub": "u1", "exp": exp}))).unwrap();
        // Past its exp, within the leeway: accepted, and due to lapse when the leeway runs out.
        assert_eq!(claims.expires_at, at(exp + 30));
        assert!(claims.expires_at > Some(SystemTime::now()));
        let short = verifier(&JwtConfig { leeway_secs: 5, ..config(&["HS256"], vec![secret(None)]) });
        let exp = now() + 60;
        assert_eq!(short.verify(&hs256(&json!({"sub": "u1", "exp": exp}))).unwrap().expires_at, at(exp + 5));
        let strict = verifier(&JwtConfig { leeway_secs: 0, ..config(&["HS256"], vec![secret(None)]) });
        assert_eq!(strict.verify(&hs256(&json!({"sub": "u1", "exp": exp}))).unwrap().expires_at, at(exp));
        // No exp, no expiry, with or without leeway.
        let lax = verifier(&JwtConfig { require_exp: false, ..config(&["HS256"], vec![secret(None)]) });
        assert_eq!(lax.verify(&hs256(&json!({"sub": "u1"}))).unwrap().expires_at, None);
    }

    #[test]
    fn not_before() {
        let v = verifier(&config(&["HS256"], vec![secret(None)]));
        let early = hs256(&json!({"sub": "u1", "exp": now() + 600, "nbf": now() + 300}));
        assert_eq!(refused(v.verify(&early)), "token is not valid yet");
        assert!(v.verify(&hs256(&json!({"sub": "u1", "exp": now() + 600, "nbf": now() + 10}))).is_ok());
        assert!(v.verify(&hs256(&json!({"sub": "u1", "exp": now() + 600, "nbf": now() - 10}))).is_ok());
    }

    #[test]
    fn issuer() {
        let issuers = vec!["https://a.example".to_string(), "https://b.example".to_string()];
        let v = verifier(&JwtConfig { issuers, ..config(&["HS256"], vec![secret(None)]) });
        let with = |iss: Value| hs256(&json!({"sub": "u1", "exp": now() + 600, "iss": iss}));
        assert!(v.verify(&with(json!("https://b.example"))).is_ok());
        assert_eq!(refused(v.verify(&with(json!("https://evil.example")))), "issuer is not accepted");
        assert_eq!(refused(v.verify(&hs256(&claims()))), "token has no valid \"iss\" claim");
        // Unconfigured: any issuer passes.
        let open = verifier(&config(&["HS256"], vec![secret(None)]));
        assert!(open.verify(&with(json!("https://evil.example"))).is_ok());
    }

    #[test]
    fn audience() {
        let v = verifier(&JwtConfig { audiences: vec!["livegate".into()], ..config(&["HS256"], vec![secret(None)]) });
        let with = |aud: Value| hs256(&json!({"sub": "u1", "exp": now() + 600, "aud": aud}));
        assert!(v.verify(&with(json!("livegate"))).is_ok());
        assert!(v.verify(&with(json!(["billing", "livegate"]))).is_ok());
        assert_eq!(refused(v.verify(&with(json!("billing")))), "audience is not accepted");
        assert_eq!(refused(v.verify(&with(json!(["billing"])))), "audience is not accepted");
        assert_eq!(refused(v.verify(&hs256(&claims()))), "token has no valid \"aud\" claim");
        // Unconfigured: aud is not checked.
        let open = verifier(&config(&["HS256"], vec![secret(None)]));
        assert!(open.verify(&with(json!("billing"))).is_ok());
    }

    #[test]
    fn user_claim() {
        let v = verifier(&config(&["HS256"], vec![secret(None)]));
        let no_user = "token has no user id (\"sub\" claim)";
        assert_eq!(refused(v.verify(&hs256(&json!({"exp": now() + 600})))), no_user);
        assert_eq!(refused(v.verify(&hs256(&json!({"sub": "", "exp": now() + 600})))), no_user);
        assert_eq!(refused(v.verify(&hs256(&json!({"sub": 42, "exp": now() + 600})))), no_user);
        let custom = verifier(&JwtConfig { user_claim: "uid".into(), ..config(&["HS256"], vec![secret(None)]) });
        let token = hs256(&json!({"uid": "u7", "sub": "ignored", "exp": now() + 600}));
        assert_eq!(custom.verify(&token).unwrap().user_id, "u7");
    }

    #[test]
    fn roles_claim() {
        let v = verifier(&config(&["HS256"], vec![secret(None)]));
        let token = hs256(&json!({"sub": "u1", "exp": now() + 600, "roles": ["role:Admin", "Editor", "role:"]}));
        assert_eq!(v.verify(&token).unwrap().roles, vec!["Admin", "Editor"]);
        assert_eq!(v.verify(&hs256(&json!({"sub": "u1", "exp": now() + 600, "roles": null}))).unwrap().roles.len(), 0);
        let bad = refused(v.verify(&hs256(&json!({"sub": "u1", "exp": now() + 600, "roles": "Admin"}))));
        assert_eq!(bad, "\"roles\" claim must be an array of strings");
        assert!(v.verify(&hs256(&json!({"sub": "u1", "exp": now() + 600, "roles": ["a", 1]}))).is_err());

        let dotted =
            verifier(&JwtConfig { roles_claim: "app_metadata.roles".into(), ..config(&["HS256"], vec![secret(None)]) });
        let nested = hs256(&json!({"sub": "u1", "exp": now() + 600, "app_metadata": {"roles": ["role:Staff"]}}));
        assert_eq!(dotted.verify(&nested).unwrap().roles, vec!["Staff"]);
        assert!(dotted.verify(&hs256(&claims())).unwrap().roles.is_empty());
        let shallow = hs256(&json!({"sub": "u1", "exp": now() + 600, "app_metadata": "x"}));
        assert!(dotted.verify(&shallow).unwrap().roles.is_empty());

        // Namespaced claim names contain dots and are looked up whole first.
        let namespaced = verifier(&JwtConfig {
            roles_claim: "https://example.com/roles".into(),
            ..config(&["HS256"], vec![secret(None)])
        });
        let token = hs256(&json!({"sub": "u1", "exp": now() + 600, "https://example.com/roles": ["Ops"]}));
        assert_eq!(namespaced.verify(&token).unwrap().roles, vec!["Ops"]);
    }

    #[test]
    fn exp_requirement() {
        let v = verifier(&config(&["HS256"], vec![secret(None)]));
        assert_eq!(refused(v.verify(&hs256(&json!({"sub": "u1"})))), "token has no valid \"exp\" claim");
        let lax = verifier(&JwtConfig { require_exp: false, ..config(&["HS256"], vec![secret(None)]) });
        assert_eq!(lax.verify(&hs256(&json!({"sub": "u1"}))).unwrap().expires_at, None);
        // A present exp is still enforced.
        assert_eq!(lax.verify(&hs256(&json!({"sub": "u1", "exp": now() - 120}))), Err(TokenError::Expired));
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let v = verifier(&config(
            &["HS256", "RS256", "ES256", "EdDSA"],
            vec![
                secret(None),
                pem(None, "rsa_public.pem"),
                pem(None, "ec_public.pem"),
                pem(None, "ed25519_public.pem"),
            ],
        ));
        let header = |alg: &str| URL_SAFE_NO_PAD.encode(format!("{{\"alg\":\"{alg}\"}}"));
        let huge = format!("{}.{}.{}", "a".repeat(40_000), "b".repeat(40_000), "c".repeat(40_000));
        let mut inputs = vec![
            String::new(),
            ".".into(),
            "..".into(),
            "a.b".into(),
            "a.b.c".into(),
            "a.b.c.d".into(),
            "!!!.@@@.###".into(),
            "é.é.é".into(),
            huge,
            "r:0123456789abcdef".into(),
            format!("{}.e30.", header("HS256")),
            format!("{}.e30.AAAA", header("HS256")),
            format!("{}.bm90IGpzb24.AAAA", header("HS256")),
            format!("{}.WzFd.AAAA", header("HS256")),
            format!("{}.e30.!!!!", header("HS256")),
            format!("{}.e30.", header("EdDSA")),
            format!("{}.e30.AA", header("EdDSA")),
            format!("{}.e30.AA", header("ES256")),
            format!("{}.e30.AA", header("RS256")),
        ];
        inputs.push(format!("{}.{}", inputs[10], "x"));
        for input in &inputs {
            match v.verify(input) {
                Err(TokenError::Invalid(why)) => assert!(!why.is_empty()),
                other => panic!("{input:.60}: expected Invalid, got {other:?}"),
            }
        }
        assert_eq!(refused(v.verify("a.b")), "token is not a well-formed JWT");
    }

    #[test]
    fn critical_header_extensions_are_refused() {
        let v = verifier(&config(&["HS256"], vec![secret(None)]));
        // Refused before any signature work, so the signature need not be valid.
        let token = raw(&json!({"alg": "HS256", "crit": ["exp"]}), &claims(), "c2ln");
        assert!(refused(v.verify(&token)).contains("critical"));
    }

    #[test]
    fn shape_test() {
        assert!(looks_like_jwt(&hs256(&claims())));
        assert!(looks_like_jwt(&mint(Algorithm::RS256, Some("k"), &claims(), &rsa_key())));
        assert!(looks_like_jwt(&raw(&json!({"alg": "none"}), &json!({}), "")));
        let header = |h: &str| URL_SAFE_NO_PAD.encode(h);
        for not in [
            String::new(),
            "r:0123456789abcdef".into(),
            "abc".into(),
            "a.b".into(),
            "a.b.c".into(),
            "...".into(),
            format!("{}.e30.sig.extra", header(r#"{"alg":"HS256"}"#)),
            format!("{}..sig", header(r#"{"alg":"HS256"}"#)),
            format!("{}.e30.s+g", header(r#"{"alg":"HS256"}"#)),
            format!("{}=.e30.sig", header(r#"{"alg":"HS256"}"#)),
            format!("{}.e30.sig", header(r#"["alg","HS256"]"#)),
            format!("{}.e30.sig", header(r#"{"typ":"JWT"}"#)),
            format!("{}.e30.sig", header(r#"{"alg":256}"#)),
            format!("{}.e30.sig", header(r#"{"alg":"HS256","kid":7}"#)),
            format!("{}.e30.sig", header(&format!(r#"{{"alg":"HS256","x":"{}"}}"#, "y".repeat(5000)))),
            "é.é.é".into(),
        ] {
            assert!(!looks_like_jwt(&not), "{not:.60}");
        }
    }

    #[test]
    fn config_errors() {
        let e = config_error(&config(&["none"], vec![secret(None)]));
        assert!(e.contains("\"none\" is refused"), "{e}");
        let e = config_error(&config(&["HS256", "rs256"], vec![secret(None)]));
        assert!(e.contains("unknown algorithm \"rs256\""), "{e}");
        let e = config_error(&config(&["RS256"], vec![pem(None, "missing.pem")]));
        assert!(e.starts_with("jwt.keys[0]: cannot read pem_file") && e.contains("missing.pem"), "{e}");
        let short = JwtKeyConfig { secret: Some("too-short".into()), ..JwtKeyConfig::default() };
        let e = config_error(&config(&["HS256"], vec![short]));
        assert!(e.contains("HMAC secret is 9 bytes; at least 32"), "{e}");
        assert!(!e.contains("too-short"), "{e}");
        let e = config_error(&config(&["HS256"], vec![]));
        assert!(e.contains("no keys configured"), "{e}");
        let e = config_error(&config(&["HS256"], vec![secret(Some("a")), secret(Some("a"))]));
        assert_eq!(e, "jwt: duplicate key id \"a\"");
        let cfg = JwtConfig {
            jwks_file: Some(fixture("jwks.json")),
            ..config(&["RS256"], vec![pem(Some("rsa-1"), "rsa_public.pem")])
        };
        assert_eq!(config_error(&cfg), "jwt: duplicate key id \"rsa-1\"");
        let e = config_error(&config(&["RS256"], vec![pem(None, "rsa_private.pem")]));
        assert!(e.contains("holds a private key"), "{e}");
        let e = config_error(&config(&["RS256"], vec![pem(None, "ec_public.pem")]));
        assert!(e.contains("EC P-256 key fits none of the accepted algorithms (RS256)"), "{e}");
        let e = config_error(&config(&["ES384"], vec![pem(None, "ec_public.pem")]));
        assert!(e.contains("fits none"), "{e}");
        let e = config_error(&config(
            &["HS256"],
            vec![JwtKeyConfig { pem_file: Some(fixture("rsa_public.pem")), ..secret(None) }],
        ));
        assert!(e.contains("exactly one of"), "{e}");
        let e = config_error(&config(&["HS256"], vec![JwtKeyConfig::default()]));
        assert!(e.contains("exactly one of"), "{e}");
        let e = config_error(&config(&["RS256"], vec![pem(None, "README.md")]));
        assert!(e.contains("holds no RSA, EC or Ed25519 public key"), "{e}");
        let e = config_error(&JwtConfig { leeway_secs: 86_400, ..config(&["HS256"], vec![secret(None)]) });
        assert!(e.contains("leeway_secs"), "{e}");
        let e = config_error(&JwtConfig { jwks_file: Some(fixture("nope.json")), ..config(&["RS256"], vec![]) });
        assert!(e.contains("cannot read jwt.jwks_file") && e.contains("nope.json"), "{e}");
        let e = config_error(&JwtConfig { jwks_file: Some(fixture("README.md")), ..config(&["RS256"], vec![]) });
        assert!(e.contains("is not a JWKS"), "{e}");
    }

    #[test]
    fn certificates_and_base64_secrets() {
        let v = verifier(&config(&["RS256", "ES256"], vec![pem(None, "rsa_cert.pem"), pem(None, "ec_cert.pem")]));
        assert!(v.verify(&mint(Algorithm::RS256, None, &claims(), &rsa_key())).is_ok());
        assert!(v.verify(&mint(Algorithm::ES256, None, &claims(), &ec_key())).is_ok());

        let encoded = base64::engine::general_purpose::STANDARD.encode(SECRET);
        let key = JwtKeyConfig { secret_base64: Some(encoded.trim_end_matches('=').into()), ..JwtKeyConfig::default() };
        assert!(verifier(&config(&["HS256"], vec![key])).verify(&hs256(&claims())).is_ok());
        let bad = JwtKeyConfig { secret_base64: Some("not base64!".into()), ..JwtKeyConfig::default() };
        assert!(config_error(&config(&["HS256"], vec![bad])).contains("not valid base64"));
    }

    #[test]
    fn jwks_skips_keys_it_cannot_use() {
        let path = std::env::temp_dir().join(format!("livegate-jwt-test-{}.json", std::process::id()));
        let mut set: Value = serde_json::from_slice(&read("jwks.json")).unwrap();
        let keys = set["keys"].as_array_mut().unwrap();
        let mut enc = keys[0].clone();
        enc["kid"] = json!("enc-1");
        enc["use"] = json!("enc");
        enc["alg"] = json!("RSA-OAEP");
        keys.push(enc);
        keys.push(json!({"kty": "weird", "kid": "w"}));
        keys.push(json!({"kty": "OKP", "crv": "X25519", "kid": "x", "x": "AAAA"}));
        std::fs::write(&path, serde_json::to_vec(&set).unwrap()).unwrap();
        let cfg = JwtConfig { jwks_file: Some(path.display().to_string()), ..config(&["RS256"], vec![]) };
        let v = verifier(&cfg);
        // Only rsa-1 remains: EC does not fit RS256, the rest are not signature keys we know.
        assert_eq!(v.keys.len(), 1);
        assert!(v.verify(&mint(Algorithm::RS256, Some("rsa-1"), &claims(), &rsa_key())).is_ok());

        std::fs::write(&path, r#"{"keys":[{"kty":"oct","kid":"s","k":"c2hvcnQ"}]}"#).unwrap();
        let e = config_error(&JwtConfig { jwks_file: Some(path.display().to_string()), ..config(&["HS256"], vec![]) });
        assert!(e.contains("HMAC secret is 5 bytes"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn debug_output_hides_secrets() {
        let cfg = config(&["HS256"], vec![secret(Some("k"))]);
        assert!(!format!("{cfg:?}").contains(SECRET));
        assert!(!format!("{:?}", verifier(&cfg)).contains(SECRET));
    }
}
