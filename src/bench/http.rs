//! The load generator's HTTP/1.1 client: one keep-alive connection per worker, the request
//! serialized once and written as a single buffer, the response head parsed with httparse and
//! the body counted and dropped without copying it anywhere. Plain `http://` only; it is a
//! measuring instrument, not a general-purpose client (reqwest is used everywhere else).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a target's URL or request cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{url:?} is not an http:// URL")]
    NotHttp { url: String },
    #[error("{url:?} is not a valid URL: {why}")]
    BadUrl { url: String, why: String },
    #[error("cannot resolve {host:?}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("header {0:?} is not `Name: value`")]
    BadHeader(String),
}

/// One request, ready to be written as it is, and where to send it.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    pub url: String,
    pub addr: SocketAddr,
    pub method: String,
    bytes: Bytes,
}

impl PreparedRequest {
    pub fn new(
        url: &str,
        method: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Self, RequestError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| RequestError::NotHttp { url: url.into() })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(RequestError::BadUrl {
                url: url.into(),
                why: "it needs a host, and no user:password@".into(),
            });
        }
        let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
        }) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|source| RequestError::Resolve {
                host: authority.into(),
                source,
            })?
            .next()
            .ok_or_else(|| RequestError::Resolve {
                host: authority.into(),
                source: io::Error::new(io::ErrorKind::NotFound, "no address"),
            })?;
        let method = method.to_ascii_uppercase();
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        if !has("host") {
            head.push_str(&format!("Host: {authority}\r\n"));
        }
        if !has("user-agent") {
            head.push_str(concat!(
                "User-Agent: cubeflash-bench/",
                env!("CARGO_PKG_VERSION"),
                "\r\n"
            ));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || !matches!(method.as_str(), "GET" | "HEAD" | "DELETE" | "OPTIONS") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        Ok(Self {
            url: url.to_string(),
            addr,
            method,
            bytes: Bytes::from(bytes),
        })
    }

    fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// Parses `Name: value` as curl's -H takes it.
pub fn parse_header(text: &str) -> Result<(String, String), RequestError> {
    match text.split_once(':') {
        Some((k, v)) if !k.trim().is_empty() && !k.contains(' ') => {
            Ok((k.trim().to_string(), v.trim().to_string()))
        }
        _ => Err(RequestError::BadHeader(text.to_string())),
    }
}

/// A request that got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The TCP connection could not be made.
    Connect,
    /// The connection broke, or the answer was not HTTP/1.x.
    Broken,
}

/// One worker's connection; reconnects when the server closes it.
pub struct Connection {
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

const READ_CHUNK: usize = 16 * 1024;

enum Exchange {
    /// The server closed a kept-alive connection before answering: safe to retry once.
    ClosedBeforeAnswer,
    Broken,
}

impl Default for Connection {
    fn default() -> Self {
        Self::new()
    }
}

impl Connection {
    pub fn new() -> Self {
        Self {
            stream: None,
            buf: Vec::with_capacity(READ_CHUNK * 2),
        }
    }

    /// Drops the connection, so the next request opens a new one.
    pub fn close(&mut self) {
        self.stream = None;
    }

    /// Sends the request and reads the whole answer; returns its status code.
    pub async fn send(&mut self, req: &PreparedRequest) -> Result<u16, Failure> {
        for _ in 0..2 {
            let reused = self.stream.is_some();
            if !reused {
                let stream = TcpStream::connect(req.addr)
                    .await
                    .map_err(|_| Failure::Connect)?;
                let _ = stream.set_nodelay(true);
                self.stream = Some(stream);
            }
            let stream = self.stream.as_mut().expect("connected above");
            match exchange(stream, &mut self.buf, req).await {
                Ok((status, keep_alive)) => {
                    if !keep_alive {
                        self.stream = None;
                    }
                    return Ok(status);
                }
                Err(Exchange::ClosedBeforeAnswer) if reused => self.stream = None,
                Err(_) => {
                    self.stream = None;
                    return Err(Failure::Broken);
                }
            }
        }
        Err(Failure::Broken)
    }
}

/// Opens and closes one TCP connection: proves the target listens, within `timeout`.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(r) => r.map(drop),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {}s", timeout.as_secs_f64()),
        )),
    }
}

/// How the body of an answer is delimited.
enum Body {
    Length(usize),
    Chunked,
    UntilClose,
}

