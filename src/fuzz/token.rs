//! Target `token`: the signed-token path of `auth` — where a token comes
//! from on an upgrade (`request_token`: query, `Sec-WebSocket-Protocol`),
//! whether it is good (`authenticate`, for an HS256 secret and RSA, P-256
//! and Ed25519 public keys, in every `--auth` mode), and the PEM key reader.
//! A token is the one thing an unauthenticated stranger hands the node that
//! decides what they may do. Properties, for any bytes, header or query:
//!
//! - nothing panics;
//! - a token is accepted only when its header names exactly the verifier's
//!   algorithm (so `alg: none`, any case, never is, nor HS256 signed with
//!   the RSA public key), its signature verifies with the verifier's key
//!   (checked independently of `authenticate`), it is at most
//!   `MAX_TOKEN_BYTES` long, and its claims are what SPEC §8.1 demands
//!   (`sub` a non-empty string, `exp` present under `required` and not
//!   past, `nbf`/`iat` not in the future, `topics` strings, `info` an
//!   object ≤ 1 KiB), and the identity carries that `sub` and `exp`;
//! - "expired token" is said only of a token whose signature is good: a
//!   forged one is "invalid", whatever its `exp`;
//! - a good token, signed by the right key, is accepted up to the size cap
//!   and refused above it, however valid;
//! - `--auth off` accepts anything as anonymous; an empty token is none;
//! - `request_token` finds the query's `token` (percent-decoded; empty,
//!   `undefined` and `null` count as absent) before the first
//!   `base64url.bearer.phx.` protocol entry, which it base64-decodes (both
//!   alphabets, padding or not) or returns as sent;
//! - a PEM public key parses to RS256, ES256 or EdDSA, or is refused.

use super::mutate::{mutated, seeds};
use super::{ensure, Input, Verdict};
use crate::auth::{
    authenticate, request_token, AuthFailure, Identity, Mode, Verifier, BEARER_PROTOCOL_PREFIX,
    LEEWAY_SECS, MAX_INFO_BYTES, MAX_TOKEN_BYTES,
};
use axum::http::{HeaderMap, HeaderValue};
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::OnceLock;

const TARGET: &str = "token";
const NOW: u64 = 1_700_000_000;
const SECRET: &[u8] = b"fuzz secret, at least thirty-two bytes long";

const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/keys/test-only-rsa-public.pem");
const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/keys/test-only-rsa-private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/keys/test-only-ec-p256-public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/keys/test-only-ec-p256-private.pem");
const ED_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/keys/test-only-ed25519-public.pem");
const ED_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/keys/test-only-ed25519-private.pem");

const DICT: &[&[u8]] = &[
    b".",
    b"..",
    b"=",
    b"-",
    b"_",
    b"+",
    b"/",
    b"eyJhbGciOiJub25lIn0",
    b"eyJhbGciOiJIUzI1NiJ9",
    b"eyJhbGciOiJSUzI1NiJ9",
    b"%00",
    b"%2E",
    b"&token=",
    b"token=",
    b"undefined",
    b"-----BEGIN PUBLIC KEY-----\n",
    b"\n-----END PUBLIC KEY-----\n",
    b"MCowBQYDK2VwAyEA",
];

/// One verifier and what the oracle checks its answers with.
struct Key {
    verifier: Verifier,
    decoding: DecodingKey,
    alg: Algorithm,
    name: &'static str,
}

struct Fixtures {
    keys: Vec<Key>,
    /// Tokens signed by the right private keys, good claims, in order
    /// RS256, ES256, EdDSA; signing with RSA is slow in a debug build, so
    /// they are made once.
    signed: Vec<String>,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let key = |verifier: Verifier, decoding, alg, name| Key {
            verifier,
            decoding,
            alg,
            name,
        };
        let keys = vec![
            key(
                Verifier::from_secret(SECRET).unwrap(),
                DecodingKey::from_secret(SECRET).unwrap(),
                Algorithm::HS256,
                "HS256",
            ),
            key(
                Verifier::from_public_key_pem(RSA_PUBLIC).unwrap(),
                DecodingKey::from_rsa_pem(RSA_PUBLIC).unwrap(),
                Algorithm::RS256,
                "RS256",
            ),
            key(
                Verifier::from_public_key_pem(EC_PUBLIC).unwrap(),
                DecodingKey::from_ec_pem(EC_PUBLIC).unwrap(),
                Algorithm::ES256,
                "ES256",
            ),
            key(
                Verifier::from_public_key_pem(ED_PUBLIC).unwrap(),
                DecodingKey::from_ed_pem(ED_PUBLIC).unwrap(),
                Algorithm::EdDSA,
                "EdDSA",
            ),
        ];
        let claims = json!({"sub": "alice", "iat": NOW, "exp": NOW + 3600,
                            "topics": ["rooms:*"], "info": {"name": "A"}});
        let sign = |alg, key: EncodingKey| {
            jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &key).unwrap()
        };
        let signed = vec![
            sign(
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
            ),
            sign(
                Algorithm::ES256,
                EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
            ),
            sign(
                Algorithm::EdDSA,
                EncodingKey::from_ed_pem(ED_PRIVATE).unwrap(),
            ),
        ];
        for k in &keys {
            assert_eq!(k.verifier.algorithm(), k.name);
        }
        Fixtures { keys, signed }
    })
}

