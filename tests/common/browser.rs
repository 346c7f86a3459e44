//! Debian's headless Chromium driven through chromedriver (WebDriver, fantoccini), with
//! every host but loopback unresolvable, for the dashboard's browser tests.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{free_port, need};

/// chromedriver on a free loopback port; killed when dropped.
pub struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    /// Starts chromedriver (the test fails when it or chromium is missing: make test
    /// installs them).
    pub fn start() -> Self {
        need("chromedriver");
        need("chromium");
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, port }
    }

    /// A new browser session, 1280 px wide.
    pub async fn session(&self) -> fantoccini::Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,900",
                    // Every host but loopback fails to resolve: the page must need nothing else.
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
            }),
        );
        let url = format!("http://127.0.0.1:{}", self.port);
        for _ in 0..50 {
            let mut builder = fantoccini::ClientBuilder::new(
                hyper_util::client::legacy::connect::HttpConnector::new(),
            );
            if let Ok(c) = builder.capabilities(caps.clone()).connect(&url).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("chromedriver did not start a session at {url}");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `script` until it returns something other than null or false, and returns that.
pub async fn until(c: &fantoccini::Client, what: &str, script: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = c.execute(script, vec![]).await.unwrap();
        if !v.is_null() && v != Value::Bool(false) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn click(c: &fantoccini::Client, id: &str) {
    c.find(fantoccini::Locator::Id(id))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

pub async fn type_into(c: &fantoccini::Client, id: &str, value: &str) {
    let e = c.find(fantoccini::Locator::Id(id)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

/// Opens the dashboard at `base` and signs in with `token`.
pub async fn sign_in(c: &fantoccini::Client, base: &str, token: &str) {
    c.goto(&format!("{base}/")).await.unwrap();
    until(
        c,
        "the sign-in form",
        "return !document.getElementById('login').hidden",
        Duration::from_secs(10),
    )
    .await;
    type_into(c, "token", token).await;
    c.execute(
        "document.getElementById('login-form').requestSubmit()",
        vec![],
    )
    .await
    .unwrap();
    until(
        c,
        "signed in",
        "return !document.getElementById('app').hidden",
        Duration::from_secs(10),
    )
    .await;
}
