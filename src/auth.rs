//! Signed-token authentication (SPEC §8.1): who a socket is, and which topics
//! it may join.
//!
//! A back-end that already knows its users signs a short-lived JWT for each
//! of them; the browser presents it on the WebSocket upgrade and headcount
//! checks it without calling anybody. This module holds the whole decision,
//! apart from the server so that it can be tested without sockets:
//!
//! - [`Verifier`]: the key the node checks tokens with, built once from
//!   `--auth-secret` (HS256) or `--auth-public-key` (the PEM key decides:
//!   RS256, ES256 or EdDSA). The token's own `alg` header never chooses, so
//!   `alg: none` and HS256-signed-with-the-public-key tokens are refused.
//! - [`request_token`]: where a token comes from on an upgrade request.
//! - [`authenticate`]: the `--auth required|optional|off` decision, giving an
//!   [`Identity`] or one of the three public [`AuthFailure`] reasons.
//! - [`may_join`]: whether a socket (with or without an identity) may join a
//!   topic.
//!
//! An [`Identity`] lives as long as its socket, so it is kept small: with
//! `Box`ed strings it is 64 bytes plus the claims' text.
//!
//! All cryptography is the `jsonwebtoken` crate's (RustCrypto back-end);
//! this module only reads claims and compares times.

use crate::globs::Globs;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::fmt;
use std::path::Path;

/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 5;
/// Largest `info` claim, as its JSON text in the token.
pub const MAX_INFO_BYTES: usize = 1024;
/// Longer tokens are refused before any decoding (`invalid token`).
pub const MAX_TOKEN_BYTES: usize = 8192;
/// The subprotocol prefix phoenix.js uses for its `authToken` option.
pub const BEARER_PROTOCOL_PREFIX: &str = "base64url.bearer.phx.";

/// `--auth`: whether a socket must, may or need not present a token (the
/// setting itself lives with the others).
pub use crate::config::AuthMode as Mode;

/// Why an upgrade is refused. Every cause maps to one of exactly three
/// public reasons: the client learns no more than that.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// `--auth required` and the request carries no token.
    MissingToken,
    /// Bad shape, signature, algorithm or claims; also a token whose `nbf`
    /// or `iat` lies in the future (beyond the leeway): it is not valid
    /// *yet*, which is not what "expired" tells a client to do (fetch a new
    /// one).
    InvalidToken,
    /// A good token whose `exp` has passed (beyond the leeway).
    ExpiredToken,
}

impl AuthFailure {
    /// The 403 body's reason: `{"error": "<reason>"}`.
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::MissingToken => "missing token",
            AuthFailure::InvalidToken => "invalid token",
            AuthFailure::ExpiredToken => "expired token",
        }
    }

    /// The `reason` label of `headcount_auth_failures_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            AuthFailure::MissingToken => "missing_token",
            AuthFailure::InvalidToken => "invalid_token",
            AuthFailure::ExpiredToken => "expired_token",
        }
    }
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for AuthFailure {}

/// A key that cannot be used: the message says why and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyError(String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

fn key_error(message: impl Into<String>) -> KeyError {
    KeyError(message.into())
}

