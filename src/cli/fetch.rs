//! A minimal HTTP GET for the CLI subcommands, over hyper's client.

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("bad URL {0}: {1}")]
    Url(String, String),
    #[error("cannot reach {0}: {1}")]
    Connect(String, String),
    #[error("{0} answered HTTP {1}: {2}")]
    Status(String, u16, String),
    #[error("timed out asking {0}")]
    Timeout(String),
}

/// GETs `url` and returns the body as text.
pub async fn get(url: &str) -> Result<String, FetchError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| FetchError::Url(url.into(), e.to_string()))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let work = async {
        let res = client
            .get(uri)
            .await
            .map_err(|e| FetchError::Connect(url.into(), e.to_string()))?;
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| FetchError::Connect(url.into(), e.to_string()))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        if status == 200 {
            Ok(text)
        } else {
            Err(FetchError::Status(url.into(), status, text))
        }
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| FetchError::Timeout(url.into()))?
}
