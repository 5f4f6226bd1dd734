//! Redis's own count of the commands it has run, for `bench occupancy
//! --redis`: `INFO commandstats` spoken in RESP over a plain TcpStream on
//! loopback, and the `calls=` of every command summed (the `info` command
//! itself left out, so the probes do not count themselves).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const INFO_COMMANDSTATS: &[u8] = b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n";

/// `HOST:PORT` of a `redis://HOST[:PORT][/DB]` URL. Credentials are not
/// supported (the bench only reads a local, throw-away Redis).
pub fn host_port(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| format!("--redis {url}: want redis://HOST:PORT"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(format!(
            "--redis {url}: credentials are not supported here (use a Redis without AUTH)"
        ));
    }
    if authority.is_empty() {
        return Err(format!("--redis {url}: no host"));
    }
    let has_port = if authority.starts_with('[') {
        authority.contains("]:")
    } else {
        authority.contains(':')
    };
    Ok(if has_port {
        authority.to_string()
    } else {
        format!("{authority}:6379")
    })
}

/// The commands Redis has run since it started (INFO commandstats, less `info`).
pub async fn commands_total(addr: SocketAddr) -> io::Result<u64> {
    let ask = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(INFO_COMMANDSTATS).await?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            match bulk_string(&buf) {
                Ok(Some(text)) => return Ok(sum_calls(&text)),
                Ok(None) => {}
                Err(e) => return Err(io::Error::other(e)),
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > 1 << 20 {
                return Err(io::Error::other("INFO reply over 1 MiB"));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .map_err(|_| io::Error::other("Redis did not answer INFO within 2 s"))?
}

/// A whole RESP bulk string at the start of `buf` (`$<len>\r\n<bytes>\r\n`):
/// `Ok(None)` while incomplete; an error reply (`-ERR …`) or any other type
/// is an error.
pub fn bulk_string(buf: &[u8]) -> Result<Option<String>, String> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..eol]);
    match buf.first() {
        Some(b'$') => {}
        Some(b'-') => return Err(format!("Redis: {}", &head[1..])),
        _ => return Err(format!("unexpected Redis reply {head:?}")),
    }
    let len: usize = head[1..]
        .parse()
        .map_err(|_| format!("bad bulk length {head:?}"))?;
    let start = eol + 2;
    if buf.len() < start + len + 2 {
        return Ok(None);
    }
    Ok(Some(
        String::from_utf8_lossy(&buf[start..start + len]).into_owned(),
    ))
}

/// The sum of `calls=` over the `cmdstat_*` lines, less `cmdstat_info`.
pub fn sum_calls(info: &str) -> u64 {
    info.lines()
        .filter_map(|l| l.trim().strip_prefix("cmdstat_"))
        .filter(|l| !l.starts_with("info:"))
        .filter_map(|l| {
            let calls = l.split_once(':')?.1.split(',').next()?;
            calls.strip_prefix("calls=")?.parse::<u64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Commandstats\r\n\
        cmdstat_set:calls=12,usec=40,usec_per_call=3.33,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_info:calls=5,usec=300,usec_per_call=60.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_hincrby:calls=1000,usec=900,usec_per_call=0.90,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_client|setname:calls=2,usec=1,usec_per_call=0.50,rejected_calls=0,failed_calls=0\r\n";

    #[test]
    fn sums_calls_without_info() {
        assert_eq!(sum_calls(INFO), 12 + 1000 + 2);
        assert_eq!(sum_calls(""), 0);
        assert_eq!(sum_calls("# Commandstats\r\n"), 0);
    }

    #[test]
    fn parses_bulk_strings_whole_or_not_yet() {
        let mut reply = format!("${}\r\n{INFO}\r\n", INFO.len()).into_bytes();
        assert_eq!(bulk_string(&reply).unwrap().as_deref(), Some(INFO));
        assert_eq!(bulk_string(&reply[..3]).unwrap(), None);
        assert_eq!(bulk_string(&reply[..40]).unwrap(), None);
        reply.truncate(reply.len() - 1);
        assert_eq!(bulk_string(&reply).unwrap(), None);
        assert_eq!(bulk_string(b"$0\r\n\r\n").unwrap().as_deref(), Some(""));
        let err = bulk_string(b"-NOAUTH Authentication required.\r\n").unwrap_err();
        assert!(err.contains("NOAUTH"), "{err}");
        assert!(bulk_string(b"+OK\r\n").is_err());
        assert!(bulk_string(b"$x\r\n").is_err());
    }

    #[test]
    fn redis_urls_give_host_and_port() {
        assert_eq!(
            host_port("redis://127.0.0.1:6380").unwrap(),
            "127.0.0.1:6380"
        );
        assert_eq!(host_port("redis://127.0.0.1").unwrap(), "127.0.0.1:6379");
        assert_eq!(host_port("redis://localhost:7/0").unwrap(), "localhost:7");
        assert_eq!(host_port("redis://[::1]:7").unwrap(), "[::1]:7");
        assert_eq!(host_port("redis://[::1]").unwrap(), "[::1]:6379");
        assert!(host_port("127.0.0.1:6379").is_err());
        assert!(host_port("redis://:pw@127.0.0.1:6379").is_err());
        assert!(host_port("redis://").is_err());
    }

    #[tokio::test]
    async fn asks_a_fake_redis_over_resp() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = vec![0u8; INFO_COMMANDSTATS.len()];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(got, INFO_COMMANDSTATS);
            let reply = format!("${}\r\n{INFO}\r\n", INFO.len());
            // In two pieces: the reader must wait for the rest.
            let (a, b) = reply.as_bytes().split_at(30);
            s.write_all(a).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.write_all(b).await.unwrap();
        });
        assert_eq!(commands_total(addr).await.unwrap(), 1014);
        server.await.unwrap();
    }
}
