//! `headcount token`: signs a token the way a back-end would (SPEC §8.1), for
//! trying `--auth` out, for tests and for shell scripts. A real back-end
//! issues the same token with its own JWT library (README, "Signed
//! tokens"); every token this prints verifies with [`headcount::auth`] under the
//! matching `--auth-secret` or `--auth-public-key`.

use headcount::auth::{pem_label, MAX_INFO_BYTES};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::value::RawValue;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("key").required(true).args(["secret", "private_key"])))]
pub struct TokenArgs {
    /// Shared secret: sign with HS256 (the node's `--auth-secret`).
    #[arg(long)]
    pub secret: Option<String>,
    /// PEM private key, PKCS#8 (or PKCS#1 for RSA): RSA signs with RS256,
    /// EC P-256 with ES256, Ed25519 with EdDSA (the node's
    /// `--auth-public-key` is its public half).
    #[arg(long, value_name = "FILE")]
    pub private_key: Option<PathBuf>,
    /// The user id (`sub`), presence key of the socket.
    #[arg(long)]
    pub sub: String,
    /// Topics the token may join, as globs (`rooms:*`); repeatable or a
    /// comma list. Without it: every topic the node allows.
    #[arg(
        long = "topics",
        visible_alias = "topic",
        value_name = "GLOBS",
        value_delimiter = ','
    )]
    pub topics: Vec<String>,
    /// Lifetime: `exp` is now plus this (`90s`, `15m`, `1h`, `7d`).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// A JSON object shown in presence metas (`info`), at most 1 KiB.
    #[arg(long, value_name = "JSON")]
    pub info: Option<String>,
}

/// Bad input: the message names the flag.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(String);

fn bad(message: impl Into<String>) -> TokenError {
    TokenError(message.into())
}

/// The claims of an issued token.
#[derive(Serialize)]
struct Issued<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    topics: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<Box<RawValue>>,
}

/// The token for `args`, issued now.
pub fn run(args: &TokenArgs) -> Result<String, TokenError> {
    sign(args, headcount::auth::unix_now())
}

/// The token for `args`, issued at unix time `now`.
pub fn sign(args: &TokenArgs, now: u64) -> Result<String, TokenError> {
    if args.sub.is_empty() {
        return Err(bad("--sub must not be empty"));
    }
    if args.topics.iter().any(String::is_empty) {
        return Err(bad("--topics: empty glob"));
    }
    if args.ttl.is_zero() {
        return Err(bad("--ttl must be more than 0"));
    }
    let info = args.info.as_deref().map(compact_info).transpose()?;
    let (key, alg) = match (&args.secret, &args.private_key) {
        (Some(secret), None) => (
            EncodingKey::from_secret(secret.as_bytes())
                .map_err(|_| bad("--secret must not be empty"))?,
            Algorithm::HS256,
        ),
        (None, Some(path)) => signing_key(path)?,
        _ => return Err(bad("give --secret or --private-key, not both")),
    };
    let claims = Issued {
        sub: &args.sub,
        iat: now,
        exp: now.saturating_add(args.ttl.as_secs().max(1)),
        topics: (!args.topics.is_empty()).then_some(args.topics.as_slice()),
        info,
    };
    jsonwebtoken::encode(&Header::new(alg), &claims, &key).map_err(|e| {
        match (&args.private_key, alg) {
            // The only key `signing_key` cannot check by itself: an EC key on
            // another curve (P-384) is read, then fails to sign as ES256.
            (Some(path), Algorithm::ES256) => bad(format!(
                "--private-key {}: EC key not on curve P-256 (prime256v1): only ES256 is supported",
                path.display()
            )),
            (Some(path), _) => bad(format!(
                "--private-key {}: cannot sign with it ({alg:?}): {e}",
                path.display()
            )),
            (None, _) => bad(format!("cannot sign: {e}")),
        }
    })
}

/// `--info` as compact JSON text: an object of at most [`MAX_INFO_BYTES`].
fn compact_info(text: &str) -> Result<Box<RawValue>, TokenError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("--info is not JSON ({e}): {text}")))?;
    if !value.is_object() {
        return Err(bad(format!("--info must be a JSON object: {text}")));
    }
    let compact = value.to_string();
    if compact.len() > MAX_INFO_BYTES {
        return Err(bad(format!(
            "--info is {} bytes as JSON; at most {MAX_INFO_BYTES}",
            compact.len()
        )));
    }
    RawValue::from_string(compact).map_err(|e| bad(format!("--info: {e}")))
}

/// The key of `--private-key` and the algorithm it signs with.
fn signing_key(path: &Path) -> Result<(EncodingKey, Algorithm), TokenError> {
    let fail = |m: &str| bad(format!("--private-key {}: {m}", path.display()));
    let pem = std::fs::read(path).map_err(|e| fail(&format!("cannot read it: {e}")))?;
    match pem_label(&pem) {
        Some("PRIVATE KEY" | "RSA PRIVATE KEY") => {}
        Some("EC PRIVATE KEY") => {
            return Err(fail(
                "SEC1 EC key; convert it to PKCS#8 first \
                 (openssl pkcs8 -topk8 -nocrypt -in ec.pem -out ec-pkcs8.pem)",
            ))
        }
        Some("ENCRYPTED PRIVATE KEY") => {
            return Err(fail(
                "encrypted key; decrypt it first (openssl pkey -in key.pem -out plain.pem)",
            ))
        }
        Some(label) if label.contains("PUBLIC KEY") => {
            return Err(fail("this is a public key; give the private key"))
        }
        Some(label) => return Err(fail(&format!("PEM block {label:?} is not a private key"))),
        None => return Err(fail("no PEM private key found")),
    }
    if let Ok(key) = EncodingKey::from_rsa_pem(&pem) {
        return Ok((key, Algorithm::RS256));
    }
    if let Ok(key) = EncodingKey::from_ec_pem(&pem) {
        return Ok((key, Algorithm::ES256));
    }
    if let Ok(key) = EncodingKey::from_ed_pem(&pem) {
        return Ok((key, Algorithm::EdDSA));
    }
    Err(fail(
        "unsupported or unreadable private key: want RSA, EC P-256 or Ed25519",
    ))
}