#[derive(Clone, Debug)]
pub struct TokenInput {
    bytes: Vec<u8>,
    /// Signed with the right key, good claims: the verifier of this
    /// algorithm must accept it unless it is over the size cap.
    good_for: Option<&'static str>,
}

impl Input for TokenInput {
    fn from_seed(bytes: &[u8]) -> Self {
        TokenInput {
            bytes: bytes.to_vec(),
            good_for: None,
        }
    }

    fn to_seed(&self) -> Vec<u8> {
        self.bytes.clone()
    }
}

/// The claims part of a token, with each claim's raw JSON text.
fn raw_claims(segment: &str) -> Option<HashMap<String, Box<RawValue>>> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A NumericDate as SPEC §8.1 reads it: seconds, fraction dropped, before
/// the epoch as the epoch.
fn seconds(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        Some(n)
    } else if v.as_i64().is_some() {
        Some(0)
    } else {
        v.as_f64().map(|f| f.floor().max(0.0) as u64)
    }
}

/// Whether the signature of `token` verifies with `key`, as jsonwebtoken's
/// primitive sees it, regardless of claims.
fn signature_ok(token: &str, key: &Key) -> Result<(), String> {
    let parts: Vec<&str> = token.split('.').collect();
    ensure!(parts.len() == 3, "{} parts", parts.len());
    let header = URL_SAFE_NO_PAD
        .decode(parts[0])
        .map_err(|e| format!("header base64: {e}"))?;
    let header: Value = serde_json::from_slice(&header).map_err(|e| format!("header JSON: {e}"))?;
    ensure!(
        header["alg"] == key.name,
        "header alg {} is not {}",
        header["alg"],
        key.name
    );
    let message = format!("{}.{}", parts[0], parts[1]);
    match jsonwebtoken::crypto::verify(parts[2], message.as_bytes(), &key.decoding, key.alg) {
        Ok(true) => Ok(()),
        other => Err(format!("signature does not verify: {other:?}")),
    }
}

/// What an accepted token must be.
fn check_accepted(token: &str, key: &Key, mode: Mode, id: &Identity) -> Verdict {
    let ctx = || format!("{} accepted under {mode:?}: {token:?}", key.name);
    ensure!(
        token.len() <= MAX_TOKEN_BYTES,
        "{}: over the size cap",
        ctx()
    );
    signature_ok(token, key).map_err(|e| format!("{}: {e}", ctx()))?;
    let payload = token.split('.').nth(1).unwrap_or_default();
    let raw = raw_claims(payload).ok_or_else(|| format!("{}: claims not an object", ctx()))?;
    let value = |k: &str| {
        raw.get(k)
            .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
    };
    let sub = value("sub");
    ensure!(
        sub.as_ref()
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty()),
        "{}: sub {sub:?}",
        ctx()
    );
    ensure!(
        id.sub() == sub.unwrap().as_str().unwrap(),
        "{}: identity sub {}",
        ctx(),
        id.sub()
    );
    let horizon = NOW + LEEWAY_SECS;
    match raw.get("exp") {
        None => ensure!(
            mode == Mode::Optional && id.exp().is_none(),
            "{}: no exp",
            ctx()
        ),
        Some(_) => {
            let exp = value("exp").as_ref().and_then(seconds);
            ensure!(
                exp.is_some(),
                "{}: exp {:?} not a number",
                ctx(),
                raw["exp"]
            );
            ensure!(
                exp.unwrap().saturating_add(LEEWAY_SECS) >= NOW,
                "{}: expired",
                ctx()
            );
            ensure!(
                id.exp() == exp,
                "{}: identity exp {:?}, claim {exp:?}",
                ctx(),
                id.exp()
            );
        }
    }
    for claim in ["nbf", "iat"] {
        if raw.contains_key(claim) {
            let t = value(claim).as_ref().and_then(seconds);
            ensure!(
                t.is_some_and(|t| t <= horizon),
                "{}: {claim} {:?}",
                ctx(),
                raw[claim]
            );
        }
    }
    if raw.contains_key("topics") {
        let topics = value("topics");
        let ok = topics
            .as_ref()
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().all(Value::is_string));
        ensure!(ok, "{}: topics {topics:?}", ctx());
    }
    if let Some(info) = raw.get("info") {
        ensure!(
            info.get().starts_with('{') && info.get().len() <= MAX_INFO_BYTES,
            "{}: info {}",
            ctx(),
            info.get()
        );
        ensure!(
            id.info().map(RawValue::get) == Some(info.get()),
            "{}: identity info",
            ctx()
        );
    }
    Ok(())
}

