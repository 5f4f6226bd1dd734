//! Signed connect tokens for `--token-secret` (SPEC §8.1): one fresh HS256
//! JWT per socket, `sub` = `bench-<n>`, `exp` = now + 1 h, an optional
//! `topics` claim, presented as the `?token=` connect param or as the
//! `base64url.bearer.phx.<base64>` subprotocol that phoenix.js sends for its
//! `authToken` option. Signed with `jsonwebtoken`, the crate the server
//! verifies with.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use clap::ValueEnum;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// How long a bench token is valid.
pub const TOKEN_TTL_SECS: u64 = 3600;

/// Where a socket presents its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenIn {
    /// `?token=…` on the upgrade URL
    Query,
    /// `Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.<base64>`
    Protocol,
}

/// What a worker needs to sign its sockets' tokens.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenSpec {
    pub secret: String,
    /// The `topics` claim; empty = no claim.
    pub topics: Vec<String>,
    pub token_in: TokenIn,
}

/// A signed token, ready for the upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// Appended to the path's query as `&token=…` (a JWT needs no escaping).
    Query(String),
    /// The whole `Sec-WebSocket-Protocol` header value.
    Protocol(String),
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: String,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    topics: Option<&'a [String]>,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenSpec {
    /// The token of socket `n`, issued at unix time `now`.
    pub fn sign(&self, n: usize, now: u64) -> Result<String, String> {
        let key = EncodingKey::from_secret(self.secret.as_bytes())
            .map_err(|_| "--token-secret must not be empty".to_string())?;
        let claims = Claims {
            sub: format!("bench-{n}"),
            iat: now,
            exp: now + TOKEN_TTL_SECS,
            topics: (!self.topics.is_empty()).then_some(self.topics.as_slice()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
            .map_err(|e| format!("cannot sign a token: {e}"))
    }

    /// A fresh token for socket `n`, where `token_in` says.
    pub fn credential(&self, n: usize) -> Result<Credential, String> {
        let token = self.sign(n, unix_now())?;
        Ok(match self.token_in {
            TokenIn::Query => Credential::Query(token),
            // phoenix.js: `base64url.bearer.phx.${btoa(token).replace(/=/g, "")}`
            TokenIn::Protocol => Credential::Protocol(format!(
                "phoenix, base64url.bearer.phx.{}",
                STANDARD_NO_PAD.encode(token)
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[derive(Deserialize)]
    struct Seen {
        sub: String,
        exp: u64,
        iat: u64,
        topics: Option<Vec<String>>,
    }

    fn spec(topics: &[&str], token_in: TokenIn) -> TokenSpec {
        TokenSpec {
            secret: "s3cret".into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            token_in,
        }
    }

    fn verify(token: &str) -> Seen {
        let key = DecodingKey::from_secret(b"s3cret").unwrap();
        jsonwebtoken::decode::<Seen>(token, &key, &Validation::new(Algorithm::HS256))
            .unwrap()
            .claims
    }

    #[test]
    fn tokens_carry_sub_exp_and_topics() {
        let now = unix_now();
        let t = spec(&["bench:*"], TokenIn::Query).sign(7, now).unwrap();
        let seen = verify(&t);
        assert_eq!(seen.sub, "bench-7");
        assert_eq!(seen.iat, now);
        assert_eq!(seen.exp, now + 3600);
        assert_eq!(seen.topics, Some(vec!["bench:*".to_string()]));
        let t = spec(&[], TokenIn::Query).sign(0, now).unwrap();
        assert_eq!(verify(&t).topics, None);
        let empty = TokenSpec {
            secret: String::new(),
            ..spec(&[], TokenIn::Query)
        };
        assert!(empty.sign(0, now).is_err());
    }

    #[test]
    fn the_subprotocol_form_is_phoenix_js_base64() {
        let Credential::Protocol(header) = spec(&[], TokenIn::Protocol).credential(3).unwrap()
        else {
            panic!("not a subprotocol credential");
        };
        let b64 = header
            .strip_prefix("phoenix, base64url.bearer.phx.")
            .unwrap();
        assert!(!b64.contains('='));
        let token = String::from_utf8(STANDARD_NO_PAD.decode(b64).unwrap()).unwrap();
        assert_eq!(verify(&token).sub, "bench-3");
        let Credential::Query(q) = spec(&[], TokenIn::Query).credential(4).unwrap() else {
            panic!("not a query credential");
        };
        assert!(q
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
    }
}
