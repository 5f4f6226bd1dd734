//! The HTTP side of the WebSocket upgrade: checks the client's headers and
//! computes the 101 response's headers (RFC 6455 §4.2).

use axum::http::HeaderMap;

/// What the 101 response must carry.
#[derive(Debug)]
pub struct Accept {
    pub accept_key: String,
    /// `phoenix` when the client offered it (the JS client does, with a token).
    pub protocol: Option<&'static str>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Validates an upgrade request; the error names what is missing.
pub fn accept(headers: &HeaderMap) -> Result<Accept, &'static str> {
    if !has_token(header(headers, "upgrade"), "websocket") {
        return Err("expected Upgrade: websocket");
    }
    if !has_token(header(headers, "connection"), "upgrade") {
        return Err("expected Connection: upgrade");
    }
    if header(headers, "sec-websocket-version") != Some("13") {
        return Err("expected Sec-WebSocket-Version: 13");
    }
    let key = header(headers, "sec-websocket-key").ok_or("missing Sec-WebSocket-Key")?;
    let protocol =
        has_token(header(headers, "sec-websocket-protocol"), "phoenix").then_some("phoenix");
    Ok(Accept {
        accept_key: tungstenite::handshake::derive_accept_key(key.trim().as_bytes()),
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_example_key_and_phoenix_protocol() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("connection", "keep-alive, Upgrade".parse().unwrap());
        h.insert("sec-websocket-version", "13".parse().unwrap());
        h.insert(
            "sec-websocket-key",
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        h.insert(
            "sec-websocket-protocol",
            "phoenix, base64url.bearer.phx.abc".parse().unwrap(),
        );
        let a = accept(&h).unwrap();
        assert_eq!(a.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(a.protocol, Some("phoenix"));
        h.remove("sec-websocket-key");
        assert!(accept(&h).is_err());
    }
}