/// The key tokens are checked with, and the one algorithm it allows.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// From the node's settings: `--auth-secret` or `--auth-public-key`
    /// (not both); `Ok(None)` when neither is set.
    pub fn from_settings(
        secret: Option<&str>,
        public_key: Option<&Path>,
    ) -> Result<Option<Verifier>, KeyError> {
        match (secret, public_key) {
            (Some(_), Some(_)) => Err(key_error(
                "give --auth-secret or --auth-public-key, not both",
            )),
            (Some(s), None) => Verifier::from_secret(s.as_bytes()).map(Some),
            (None, Some(p)) => Verifier::from_public_key_file(p).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// HS256 with a shared secret (`--auth-secret`).
    pub fn from_secret(secret: &[u8]) -> Result<Verifier, KeyError> {
        let key = DecodingKey::from_secret(secret)
            .map_err(|_| key_error("--auth-secret must not be empty"))?;
        if secret.len() < 32 {
            tracing::warn!(
                bytes = secret.len(),
                "--auth-secret is shorter than 32 bytes: HS256 wants at least 256 bits"
            );
        }
        Ok(Verifier::new(key, Algorithm::HS256))
    }

    /// Reads a PEM public key file (`--auth-public-key`), see
    /// [`Verifier::from_public_key_pem`].
    pub fn from_public_key_file(path: &Path) -> Result<Verifier, KeyError> {
        let pem = std::fs::read(path).map_err(|e| {
            key_error(format!(
                "--auth-public-key {}: cannot read it: {e}",
                path.display()
            ))
        })?;
        Verifier::from_public_key_pem(&pem)
            .map_err(|e| key_error(format!("--auth-public-key {}: {e}", path.display())))
    }

    /// A PEM public key (`-----BEGIN PUBLIC KEY-----`, or PKCS#1
    /// `RSA PUBLIC KEY`); its kind decides the algorithm: RSA (at least
    /// 2048 bits) → RS256, EC P-256 → ES256, Ed25519 → EdDSA.
    pub fn from_public_key_pem(pem: &[u8]) -> Result<Verifier, KeyError> {
        match pem_label(pem) {
            Some("PUBLIC KEY" | "RSA PUBLIC KEY") => {}
            Some(label) if label.contains("PRIVATE KEY") => {
                return Err(key_error(
                    "this is a private key; give the public key \
                     (openssl pkey -in private.pem -pubout -out public.pem)",
                ))
            }
            Some("CERTIFICATE") => {
                return Err(key_error(
                    "this is a certificate; give its public key \
                     (openssl x509 -in cert.pem -pubkey -noout > public.pem)",
                ))
            }
            Some(label) => {
                return Err(key_error(format!(
                    "PEM block {label:?} is not a public key (want -----BEGIN PUBLIC KEY-----)"
                )))
            }
            None => {
                return Err(key_error(
                    "no PEM public key found (want -----BEGIN PUBLIC KEY-----)",
                ))
            }
        }
        let provider = CryptoProvider::try_get_default()
            .ok_or_else(|| key_error("no jsonwebtoken crypto provider in this build"))?;
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            let der = key
                .try_get_as_bytes()
                .map_err(|_| key_error("unreadable RSA public key"))?;
            let (n, _e) = (provider.key_utils.rsa_pub_components_from_public_key)(der)
                .map_err(|e| key_error(format!("unreadable RSA public key: {e}")))?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < 2048 {
                return Err(key_error(format!(
                    "RSA key of about {bits} bits; RS256 wants at least 2048"
                )));
            }
            return Ok(Verifier::new(key, Algorithm::RS256));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            if (provider.verifier_factory)(&Algorithm::ES256, &key).is_ok() {
                return Ok(Verifier::new(key, Algorithm::ES256));
            }
            return Err(key_error(
                "EC key not on curve P-256 (prime256v1): only ES256 is supported",
            ));
        }
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            // The provider slices the first 32 bytes: check the length first.
            if key.try_get_as_bytes().map(<[u8]>::len) == Ok(32)
                && (provider.verifier_factory)(&Algorithm::EdDSA, &key).is_ok()
            {
                return Ok(Verifier::new(key, Algorithm::EdDSA));
            }
            return Err(key_error("unreadable Ed25519 public key"));
        }
        Err(key_error(
            "unsupported or unreadable public key: want RSA, EC P-256 or Ed25519",
        ))
    }

    fn new(key: DecodingKey, alg: Algorithm) -> Verifier {
        // Only the signature and the algorithm are the library's to check;
        // the claims (times against the caller's clock, `aud` ignored) are
        // checked in `verify`.
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        Verifier { key, validation }
    }

    /// The one algorithm a token must be signed with: `HS256`, `RS256`,
    /// `ES256` or `EdDSA`.
    pub fn algorithm(&self) -> &'static str {
        match self.validation.algorithms.first() {
            Some(Algorithm::HS256) => "HS256",
            Some(Algorithm::RS256) => "RS256",
            Some(Algorithm::ES256) => "ES256",
            Some(Algorithm::EdDSA) => "EdDSA",
            _ => "?",
        }
    }

    /// Checks one token at unix time `now`; `exp_required` is false only
    /// under `--auth optional`.
    fn verify(&self, token: &str, exp_required: bool, now: u64) -> Result<Identity, AuthFailure> {
        let reject = |why: &dyn fmt::Display| {
            tracing::debug!(%why, "token refused");
            AuthFailure::InvalidToken
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Err(reject(&"longer than MAX_TOKEN_BYTES"));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| reject(&e))?
            .claims;
        let sub = match claims.sub {
            Some(s) if !s.is_empty() => s.into_boxed_str(),
            _ => return Err(reject(&"no sub")),
        };
        if let Some(info) = &claims.info {
            if !info.get().starts_with('{') {
                return Err(reject(&"info is not an object"));
            }
            if info.get().len() > MAX_INFO_BYTES {
                return Err(reject(&"info larger than MAX_INFO_BYTES"));
            }
        }
        let horizon = now.saturating_add(LEEWAY_SECS);
        if claims.nbf.is_some_and(|nbf| nbf.0 > horizon) {
            return Err(reject(&"nbf in the future"));
        }
        if claims.iat.is_some_and(|iat| iat.0 > horizon) {
            return Err(reject(&"iat in the future"));
        }
        match claims.exp {
            Some(exp) if exp.0.saturating_add(LEEWAY_SECS) < now => {
                tracing::debug!(exp = exp.0, now, "token expired");
                return Err(AuthFailure::ExpiredToken);
            }
            None if exp_required => return Err(reject(&"no exp")),
            _ => {}
        }
        Ok(Identity {
            sub,
            exp: claims.exp.map(|e| e.0),
            topics: claims.topics.map(|t| Globs::new(&t)),
            info: claims.info,
        })
    }
}

/// Who a socket is, from its token; kept for the socket's lifetime.
#[derive(Clone, Debug)]
pub struct Identity {
    sub: Box<str>,
    exp: Option<u64>,
    /// `None`: every topic the server allows; otherwise globs, compiled
    /// once when the token is verified.
    topics: Option<Globs>,
    info: Option<Box<RawValue>>,
}

