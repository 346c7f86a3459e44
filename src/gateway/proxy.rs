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

pub const CALL_ID: HeaderName = HeaderName::from_static("x-cubeflash-call-id");
/// A client that sends it gets `Server-Timing` on the answer (the dashboard's console).
pub const TIMING: HeaderName = HeaderName::from_static("x-cubeflash-timing");
pub const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");
pub const COLD_START: HeaderName = HeaderName::from_static("x-cubeflash-cold-start");
/// Which internal trigger made the call (schedule); only the gateway sets it.
/// On answers the gateway gives itself: `gateway`.
pub const ORIGIN: HeaderName = HeaderName::from_static("x-cubeflash-origin");
pub const ORIGIN_GATEWAY: HeaderValue = HeaderValue::from_static("gateway");
/// On an async call's delivery: which attempt this is, from 1.
pub const ATTEMPT: HeaderName = HeaderName::from_static("x-cubeflash-attempt");
pub const TRIGGER: HeaderName = HeaderName::from_static("x-cubeflash-trigger");

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Typed names: a removal by `&str` parses and hashes the name on every call, and this runs
/// twice on every proxied request.
const HOP_BY_HOP: [HeaderName; 9] = [
    hyper::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    hyper::header::PROXY_AUTHENTICATE,
    hyper::header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    hyper::header::TE,
    hyper::header::TRAILER,
    hyper::header::TRANSFER_ENCODING,
    hyper::header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the Connection header names. One pass over
/// the (usually few) headers finds which are there; only those are removed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = [false; 9];
    let mut any = false;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    if present[0] {
        // `Connection: keep-alive` or `close`, the usual values, name no other header.
        let named: Vec<HeaderName> = headers
            .get_all(hyper::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| !n.eq_ignore_ascii_case("keep-alive") && !n.eq_ignore_ascii_case("close"))
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
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
    headers.insert(X_FORWARDED_FOR, client_value(client.ip()));
    match headers.get(hyper::header::HOST).cloned() {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if headers.contains_key(FORWARDED) {
        headers.remove(FORWARDED);
    }
}

/// The client's address as a header value, kept per serving thread for the last client:
/// most connections come from a few addresses (a load balancer, a port-forward).
fn client_value(ip: std::net::IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(std::net::IpAddr, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((cached, value)) = last.as_ref() {
            if *cached == ip {
                return value.clone();
            }
        }
        let value = HeaderValue::from_maybe_shared(Bytes::from(ip.to_string()))
            .expect("an address is a valid header value");
        *last = Some((ip, value.clone()));
        value
    })
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
