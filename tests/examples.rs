//! The example functions in functions/, run with the shipped shims as real processes.

mod common;

use common::{repo_root, start_shim, Replica};
use reqwest::blocking::Client;

fn example(name: &str) -> std::path::PathBuf {
    repo_root().join("functions").join(name)
}

#[test]
fn random_quote_answers_json_or_a_page() {
    common::need("python3");
    let r = Replica::start(
        &example("random-quote"),
        "python3",
        &[common::shim("python").to_str().unwrap()],
        &[
            ("CUBEFLASH_HANDLER", "handler.py"),
            ("QUOTES_FILE", "quotes.json"),
        ],
    )
    .unwrap();
    let c = Client::new();
    let v: serde_json::Value = c.get(r.url("/quote")).send().unwrap().json().unwrap();
    assert!(v["quote"].as_str().is_some_and(|q| !q.is_empty()), "{v}");
    assert!(v["author"].is_string());
    let a: serde_json::Value = c
        .get(r.url("/quote?seed=3"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let b: serde_json::Value = c
        .get(r.url("/quote?seed=3"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(a, b, "a seed picks the same quote");
    let bad = c.get(r.url("/quote?seed=x")).send().unwrap();
    assert_eq!(bad.status(), 400);

    let page = c
        .get(r.url("/quote"))
        .header("Accept", "text/html,application/xhtml+xml")
        .send()
        .unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().unwrap();
    assert!(
        html.contains("<h1>Random Quote Generator</h1>") && html.contains("Generate Random Quote"),
        "{html}"
    );
}

#[test]
fn hello_greets_from_query_or_json() {
    common::need("node");
    let r = start_shim("node", &example("hello"), "handler.js").unwrap();
    let c = Client::new();
    let v: serde_json::Value = c
        .get(r.url("/hello?name=Ada"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["message"], "Hello, Ada!");
    let v: serde_json::Value = c
        .post(r.url("/hello"))
        .body(r#"{"name":"Grace"}"#)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["message"], "Hello, Grace!");
    let bad = c.post(r.url("/hello")).body("{not json").send().unwrap();
    assert_eq!(bad.status(), 400);
}

#[test]
fn echo_returns_what_it_received() {
    common::need("python3");
    let r = Replica::start(&example("echo"), "sh", &["-c", "python3 server.py"], &[]).unwrap();
    let v: serde_json::Value = Client::new()
        .put(r.url("/a/b?x=1"))
        .header("X-Probe", "42")
        .body("hello")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["query"]["x"][0], "1");
    assert_eq!(v["headers"]["x-probe"], "42");
    assert_eq!(v["body"], "hello");
}
