//! Header handling for forwarding a request to a replica, as a reverse proxy should:
//! hop-by-hop headers dropped both ways; X-Forwarded-* set by the gateway, replacing what
//! the client sent; every client-sent `X-Cubeflash-*` header dropped, so no request can pose
//! as the scheduler or carry its own call id. The connections themselves are in `upstream`.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};

/// The body type every gateway response uses.
pub type GatewayBody = BoxBody<Bytes, hyper::Error>;

pub const CALL_ID: &str = "x-cubeflash-call-id";
pub const COLD_START: &str = "x-cubeflash-cold-start";
/// Which internal trigger made the call (schedule); only the gateway sets it.
pub const TRIGGER: &str = "x-cubeflash-trigger";

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those the Connection header names. One pass over
/// the (usually few) headers decides whether there is anything to do: this runs twice on
/// every proxied request.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| HOP_BY_HOP.contains(&k.as_str())) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Drops every `X-Cubeflash-*` header: those are the gateway's to set.
pub fn strip_internal(headers: &mut HeaderMap) {
    if !headers.keys().any(is_internal) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|k| is_internal(k)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

fn is_internal(name: &HeaderName) -> bool {
    name.as_str()
        .as_bytes()
        .get(..12)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"x-cubeflash-"))
}

/// Sets X-Forwarded-For to the client's address and X-Forwarded-Host and -Proto to what it
/// asked for, replacing whatever the client sent: the gateway is the edge, and a function
/// that trusts these headers must be able to.
pub fn set_forwarded(headers: &mut HeaderMap, client: SocketAddr) {
    if let Ok(v) = HeaderValue::from_str(&client.ip().to_string()) {
        headers.insert("x-forwarded-for", v);
    }
    match headers.get(hyper::header::HOST).cloned() {
        Some(host) => {
            headers.insert("x-forwarded-host", host);
        }
        None => {
            headers.remove("x-forwarded-host");
        }
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    headers.remove("forwarded");
}

pub fn full(bytes: impl Into<Bytes>) -> GatewayBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_those_connection_names() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_headers_from_the_client_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil"));
        h.insert("host", HeaderValue::from_static("gw:8080"));
        set_forwarded(&mut h, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "gw:8080");
    }

    #[test]
    fn client_sent_cubeflash_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("X-Cubeflash-Trigger", HeaderValue::from_static("schedule"));
        h.insert("x-cubeflash-call-id", HeaderValue::from_static("forged"));
        h.insert("x-cubeflashy", HeaderValue::from_static("kept"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_internal(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key("x-kept") && h.contains_key("x-cubeflashy"));
    }
}