fn check_token(token: &str, good_for: Option<&str>) -> Verdict {
    let f = fixtures();
    let header_alg = token
        .split('.')
        .next()
        .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
        .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
        .and_then(|h| h["alg"].as_str().map(str::to_ascii_lowercase));
    for (i, key) in f.keys.iter().enumerate() {
        ensure!(
            authenticate(&key.verifier, Mode::Off, Some(token), NOW).is_ok_and(|id| id.is_none()),
            "--auth off must let anyone in anonymously"
        );
        // Optional differs from required only for a token without `exp`;
        // the slow verifiers are asked once.
        let modes: &[Mode] = if i == 0 {
            &[Mode::Required, Mode::Optional]
        } else {
            &[Mode::Required]
        };
        for &mode in modes {
            let got = authenticate(&key.verifier, mode, Some(token), NOW);
            if token.is_empty() {
                let ok = match mode {
                    Mode::Required => matches!(got, Err(AuthFailure::MissingToken)),
                    _ => matches!(got, Ok(None)),
                };
                ensure!(ok, "an empty token under {mode:?}: {got:?}");
                continue;
            }
            if mode == Mode::Required {
                super::note(
                    TARGET,
                    match (&got, key.name) {
                        (Ok(_), "HS256") => "accepted by HS256",
                        (Ok(_), "RS256") => "accepted by RS256",
                        (Ok(_), "ES256") => "accepted by ES256",
                        (Ok(_), _) => "accepted by EdDSA",
                        (Err(AuthFailure::ExpiredToken), _) => "expired",
                        (Err(_), _) => "refused",
                    },
                );
            }
            match &got {
                Ok(Some(id)) => {
                    ensure!(
                        header_alg.as_deref() != Some("none"),
                        "alg none accepted by {}",
                        key.name
                    );
                    check_accepted(token, key, mode, id)?;
                }
                Ok(None) => return Err(format!("{} {mode:?}: a token, no identity", key.name)),
                Err(AuthFailure::MissingToken) => {
                    return Err(format!("{} {mode:?}: a token taken for none", key.name))
                }
                Err(AuthFailure::ExpiredToken) => {
                    signature_ok(token, key).map_err(|e| {
                        format!("{} said expired of a token whose {e}: {token:?}", key.name)
                    })?;
                }
                Err(AuthFailure::InvalidToken) => {}
            }
            if good_for == Some(key.name) && mode == Mode::Required {
                let accepted = matches!(got, Ok(Some(_)));
                ensure!(
                    accepted == (token.len() <= MAX_TOKEN_BYTES),
                    "{} answered {got:?} for a good {}-byte token: {token:?}",
                    key.name,
                    token.len()
                );
            }
        }
    }
    Ok(())
}

fn protocols(values: &[HeaderValue]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append("sec-websocket-protocol", v.clone());
    }
    h
}