impl Identity {
    /// The token's `sub`: the user id, presence KEY (§9.1). Never empty.
    pub fn sub(&self) -> &str {
        &self.sub
    }

    /// The token's `exp` in unix seconds, if it had one. The token is still
    /// accepted up to [`LEEWAY_SECS`] after it.
    pub fn exp(&self) -> Option<u64> {
        self.exp
    }

    /// When a socket holding this identity is closed 4001, as a time since
    /// the Unix epoch, for a socket opened at `now` (the same): the token's
    /// `exp`; or, for a token already past its `exp` at `now` (accepted
    /// only thanks to the leeway), the first moment [`authenticate`]
    /// refuses it. Closing such a socket at once would not end anything:
    /// phoenix.js reconnects 10 ms after any close, with the same token
    /// until the app has a new one, and would be let in and closed again in
    /// a loop for as long as the leeway lasts; refused at the upgrade
    /// instead, it backs off. `None` for a token without `exp`.
    pub fn closes_at(&self, now: std::time::Duration) -> Option<std::time::Duration> {
        let exp = self.exp?;
        let at = std::time::Duration::from_secs(exp);
        if at > now {
            Some(at)
        } else {
            // `authenticate` compares whole seconds: it accepts the token
            // until `now` reaches exp + LEEWAY + 1.
            Some(std::time::Duration::from_secs(
                exp.saturating_add(LEEWAY_SECS + 1),
            ))
        }
    }

    /// The token's `info` as its JSON text: always an object, at most
    /// [`MAX_INFO_BYTES`].
    pub fn info(&self) -> Option<&RawValue> {
        self.info.as_deref()
    }

    /// Whether the token's `topics` globs (`*` any run, `?` one character)
    /// allow `topic`; a token without `topics` allows every topic (the
    /// server's own rules still apply), `"topics": []` none.
    pub fn may_join(&self, topic: &str) -> bool {
        match &self.topics {
            None => true,
            Some(globs) => globs.matches(topic),
        }
    }
}

/// Whether a socket may join `topic`, as far as authentication goes (the
/// server's topic rules come on top): `--auth off` → yes; a socket with an
/// identity → its token's `topics`; an anonymous socket under `optional` →
/// the `--public-topic` globs (none by default).
pub fn may_join(
    identity: Option<&Identity>,
    public_topics: &Globs,
    mode: Mode,
    topic: &str,
) -> bool {
    match (mode, identity) {
        (Mode::Off, _) => true,
        (_, Some(identity)) => identity.may_join(topic),
        (Mode::Optional, None) => public_topics.matches(topic),
        (Mode::Required, None) => false,
    }
}

/// The `--auth` decision for one upgrade at unix time `now`:
///
/// | mode | no token | good token | bad token |
/// |---|---|---|---|
/// | `Off` | `Ok(None)` | `Ok(None)` (ignored) | `Ok(None)` (ignored) |
/// | `Optional` | `Ok(None)` (anonymous) | `Ok(Some)` | `Err` |
/// | `Required` | `Err(MissingToken)` | `Ok(Some)` | `Err` |
///
/// An empty token counts as none. Under `Optional` a token without `exp`
/// is accepted; under `Required` it is invalid.
pub fn authenticate(
    verifier: &Verifier,
    mode: Mode,
    token: Option<&str>,
    now: u64,
) -> Result<Option<Identity>, AuthFailure> {
    let token = token.filter(|t| !t.is_empty());
    match (mode, token) {
        (Mode::Off, _) | (Mode::Optional, None) => Ok(None),
        (Mode::Required, None) => Err(AuthFailure::MissingToken),
        (_, Some(token)) => verifier
            .verify(token, mode == Mode::Required, now)
            .map(Some),
    }
}

/// Seconds since the Unix epoch, the `now` of [`authenticate`].
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The token an upgrade request presents: the connect param `token`
/// (`?token=…`, percent-decoded), else the `Sec-WebSocket-Protocol` entry
/// `base64url.bearer.phx.<token in base64>` that phoenix.js 1.8 sends for
/// its `authToken` option.
///
/// When both are present the query param wins, as the SPEC lists it first
/// and a Phoenix app reading `params["token"]` in `connect/3` sees that
/// one; either way the token must verify. A query `token` that is empty,
/// `undefined` or `null` counts as absent: phoenix.js sends
/// `params: {token: undefined}` as `token=undefined`, and an anonymous
/// socket under `--auth optional` must not be refused for it.
///
/// phoenix.js encodes with `btoa` (standard alphabet, `+` `/`) and strips
/// the `=` padding despite the `base64url` name; both alphabets, padded or
/// not, are accepted here. A bearer entry that does not decode is returned
/// as it is: having no `.`, it can never verify, so it is refused as an
/// invalid token rather than taken for a missing one.
pub fn request_token(query: Option<&str>, headers: &axum::http::HeaderMap) -> Option<String> {
    if let Some(t) = crate::query::param(query, "token") {
        if !matches!(&*t, "" | "undefined" | "null") {
            return Some(t);
        }
    }
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(BEARER_PROTOCOL_PREFIX))
        .map(decode_bearer)
}

/// Base64 of either alphabet, padded or not, to text.
fn decode_bearer(encoded: &str) -> String {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let standard = encoded.replace('-', "+").replace('_', "/");
    LENIENT
        .decode(standard)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| encoded.to_owned())
}