async fn exchange(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    req: &PreparedRequest,
) -> Result<(u16, bool), Exchange> {
    if stream.write_all(&req.bytes).await.is_err() {
        return Err(Exchange::ClosedBeforeAnswer);
    }
    buf.clear();
    let (status, head_len, body, keep_alive) = loop {
        if read_more(stream, buf).await? == 0 {
            return Err(if buf.is_empty() {
                Exchange::ClosedBeforeAnswer
            } else {
                Exchange::Broken
            });
        }
        let mut headers = [httparse::EMPTY_HEADER; 48];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = resp.code.unwrap_or(0);
                if (100..200).contains(&status) {
                    // An interim answer (100 Continue): drop it and read the real one.
                    buf.drain(..len);
                    continue;
                }
                let mut body = Body::UntilClose;
                let mut keep_alive = resp.version == Some(1);
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let n = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .ok_or(Exchange::Broken)?;
                        body = Body::Length(n);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        if h.value.eq_ignore_ascii_case(b"chunked") {
                            body = Body::Chunked;
                        }
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        keep_alive = !h.value.eq_ignore_ascii_case(b"close");
                    }
                }
                if req.is_head() || status == 204 || status == 304 {
                    body = Body::Length(0);
                }
                break (status, len, body, keep_alive);
            }
            Ok(httparse::Status::Partial) => continue,
            Err(_) => return Err(Exchange::Broken),
        }
    };
    match body {
        Body::Length(n) => {
            let mut have = buf.len() - head_len;
            while have < n {
                buf.clear();
                let got = read_more(stream, buf).await?;
                if got == 0 {
                    return Err(Exchange::Broken);
                }
                have += got;
            }
            Ok((status, keep_alive))
        }
        Body::Chunked => {
            buf.drain(..head_len);
            skip_chunked(stream, buf).await?;
            Ok((status, keep_alive))
        }
        Body::UntilClose => {
            loop {
                buf.clear();
                if read_more(stream, buf).await? == 0 {
                    break;
                }
            }
            Ok((status, false))
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, Exchange> {
    buf.reserve(READ_CHUNK);
    stream.read_buf(buf).await.map_err(|_| Exchange::Broken)
}

/// Reads past a chunked body (and its trailers); `buf` starts at the first chunk-size line.
async fn skip_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), Exchange> {
    loop {
        let (start, size) = loop {
            match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((start, size))) => break (start, size as usize),
                Ok(httparse::Status::Partial) => {
                    if read_more(stream, buf).await? == 0 {
                        return Err(Exchange::Broken);
                    }
                }
                Err(_) => return Err(Exchange::Broken),
            }
        };
        if size == 0 {
            buf.drain(..start);
            // Trailers, if any, end with an empty line.
            loop {
                if buf.starts_with(b"\r\n") {
                    return Ok(());
                }
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    return Ok(());
                }
                if read_more(stream, buf).await? == 0 {
                    return Err(Exchange::Broken);
                }
            }
        }
        // Skip the chunk's data and its CRLF.
        let mut need = start + size + 2;
        while buf.len() < need {
            need -= buf.len();
            buf.clear();
            if read_more(stream, buf).await? == 0 {
                return Err(Exchange::Broken);
            }
        }
        buf.drain(..need);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_serialized_once_with_host_and_length() {
        let r = PreparedRequest::new(
            "http://127.0.0.1:9/function/x?y=1",
            "post",
            &[("X-A".into(), "b".into())],
            b"hi",
        )
        .unwrap();
        assert_eq!(r.addr, "127.0.0.1:9".parse().unwrap());
        let text = String::from_utf8(r.bytes.to_vec()).unwrap();
        assert!(text.starts_with("POST /function/x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"));
        assert!(text.contains("X-A: b\r\n"));
        assert!(text.ends_with("Content-Length: 2\r\n\r\nhi"));
        let get = PreparedRequest::new("http://127.0.0.1", "GET", &[], b"").unwrap();
        assert_eq!(get.addr.port(), 80);
        assert!(!String::from_utf8_lossy(&get.bytes).contains("Content-Length"));
    }

    #[test]
    fn only_plain_http_urls_are_taken() {
        assert!(matches!(
            PreparedRequest::new("https://example.com/", "GET", &[], b""),
            Err(RequestError::NotHttp { .. })
        ));
        assert!(parse_header("X-Y: z").is_ok());
        assert!(parse_header("nonsense").is_err());
    }
}