/// What `request_token` must find, from SPEC §8.1 and phoenix.js.
fn expected_token(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    if let Some(q) = query {
        let first = form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token");
        if let Some((_, v)) = first {
            if !["", "undefined", "null"].contains(&&*v) {
                return Some(v.into_owned());
            }
        }
    }
    for value in headers.get_all("sec-websocket-protocol") {
        let Ok(text) = value.to_str() else { continue };
        for entry in text.split(',') {
            if let Some(encoded) = entry.trim().strip_prefix(BEARER_PROTOCOL_PREFIX) {
                // Either alphabet, padding or not (base64's own rules for
                // what padding is acceptable), trailing bits allowed.
                let standard = encoded.replace('-', "+").replace('_', "/");
                let decoded = base64::engine::GeneralPurpose::new(
                    &base64::alphabet::STANDARD,
                    base64::engine::GeneralPurposeConfig::new()
                        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
                        .with_decode_allow_trailing_bits(true),
                )
                .decode(standard)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|t| !t.is_empty());
                return Some(decoded.unwrap_or_else(|| encoded.to_owned()));
            }
        }
    }
    None
}

fn check_request(bytes: &[u8]) -> Verdict {
    let text = String::from_utf8_lossy(bytes);
    let none = HeaderMap::new();
    // The token as `?token=` (percent-encoded) and as the phoenix.js protocol.
    let encoded: String = form_urlencoded::byte_serialize(bytes).collect();
    let query = format!("vsn=2.0.0&token={encoded}");
    let want = Some(text.clone().into_owned())
        .filter(|t| !["", "undefined", "null"].contains(&t.as_str()));
    ensure!(
        request_token(Some(&query), &none) == want,
        "query {query:?} gave {:?}",
        request_token(Some(&query), &none)
    );
    let bearer = format!(
        "phoenix, {BEARER_PROTOCOL_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(bytes)
    );
    let h = protocols(&[HeaderValue::from_str(&bearer).unwrap()]);
    let got = request_token(None, &h);
    let want = match std::str::from_utf8(bytes) {
        Ok(t) if !t.is_empty() => t.to_owned(),
        _ => URL_SAFE_NO_PAD.encode(bytes),
    };
    ensure!(
        got.as_deref() == Some(want.as_str()),
        "protocol {bearer:?} gave {got:?}"
    );
    // The bytes themselves as a query and as protocol headers.
    let raw_query = text.as_ref();
    let mut values: Vec<HeaderValue> = bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| HeaderValue::from_bytes(line).ok())
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{BEARER_PROTOCOL_PREFIX}{}",
        STANDARD.encode(bytes)
    )) {
        values.push(v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!(
        "x, {BEARER_PROTOCOL_PREFIX}{}",
        URL_SAFE.encode(bytes)
    )) {
        values.push(v);
    }
    let h = protocols(&values);
    let mut found = Vec::new();
    for (q, h) in [(Some(raw_query), &none), (None, &h), (Some(raw_query), &h)] {
        let got = request_token(q, h);
        let want = expected_token(q, h);
        ensure!(
            got == want,
            "query {q:?}, protocols {h:?}: got {got:?}, expected {want:?}"
        );
        found.extend(got);
    }
    found.sort();
    found.dedup();
    for t in found.iter().filter(|t| **t != text) {
        check_token(t, None)?;
    }
    Ok(())
}

fn check_pem(bytes: &[u8]) -> Verdict {
    if bytes.windows(10).any(|w| w == b"-----BEGIN") {
        if let Ok(v) = Verifier::from_public_key_pem(bytes) {
            ensure!(
                ["RS256", "ES256", "EdDSA"].contains(&v.algorithm()),
                "a PEM key gave {}",
                v.algorithm()
            );
        }
    }
    Ok(())
}

fn property(input: &TokenInput) -> Verdict {
    let token = String::from_utf8_lossy(&input.bytes);
    check_token(&token, input.good_for)?;
    check_request(&input.bytes)?;
    check_pem(&input.bytes)
}

