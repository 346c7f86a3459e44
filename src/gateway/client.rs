//! The one client of the admin API (`api.rs` types): the CLI verbs, `bench` and local
//! `deploy` use it, against the local gateway or the Kubernetes one alike.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use super::api::{Call, Deleted, ErrorBody, FunctionInfo, Health, Logs, Reloaded, ScaleRequest};

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the URL.
    #[error("cannot reach the gateway at {url}: is it running? (`make deploy` or `cubeflash up`)")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The gateway said no.
    #[error("the gateway at {url} answered {status}: {message}")]
    Refused {
        url: String,
        status: StatusCode,
        message: String,
    },
    /// A refusal about one function (none by that name, a scale beyond its maximum): the
    /// gateway's message says what and what to do.
    #[error("{message}")]
    Function { status: StatusCode, message: String },
    /// The answer is not what this version of cubeflash expects.
    #[error("the gateway at {url} answered {path} with something this cubeflash cannot read: is it another version?")]
    Decode {
        url: String,
        path: String,
        #[source]
        source: reqwest::Error,
    },
}

impl ClientError {
    /// The HTTP status the gateway refused with, if it did.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Refused { status, .. } | Self::Function { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// How long an admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// A reload waits for every changed function's new replicas (each up to its readiness
/// deadline and crash-loop rule).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl AdminClient {
    pub fn new(base: &str, token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .build()
            .expect("an HTTP client builds");
        Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T, ClientError> {
        self.call_with(method, path, body, CALL_TIMEOUT).await
    }

    async fn call_with<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl serde::Serialize>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(timeout);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        let status = resp.status();
        if !status.is_success() && status != StatusCode::SERVICE_UNAVAILABLE {
            let (message, function) = match resp.json::<ErrorBody>().await {
                Ok(e) => (e.error, e.function),
                Err(_) => ("no detail".into(), None),
            };
            if status.is_client_error() && function.is_some() {
                return Err(ClientError::Function { status, message });
            }
            return Err(ClientError::Refused {
                url: self.base.clone(),
                status,
                message,
            });
        }
        resp.json::<T>()
            .await
            .map_err(|source| ClientError::Decode {
                url: self.base.clone(),
                path: path.to_string(),
                source,
            })
    }

    /// GET /healthz (a 503 with its reason is an answer too).
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, "/healthz", None::<&()>).await
    }

    pub async fn functions(&self) -> Result<Vec<FunctionInfo>, ClientError> {
        self.call(Method::GET, "/system/functions", None::<&()>)
            .await
    }

    pub async fn function(&self, name: &str) -> Result<FunctionInfo, ClientError> {
        self.call(
            Method::GET,
            &format!("/system/functions/{name}"),
            None::<&()>,
        )
        .await
    }

    pub async fn scale(&self, name: &str, replicas: u32) -> Result<FunctionInfo, ClientError> {
        self.call(
            Method::POST,
            &format!("/system/functions/{name}/scale"),
            Some(&ScaleRequest { replicas }),
        )
        .await
    }

    pub async fn delete(&self, name: &str) -> Result<Deleted, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/system/functions/{name}"),
            None::<&()>,
        )
        .await
    }

    pub async fn logs(&self, name: &str, lines: usize) -> Result<Logs, ClientError> {
        self.call(
            Method::GET,
            &format!("/system/functions/{name}/logs?lines={lines}"),
            None::<&()>,
        )
        .await
    }

    /// GET /metrics, as text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let url = format!("{}/metrics", self.base);
        let unreachable = |source| ClientError::Unreachable {
            url: self.base.clone(),
            source,
        };
        self.http
            .get(url)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(unreachable)?
            .text()
            .await
            .map_err(unreachable)
    }

    /// Async calls, newest first.
    pub async fn calls(
        &self,
        function: Option<&str>,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Call>, ClientError> {
        let mut path = format!("/system/calls?limit={limit}");
        if let Some(f) = function {
            path.push_str(&format!("&function={f}"));
        }
        if let Some(s) = state {
            path.push_str(&format!("&state={s}"));
        }
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// One async call; with `wait`, once it finished or `wait` passed.
    pub async fn async_call(&self, id: &str, wait: Option<Duration>) -> Result<Call, ClientError> {
        let path = match wait {
            Some(w) => format!("/system/calls/{id}?wait={}ms", w.as_millis()),
            None => format!("/system/calls/{id}"),
        };
        let timeout = CALL_TIMEOUT + wait.unwrap_or_default();
        self.call_with(Method::GET, &path, None::<&()>, timeout)
            .await
    }

    pub async fn redrive(&self, id: &str) -> Result<Call, ClientError> {
        self.call(
            Method::POST,
            &format!("/system/calls/{id}/redrive"),
            None::<&()>,
        )
        .await
    }

    pub async fn purge(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.call(Method::DELETE, &format!("/system/calls/{id}"), None::<&()>)
            .await
    }

    /// Reloads the repo; `verify` starts a function at zero once before switching it.
    /// Waits as long as a rollout may take.
    pub async fn reload(&self, verify: bool) -> Result<Reloaded, ClientError> {
        let path = if verify {
            "/system/reload"
        } else {
            "/system/reload?verify=false"
        };
        self.call_with(Method::POST, path, None::<&()>, RELOAD_TIMEOUT)
            .await
    }
}