/// The label of the first PEM block (`PUBLIC KEY`, `RSA PRIVATE KEY`, …).
pub fn pem_label(pem: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(pem).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .and_then(|l| l.strip_suffix("-----"))
}

/// The claims headcount reads; others (`iss`, `aud`, `jti`, …) are ignored.
/// A claim that is present must have its type: `"exp": null` or
/// `"topics": "rooms:*"` make the token invalid rather than absent.
#[derive(Deserialize)]
struct Claims {
    #[serde(default, deserialize_with = "present")]
    sub: Option<String>,
    #[serde(default, deserialize_with = "present")]
    exp: Option<NumericDate>,
    #[serde(default, deserialize_with = "present")]
    nbf: Option<NumericDate>,
    #[serde(default, deserialize_with = "present")]
    iat: Option<NumericDate>,
    #[serde(default, deserialize_with = "present")]
    topics: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    info: Option<Box<RawValue>>,
}

fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// RFC 7519 NumericDate: seconds, possibly fractional (rounded down);
/// before the epoch counts as the epoch.
#[derive(Clone, Copy)]
struct NumericDate(u64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = NumericDate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds since the epoch")
            }
            fn visit_u64<E>(self, v: u64) -> Result<NumericDate, E> {
                Ok(NumericDate(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<NumericDate, E> {
                Ok(NumericDate(u64::try_from(v).unwrap_or(0)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<NumericDate, E> {
                // `as` saturates: negative → 0, beyond u64 → u64::MAX.
                Ok(NumericDate(v.floor() as u64))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{json, Value};

    const NOW: u64 = 1_700_000_000;
    const SECRET: &[u8] = b"test secret, at least thirty-two bytes long";

    // Test-only keys (tests/fixtures/keys/README.md): never use them elsewhere.
    const RSA_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/keys/test-only-rsa-public.pem");
    const RSA_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/keys/test-only-rsa-private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/keys/test-only-ec-p256-public.pem");
    const EC_PRIVATE: &[u8] =
        include_bytes!("../tests/fixtures/keys/test-only-ec-p256-private.pem");
    const ED_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/keys/test-only-ed25519-public.pem");
    const ED_PRIVATE: &[u8] =
        include_bytes!("../tests/fixtures/keys/test-only-ed25519-private.pem");
    const P384_PUBLIC: &[u8] =
        include_bytes!("../tests/fixtures/keys/test-only-ec-p384-public.pem");

    fn hs_verifier() -> Verifier {
        Verifier::from_secret(SECRET).unwrap()
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
    }

    fn hs(claims: Value) -> String {
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET).unwrap(),
            &claims,
        )
    }

    /// A good claim set, expiring in an hour.
    fn good() -> Value {
        json!({"sub": "alice", "iat": NOW, "exp": NOW + 3600})
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    fn without(mut claims: Value, key: &str) -> Value {
        claims.as_object_mut().unwrap().remove(key);
        claims
    }

    fn check(v: &Verifier, token: &str) -> Result<Identity, AuthFailure> {
        authenticate(v, Mode::Required, Some(token), NOW).map(|i| i.expect("an identity"))
    }

    fn b64url(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn hs256_good_token_gives_a_small_identity() {
        let token = hs(with(good(), "info", json!({"name": "A", "n": [1, 2]})));
        let id = check(&hs_verifier(), &token).unwrap();
        assert_eq!(id.sub(), "alice");
        assert_eq!(id.exp(), Some(NOW + 3600));
        // As the token carries it (json! sorts keys).
        assert_eq!(id.info().unwrap().get(), r#"{"n":[1,2],"name":"A"}"#);
        assert!(id.may_join("anything:at_all"));
        assert!(std::mem::size_of::<Identity>() <= 64);
        fn shared<T: Send + Sync>() {}
        shared::<Verifier>();
        shared::<Identity>();
    }

    #[test]
    fn wrong_secret_is_invalid() {
        let token = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"another secret").unwrap(),
            &good(),
        );
        assert_eq!(
            check(&hs_verifier(), &token).unwrap_err(),
            AuthFailure::InvalidToken
        );
    }

    #[test]
    fn tampered_payload_is_invalid() {
        let token = hs(good());
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64url(r#"{"sub":"admin","exp":9999999999}"#);
        parts[1] = &forged;
        assert_eq!(
            check(&hs_verifier(), &parts.join(".")).unwrap_err(),
            AuthFailure::InvalidToken
        );
    }

    #[test]
    fn alg_none_is_invalid_for_every_verifier() {
        let payload = b64url(&good().to_string());
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None","typ":"JWT"}"#,
            r#"{"alg":"NONE"}"#,
        ] {
            let token = format!("{}.{payload}.", b64url(header));
            for v in [
                hs_verifier(),
                Verifier::from_public_key_pem(RSA_PUBLIC).unwrap(),
                Verifier::from_public_key_pem(EC_PUBLIC).unwrap(),
            ] {
                assert_eq!(check(&v, &token).unwrap_err(), AuthFailure::InvalidToken);
            }
        }
        // Not even with the signature of a good token glued on.
        let good_token = hs(good());
        let signature = good_token.rsplit('.').next().unwrap();
        let token = format!("{}.{payload}.{signature}", b64url(r#"{"alg":"none"}"#));
        assert_eq!(
            check(&hs_verifier(), &token).unwrap_err(),
            AuthFailure::InvalidToken
        );
    }

    #[test]
    fn hs256_signed_with_the_rsa_public_key_is_refused_by_the_rs256_verifier() {
        let rs = Verifier::from_public_key_pem(RSA_PUBLIC).unwrap();
        assert_eq!(rs.algorithm(), "RS256");
        let confused = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(RSA_PUBLIC).unwrap(),
            &good(),
        );
        assert_eq!(
            check(&rs, &confused).unwrap_err(),
            AuthFailure::InvalidToken
        );
        // The same attack with the PEM body without its armour lines.
        let body: String = std::str::from_utf8(RSA_PUBLIC)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let confused = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(body.as_bytes()).unwrap(),
            &good(),
        );
        assert_eq!(
            check(&rs, &confused).unwrap_err(),
            AuthFailure::InvalidToken
        );
    }

    #[test]
    fn rs256_es256_and_eddsa_good_tokens() {
        let cases = [
            (
                RSA_PUBLIC,
                EncodingKey::from_rsa_pem(RSA_PRIVATE),
                Algorithm::RS256,
                "RS256",
            ),
            (
                EC_PUBLIC,
                EncodingKey::from_ec_pem(EC_PRIVATE),
                Algorithm::ES256,
                "ES256",
            ),
            (
                ED_PUBLIC,
                EncodingKey::from_ed_pem(ED_PRIVATE),
                Algorithm::EdDSA,
                "EdDSA",
            ),
        ];
        for (public, private, alg, name) in cases {
            let v = Verifier::from_public_key_pem(public).unwrap();
            assert_eq!(v.algorithm(), name);
            let token = sign(alg, &private.unwrap(), &good());
            assert_eq!(check(&v, &token).unwrap().sub(), "alice", "{name}");
            // The token is refused by the other verifiers.
            for other in [RSA_PUBLIC, EC_PUBLIC, ED_PUBLIC] {
                if other != public {
                    let v = Verifier::from_public_key_pem(other).unwrap();
                    assert_eq!(check(&v, &token).unwrap_err(), AuthFailure::InvalidToken);
                }
            }
            assert_eq!(
                check(&hs_verifier(), &token).unwrap_err(),
                AuthFailure::InvalidToken
            );
        }
    }

    #[test]
    fn a_token_whose_header_names_another_algorithm_of_the_key_family_is_refused() {
        // RS384 signed with the right RSA key: the key decides RS256 only.
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
        let token = sign(Algorithm::RS384, &key, &good());
        let v = Verifier::from_public_key_pem(RSA_PUBLIC).unwrap();
        assert_eq!(check(&v, &token).unwrap_err(), AuthFailure::InvalidToken);
        // HS512 with the right secret: the secret means HS256 only.
        let token = sign(
            Algorithm::HS512,
            &EncodingKey::from_secret(SECRET).unwrap(),
            &good(),
        );
        assert_eq!(
            check(&hs_verifier(), &token).unwrap_err(),
            AuthFailure::InvalidToken
        );
    }

    #[test]
    fn exp_has_five_seconds_of_leeway() {
        let v = hs_verifier();
        let at = |exp: u64| check(&v, &hs(with(good(), "exp", json!(exp))));
        assert!(at(NOW).is_ok());
        assert!(at(NOW - LEEWAY_SECS).is_ok());
        assert_eq!(
            at(NOW - LEEWAY_SECS - 1).unwrap_err(),
            AuthFailure::ExpiredToken
        );
        assert_eq!(at(NOW - 3600).unwrap_err(), AuthFailure::ExpiredToken);
        assert_eq!(at(0).unwrap_err(), AuthFailure::ExpiredToken);
        // Fractional and negative NumericDates.
        let frac = check(&v, &hs(with(good(), "exp", json!(NOW as f64 + 0.75)))).unwrap();
        assert_eq!(frac.exp(), Some(NOW));
        assert_eq!(
            check(&v, &hs(with(good(), "exp", json!(-1)))).unwrap_err(),
            AuthFailure::ExpiredToken
        );
    }

    #[test]
    fn a_socket_closes_at_exp_or_when_the_leeway_ends() {
        use std::time::Duration;
        let v = hs_verifier();
        let at = |exp: u64| check(&v, &hs(with(good(), "exp", json!(exp)))).unwrap();
        let now = Duration::from_millis(NOW * 1000 + 400);
        // exp ahead: to the second it names, not rounded by `now`.
        assert_eq!(
            at(NOW + 3).closes_at(now),
            Some(Duration::from_secs(NOW + 3))
        );
        assert_eq!(
            at(NOW + 1).closes_at(now),
            Some(Duration::from_secs(NOW + 1))
        );
        // exp passed, accepted within the leeway: when `authenticate` starts
        // refusing it, and not a moment before.
        for exp in [NOW, NOW - 2, NOW - LEEWAY_SECS] {
            let closes = at(exp).closes_at(now).unwrap();
            assert_eq!(closes, Duration::from_secs(exp + LEEWAY_SECS + 1));
            let just_before = closes.as_secs() - 1;
            assert!(authenticate(
                &v,
                Mode::Required,
                Some(&hs(with(good(), "exp", json!(exp)))),
                just_before
            )
            .is_ok());
            assert_eq!(
                authenticate(
                    &v,
                    Mode::Required,
                    Some(&hs(with(good(), "exp", json!(exp)))),
                    closes.as_secs()
                )
                .unwrap_err(),
                AuthFailure::ExpiredToken
            );
        }
        let no_exp = authenticate(&v, Mode::Optional, Some(&hs(without(good(), "exp"))), NOW)
            .unwrap()
            .unwrap();
        assert_eq!(no_exp.closes_at(now), None);
    }

    #[test]
    fn nbf_and_iat_in_the_future_are_invalid_not_expired() {
        let v = hs_verifier();
        for claim in ["nbf", "iat"] {
            let at = |t: u64| check(&v, &hs(with(good(), claim, json!(t))));
            assert!(at(NOW - 100).is_ok(), "{claim}");
            assert!(at(NOW + LEEWAY_SECS).is_ok(), "{claim} within leeway");
            assert_eq!(
                at(NOW + LEEWAY_SECS + 1).unwrap_err(),
                AuthFailure::InvalidToken
            );
            assert_eq!(at(NOW + 3600).unwrap_err(), AuthFailure::InvalidToken);
        }
        // Not yet valid and already expired: not yet valid wins.
        let token = hs(with(
            with(good(), "nbf", json!(NOW + 60)),
            "exp",
            json!(NOW - 60),
        ));
        assert_eq!(check(&v, &token).unwrap_err(), AuthFailure::InvalidToken);
    }

    #[test]
    fn sub_must_be_a_non_empty_string() {
        let v = hs_verifier();
        for claims in [
            without(good(), "sub"),
            with(good(), "sub", json!("")),
            with(good(), "sub", json!(42)),
            with(good(), "sub", Value::Null),
            with(good(), "sub", json!(["alice"])),
        ] {
            assert_eq!(
                check(&v, &hs(claims.clone())).unwrap_err(),
                AuthFailure::InvalidToken,
                "{claims}"
            );
        }
    }

    #[test]
    fn exp_is_required_unless_optional() {
        let v = hs_verifier();
        let token = hs(without(good(), "exp"));
        assert_eq!(
            authenticate(&v, Mode::Required, Some(&token), NOW).unwrap_err(),
            AuthFailure::InvalidToken
        );
        let id = authenticate(&v, Mode::Optional, Some(&token), NOW)
            .unwrap()
            .unwrap();
        assert_eq!((id.sub(), id.exp()), ("alice", None));
        // A present exp of the wrong type is invalid in every mode.
        for bad in [Value::Null, json!("1700003600"), json!({})] {
            let token = hs(with(good(), "exp", bad));
            for mode in [Mode::Required, Mode::Optional] {
                assert_eq!(
                    authenticate(&v, mode, Some(&token), NOW).unwrap_err(),
                    AuthFailure::InvalidToken
                );
            }
        }
    }

    #[test]
    fn topics_are_globs() {
        let v = hs_verifier();
        let id = check(
            &v,
            &hs(with(good(), "topics", json!(["rooms:*", "dm:alice:?"]))),
        )
        .unwrap();
        assert!(id.may_join("rooms:lobby"));
        assert!(id.may_join("rooms:"));
        assert!(id.may_join("dm:alice:1"));
        assert!(!id.may_join("dm:alice:12"));
        assert!(!id.may_join("room:x"));
        assert!(!id.may_join("patterns:stats"));
        let none = check(&v, &hs(with(good(), "topics", json!([])))).unwrap();
        assert!(!none.may_join("rooms:lobby"));
        let all = check(&v, &hs(good())).unwrap();
        assert!(all.may_join("rooms:lobby") && all.may_join("patterns:stats"));
        for bad in [json!("rooms:*"), json!([1]), Value::Null] {
            assert_eq!(
                check(&v, &hs(with(good(), "topics", bad))).unwrap_err(),
                AuthFailure::InvalidToken
            );
        }
    }

    #[test]
    fn info_is_an_object_of_at_most_1_kib() {
        let v = hs_verifier();
        // {"n":"xxx…"} is 8 bytes plus the string.
        let sized = |n: usize| json!({"n": "x".repeat(n - 8)});
        assert_eq!(sized(MAX_INFO_BYTES).to_string().len(), MAX_INFO_BYTES);
        let id = check(&v, &hs(with(good(), "info", sized(MAX_INFO_BYTES)))).unwrap();
        assert_eq!(id.info().unwrap().get().len(), MAX_INFO_BYTES);
        assert_eq!(
            check(&v, &hs(with(good(), "info", sized(MAX_INFO_BYTES + 1)))).unwrap_err(),
            AuthFailure::InvalidToken
        );
        for bad in [json!("name"), json!([1]), json!(3), Value::Null] {
            assert_eq!(
                check(&v, &hs(with(good(), "info", bad))).unwrap_err(),
                AuthFailure::InvalidToken
            );
        }
        assert!(check(&v, &hs(good())).unwrap().info().is_none());
    }

    #[test]
    fn garbage_and_oversized_tokens_are_invalid() {
        let v = hs_verifier();
        let long = hs(with(good(), "pad", json!("x".repeat(MAX_TOKEN_BYTES))));
        for token in ["x", "a.b", "a.b.c", "..", "a.b.c.d", "é.é.é", long.as_str()] {
            assert_eq!(
                check(&v, token).unwrap_err(),
                AuthFailure::InvalidToken,
                "{token}"
            );
        }
        // Claims that are not an object.
        let token = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET).unwrap(),
            &json!(["alice"]),
        );
        assert_eq!(check(&v, &token).unwrap_err(), AuthFailure::InvalidToken);
        // Unknown claims (aud, iss) are ignored.
        let token = hs(with(
            with(good(), "aud", json!("elsewhere")),
            "iss",
            json!("x"),
        ));
        assert!(check(&v, &token).is_ok());
    }

    #[test]
    fn modes() {
        let v = hs_verifier();
        let good_token = hs(good());
        let expired = hs(with(good(), "exp", json!(NOW - 60)));
        let auth = |mode, token| authenticate(&v, mode, token, NOW).map(|i| i.map(|i| i.sub));

        assert_eq!(auth(Mode::Off, None), Ok(None));
        assert_eq!(auth(Mode::Off, Some("garbage")), Ok(None));
        assert_eq!(auth(Mode::Off, Some(&good_token)), Ok(None));

        assert_eq!(auth(Mode::Optional, None), Ok(None));
        assert_eq!(auth(Mode::Optional, Some("")), Ok(None));
        assert_eq!(
            auth(Mode::Optional, Some(&good_token)),
            Ok(Some("alice".into()))
        );
        assert_eq!(
            auth(Mode::Optional, Some("garbage")),
            Err(AuthFailure::InvalidToken)
        );
        assert_eq!(
            auth(Mode::Optional, Some(&expired)),
            Err(AuthFailure::ExpiredToken)
        );

        assert_eq!(auth(Mode::Required, None), Err(AuthFailure::MissingToken));
        assert_eq!(
            auth(Mode::Required, Some("")),
            Err(AuthFailure::MissingToken)
        );
        assert_eq!(
            auth(Mode::Required, Some(&good_token)),
            Ok(Some("alice".into()))
        );
        assert_eq!(
            auth(Mode::Required, Some("garbage")),
            Err(AuthFailure::InvalidToken)
        );
        assert_eq!(
            auth(Mode::Required, Some(&expired)),
            Err(AuthFailure::ExpiredToken)
        );
    }

    #[test]
    fn who_may_join_what() {
        let id = check(
            &hs_verifier(),
            &hs(with(good(), "topics", json!(["rooms:*"]))),
        )
        .unwrap();
        let public = Globs::new(&["lobby", "news:*"]);
        let none = Globs::default();
        for mode in [Mode::Required, Mode::Optional] {
            assert!(may_join(Some(&id), &public, mode, "rooms:1"));
            assert!(
                !may_join(Some(&id), &public, mode, "lobby"),
                "public topics are for anonymous sockets"
            );
        }
        assert!(may_join(None, &public, Mode::Optional, "lobby"));
        assert!(may_join(None, &public, Mode::Optional, "news:today"));
        assert!(!may_join(None, &public, Mode::Optional, "rooms:1"));
        assert!(!may_join(None, &none, Mode::Optional, "lobby"));
        assert!(!may_join(None, &public, Mode::Required, "lobby"));
        assert!(may_join(None, &none, Mode::Off, "rooms:1"));
        assert!(may_join(Some(&id), &none, Mode::Off, "elsewhere"));
    }

    fn protocols(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("sec-websocket-protocol", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn token_from_the_phoenix_subprotocol() {
        let v = hs_verifier();
        let token = hs(with(good(), "info", json!({"who": "a?>~~~"})));
        // phoenix.js 1.8: btoa(token) with `=` stripped (standard alphabet).
        for encoded in [
            STANDARD_NO_PAD.encode(&token),
            STANDARD.encode(&token),
            URL_SAFE_NO_PAD.encode(&token),
            URL_SAFE.encode(&token),
        ] {
            for header in [
                vec![format!("phoenix, {BEARER_PROTOCOL_PREFIX}{encoded}")],
                vec![format!("{BEARER_PROTOCOL_PREFIX}{encoded},phoenix")],
                vec![format!(
                    "chat,  {BEARER_PROTOCOL_PREFIX}{encoded} , phoenix"
                )],
                vec![
                    "phoenix".into(),
                    format!("{BEARER_PROTOCOL_PREFIX}{encoded}"),
                ],
            ] {
                let h = protocols(&header.iter().map(String::as_str).collect::<Vec<_>>());
                let got = request_token(None, &h);
                assert_eq!(got.as_deref(), Some(token.as_str()), "{header:?}");
                assert!(check(&v, &got.unwrap()).is_ok());
            }
        }
        // Both alphabets and both paddings of a text that needs `+` and `/`.
        for (encoded, text) in [
            ("YT8-", "a?>"),
            ("YT8+", "a?>"),
            ("YT8_", "a??"),
            ("YT8/", "a??"),
            ("YT8/Pw", "a???"),
            ("YT8_Pw==", "a???"),
        ] {
            let h = protocols(&[&format!("phoenix, {BEARER_PROTOCOL_PREFIX}{encoded}")]);
            assert_eq!(request_token(None, &h).as_deref(), Some(text), "{encoded}");
        }
        assert_eq!(request_token(None, &protocols(&["phoenix"])), None);
        assert_eq!(request_token(None, &HeaderMap::new()), None);
    }

    #[test]
    fn an_undecodable_bearer_protocol_is_an_invalid_token_not_a_missing_one() {
        let h = protocols(&[&format!("phoenix, {BEARER_PROTOCOL_PREFIX}!!not base64!!")]);
        let got = request_token(None, &h).unwrap();
        assert_eq!(
            check(&hs_verifier(), &got).unwrap_err(),
            AuthFailure::InvalidToken
        );
        // Base64 of bytes that are not UTF-8.
        let h = protocols(&[&format!(
            "{BEARER_PROTOCOL_PREFIX}{}",
            STANDARD.encode([0xff, 0xfe])
        )]);
        let got = request_token(None, &h).unwrap();
        assert_eq!(
            check(&hs_verifier(), &got).unwrap_err(),
            AuthFailure::InvalidToken
        );
    }

    #[test]
    fn token_from_the_query_percent_decoded_and_first() {
        let token = hs(good());
        let q = format!("vsn=2.0.0&token={token}");
        assert_eq!(
            request_token(Some(&q), &HeaderMap::new()),
            Some(token.clone())
        );
        // Percent-encoded (encodeURIComponent of a JWT changes nothing, but
        // a client may encode every character).
        let encoded: String = token.bytes().map(|b| format!("%{b:02X}")).collect();
        let q = format!("token={encoded}&vsn=2.0.0");
        let got = request_token(Some(&q), &HeaderMap::new()).unwrap();
        assert_eq!(got, token);
        assert!(check(&hs_verifier(), &got).is_ok());
        // The query param wins over the subprotocol.
        let h = protocols(&[&format!(
            "phoenix, {BEARER_PROTOCOL_PREFIX}{}",
            STANDARD_NO_PAD.encode("other")
        )]);
        assert_eq!(request_token(Some(&q), &h), Some(token.clone()));
        // An empty or `undefined` query token falls back to the subprotocol.
        for q in ["token=", "token=undefined", "token=null", "vsn=2.0.0"] {
            assert_eq!(request_token(Some(q), &h).as_deref(), Some("other"), "{q}");
            assert_eq!(request_token(Some(q), &HeaderMap::new()), None, "{q}");
        }
        assert_eq!(request_token(None, &HeaderMap::new()), None);
    }

    #[test]
    fn keys_that_cannot_be_used_are_refused_with_a_reason() {
        let err = |pem: &[u8]| Verifier::from_public_key_pem(pem).unwrap_err().to_string();
        assert!(
            err(RSA_PRIVATE).contains("private key"),
            "{}",
            err(RSA_PRIVATE)
        );
        assert!(err(EC_PRIVATE).contains("-pubout"));
        assert!(err(P384_PUBLIC).contains("P-256"), "{}", err(P384_PUBLIC));
        assert!(err(b"").contains("no PEM"));
        assert!(err(b"hello").contains("no PEM"));
        assert!(
            err(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .contains("certificate")
        );
        let broken = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(
            err(broken).contains("unsupported or unreadable"),
            "{}",
            err(broken)
        );
        assert!(Verifier::from_secret(b"")
            .unwrap_err()
            .to_string()
            .contains("empty"));

        let missing = Path::new("/nonexistent/key.pem");
        let e = Verifier::from_public_key_file(missing)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/key.pem") && e.contains("cannot read"),
            "{e}"
        );
        assert!(Verifier::from_settings(Some("s"), Some(missing))
            .unwrap_err()
            .to_string()
            .contains("not both"));
        assert!(Verifier::from_settings(None, None).unwrap().is_none());
        let hs = Verifier::from_settings(Some("s"), None).unwrap().unwrap();
        assert_eq!(hs.algorithm(), "HS256");
        assert!(format!("{hs:?}").contains("HS256"));
    }

    #[test]
    fn a_public_key_file_is_read() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/keys/test-only-ed25519-public.pem");
        let v = Verifier::from_settings(None, Some(&path)).unwrap().unwrap();
        assert_eq!(v.algorithm(), "EdDSA");
    }

    #[test]
    fn failure_reasons_and_labels() {
        let all = [
            AuthFailure::MissingToken,
            AuthFailure::InvalidToken,
            AuthFailure::ExpiredToken,
        ];
        let reasons: Vec<_> = all.iter().map(|f| f.reason()).collect();
        let labels: Vec<_> = all.iter().map(|f| f.metric_label()).collect();
        assert_eq!(reasons, ["missing token", "invalid token", "expired token"]);
        assert_eq!(labels, ["missing_token", "invalid_token", "expired_token"]);
        assert_eq!(AuthFailure::ExpiredToken.to_string(), "expired token");
    }
}