/// A token built from parts: any header `alg`, claims of every type, signed
/// with the secret, a wrong key, the RSA or Ed25519 public key as an HMAC
/// secret (algorithm confusion), or not at all; encoded right or not.
fn built_token() -> impl Strategy<Value = TokenInput> {
    let alg = prop_oneof![
        6 => Just("HS256"),
        1 => Just("none"), 1 => Just("None"), 1 => Just("NONE"), 1 => Just("nOnE"),
        1 => Just("HS384"), 1 => Just("HS512"), 1 => Just("RS256"), 1 => Just("ES256"),
        1 => Just("EdDSA"), 1 => Just("PS256"), 1 => Just(""),
    ];
    let header_extra = prop_oneof![
        4 => Just(String::new()),
        1 => Just(r#","typ":"JWT""#.to_owned()),
        1 => Just(r#","kid":"k1","jku":"http://evil""#.to_owned()),
        1 => Just(r#","alg":"none""#.to_owned()),
        1 => Just(r#","crit":["exp"]"#.to_owned()),
    ];
    let number = |near: u64| {
        prop_oneof![
            Just(json!(near)),
            Just(json!(near + 3600)),
            Just(json!(near - 3600)),
            Just(json!(near + LEEWAY_SECS)),
            Just(json!(near + LEEWAY_SECS + 1)),
            Just(json!(near - LEEWAY_SECS)),
            Just(json!(near - LEEWAY_SECS - 1)),
            Just(json!(near as f64 + 0.999)),
            Just(json!(-1)),
            Just(json!(0)),
            Just(json!(u64::MAX)),
            Just(json!(1e300)),
            Just(json!(-1e300)),
            Just(json!("1700000000")),
            Just(Value::Null),
            Just(json!({})),
        ]
    };
    let claim = |v: BoxedStrategy<Value>| prop_oneof![1 => Just(None), 4 => v.prop_map(Some)];
    let sub = prop_oneof![
        6 => Just(json!("alice")),
        1 => Just(json!("")),
        1 => Just(json!(42)),
        1 => Just(Value::Null),
        1 => Just(json!(["alice"])),
        1 => "\\PC{1,8}".prop_map(Value::from),
    ];
    let topics = prop_oneof![
        Just(json!(["rooms:*"])),
        Just(json!([])),
        Just(json!("rooms:*")),
        Just(json!([1])),
        Just(json!(["[", "\\", "**"])),
    ];
    let info = prop_oneof![
        Just(json!({"name": "A"})),
        (1000usize..1040).prop_map(|n| json!({"n": "x".repeat(n - 8)})),
        Just(json!("name")),
        Just(json!([1])),
    ];
    let claims = (
        claim(sub.boxed()),
        claim(number(NOW + 3600).boxed()),
        claim(number(NOW).boxed()),
        claim(number(NOW).boxed()),
        claim(topics.boxed()),
        claim(info.boxed()),
        prop_oneof![6 => Just(0usize), 1 => 8000usize..8300],
    );
    let signer = prop_oneof![
        6 => Just(0u8), // the secret
        1 => Just(1),   // another secret
        1 => Just(2),   // the RSA public key PEM as an HMAC secret
        1 => Just(3),   // the Ed25519 public key PEM as an HMAC secret
        1 => Just(4),   // empty signature
        1 => Just(5),   // garbage signature
    ];
    let encoding = prop_oneof![8 => Just(0u8), 1 => Just(1), 1 => Just(2)];
    (alg, header_extra, claims, signer, encoding).prop_map(
        |(alg, extra, (sub, exp, nbf, iat, topics, info, pad), signer, encoding)| {
            let header = format!(r#"{{"alg":"{alg}"{extra}}}"#);
            let mut c = Map::new();
            for (k, v) in [
                ("sub", sub),
                ("exp", exp),
                ("nbf", nbf),
                ("iat", iat),
                ("topics", topics),
                ("info", info),
            ] {
                if let Some(v) = v {
                    c.insert(k.into(), v);
                }
            }
            if pad > 0 {
                c.insert("pad".into(), json!("p".repeat(pad)));
            }
            let claims = Value::Object(c).to_string();
            let enc = |b: &[u8]| match encoding {
                0 => URL_SAFE_NO_PAD.encode(b),
                1 => URL_SAFE.encode(b),
                _ => STANDARD.encode(b),
            };
            let message = format!("{}.{}", enc(header.as_bytes()), enc(claims.as_bytes()));
            let hmac = |key: &[u8], alg| {
                let alg = match alg {
                    "HS384" => Algorithm::HS384,
                    "HS512" => Algorithm::HS512,
                    _ => Algorithm::HS256,
                };
                jsonwebtoken::crypto::sign(
                    message.as_bytes(),
                    &EncodingKey::from_secret(key).unwrap(),
                    alg,
                )
                .unwrap()
            };
            let signature = match signer {
                0 => hmac(SECRET, alg),
                1 => hmac(b"another secret, also thirty-two bytes", alg),
                2 => hmac(RSA_PUBLIC, alg),
                3 => hmac(ED_PUBLIC, alg),
                4 => String::new(),
                _ => "c2lnbmF0dXJl".to_owned(),
            };
            let token = format!("{message}.{signature}");
            let good = alg == "HS256"
                && extra.is_empty()
                && signer == 0
                && encoding == 0
                && claims_ok(&claims);
            TokenInput {
                bytes: token.into_bytes(),
                good_for: good.then_some("HS256"),
            }
        },
    )
}

/// Whether generated claims are all good (sub, exp required, times, topics, info).
fn claims_ok(claims: &str) -> bool {
    let Ok(Value::Object(c)) = serde_json::from_str::<Value>(claims) else {
        return false;
    };
    let time = |k: &str| {
        c.get(k)
            .map(|v| if v.is_number() { seconds(v) } else { None })
    };
    let sub = c
        .get("sub")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty());
    let exp = matches!(time("exp"), Some(Some(t)) if t.saturating_add(LEEWAY_SECS) >= NOW);
    let not_future = |k: &str| match time(k) {
        None => true,
        Some(Some(t)) => t <= NOW + LEEWAY_SECS,
        Some(None) => false,
    };
    let topics = c
        .get("topics")
        .is_none_or(|t| t.as_array().is_some_and(|a| a.iter().all(Value::is_string)));
    let info = c
        .get("info")
        .is_none_or(|i| i.is_object() && i.to_string().len() <= MAX_INFO_BYTES);
    sub && exp && not_future("nbf") && not_future("iat") && topics && info
}

/// A good HS256 token, varied only in ways that keep it good, sometimes
/// padded to just under or over the size cap.
fn good_token() -> impl Strategy<Value = TokenInput> {
    (
        prop_oneof![3 => Just(0usize), 1 => 7900usize..8200],
        prop_oneof![
            Just(None),
            Just(Some(json!(["rooms:*", "x"]))),
            Just(Some(json!([])))
        ],
        prop_oneof![
            Just(None),
            (8usize..=MAX_INFO_BYTES).prop_map(|n| Some(json!({"n": "x".repeat(n - 8)})))
        ],
        prop_oneof![Just(None), (0..3600u64).prop_map(|d| Some(NOW - d))],
        prop_oneof![
            Just(NOW),
            Just(NOW + 1),
            Just(NOW - LEEWAY_SECS),
            Just(u64::MAX)
        ],
        "\\PC{1,12}",
    )
        .prop_map(|(pad, topics, info, nbf, exp, sub)| {
            let mut c = json!({"sub": sub, "exp": exp});
            for (k, v) in [
                ("topics", topics),
                ("info", info),
                ("nbf", nbf.map(Value::from)),
            ] {
                if let Some(v) = v {
                    c[k] = v;
                }
            }
            let claims = c.to_string();
            // `pad` is the token length aimed at: base64 makes 4 of 3.
            let pad = pad.saturating_sub(claims.len() * 4 / 3 + 90) * 3 / 4;
            if pad > 0 {
                c["pad"] = json!("p".repeat(pad));
            }
            let header = jsonwebtoken::Header::new(Algorithm::HS256);
            let key = EncodingKey::from_secret(SECRET).unwrap();
            let token = jsonwebtoken::encode(&header, &c, &key).unwrap();
            TokenInput {
                bytes: token.into_bytes(),
                good_for: Some("HS256"),
            }
        })
}

fn strategy() -> impl Strategy<Value = TokenInput> {
    let seeds = seeds(TARGET);
    let signed = fixtures().signed.clone();
    let names = ["RS256", "ES256", "EdDSA"];
    let pool = (0..signed.len()).prop_map(move |i| TokenInput {
        bytes: signed[i].clone().into_bytes(),
        good_for: Some(names[i]),
    });
    let signed = fixtures().signed.clone();
    let pool_mutated =
        (0..signed.len(), vec(super::mutate::mutation(), 1..4)).prop_map(move |(i, ops)| {
            let mut b = signed[i].clone().into_bytes();
            for op in &ops {
                op.apply(&mut b, &[], DICT);
            }
            TokenInput {
                bytes: b,
                good_for: None,
            }
        });
    prop_oneof![
        3 => mutated(seeds, DICT, 5).prop_map(|b| TokenInput::from_seed(&b)).boxed(),
        5 => built_token().boxed(),
        2 => good_token().boxed(),
        1 => pool.boxed(),
        1 => pool_mutated.boxed(),
        1 => vec(any::<u8>(), 0..48).prop_map(|b| TokenInput::from_seed(&b)).boxed(),
    ]
}

#[test]
fn fuzz_token() {
    super::run(TARGET, 3_000, strategy(), property);
}
