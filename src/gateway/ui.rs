//! The dashboard's page at /ui: server-rendered HTML (Tera) with its script and styles,
//! all embedded in the binary; nothing is fetched from anywhere but the gateway. The page
//! holds no data: it signs in with a token and reads everything through the admin API
//! (`dashboard.rs`, `admin.rs`), so serving it needs no token.

use std::sync::OnceLock;

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use hyper::{Method, Request, Response, StatusCode};

use super::proxy::{full, GatewayBody};
use super::{json_error, Gateway};

const PAGE: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLES: &str = include_str!("ui/app.css");

/// No inline script or style, nothing from another origin, no framing, no form posts
/// elsewhere; function output is shown as text by the script, never as HTML.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The page, rendered once per process (it depends only on the version).
fn page() -> &'static str {
    static HTML: OnceLock<String> = OnceLock::new();
    HTML.get_or_init(|| {
        let mut context = tera::Context::new();
        context.insert("version", env!("CARGO_PKG_VERSION"));
        tera::Tera::one_off(PAGE, &context, true).expect("the embedded dashboard page renders")
    })
}

/// GET /ui, /ui/app.js, /ui/app.css.
pub fn serve<B>(gateway: &Gateway, req: &Request<B>) -> Response<GatewayBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "the dashboard's files are read with GET; its actions go through /system/",
            None,
        );
    }
    if let Some(rest) = req.uri().path().strip_prefix("/ui/bench/") {
        return bench_file(gateway, rest);
    }
    let (body, kind, cache) = match req.uri().path() {
        "/ui" | "/ui/" => (page(), "text/html; charset=utf-8", "no-store"),
        "/ui/app.js" => (SCRIPT, "text/javascript; charset=utf-8", "max-age=300"),
        "/ui/app.css" => (STYLES, "text/css; charset=utf-8", "max-age=300"),
        other => {
            return json_error(
                StatusCode::NOT_FOUND,
                &format!("no dashboard file {other}: the dashboard is at /ui"),
                None,
            )
        }
    };
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, kind)
        .header(CACHE_CONTROL, cache)
        .body(full(body))
        .expect("valid response");
    secure(resp.headers_mut());
    resp
}

/// /ui/bench/TICKET/FILE: a bench run's file through a link the admin API made.
fn bench_file(gateway: &Gateway, rest: &str) -> Response<GatewayBody> {
    let found = rest
        .split_once('/')
        .and_then(|(ticket, file)| gateway.bench_file(ticket, file));
    let Some((bytes, kind)) = found else {
        return json_error(
            StatusCode::NOT_FOUND,
            "no such report, or its link expired: open it again from the dashboard's Bench runs page",
            None,
        );
    };
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, kind)
        .header(CACHE_CONTROL, "no-store")
        .body(full(bytes))
        .expect("valid response");
    secure(resp.headers_mut());
    resp.headers_mut().insert(
        "content-security-policy",
        HeaderValue::from_static(super::bench_runs::REPORT_CSP),
    );
    resp
}

/// GET / with nothing routed there: the dashboard.
pub fn to_dashboard() -> Response<GatewayBody> {
    let mut resp = Response::builder()
        .status(StatusCode::FOUND)
        .header(LOCATION, "/ui")
        .body(full(""))
        .expect("valid response");
    secure(resp.headers_mut());
    resp
}

fn secure(headers: &mut hyper::HeaderMap) {
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
}
