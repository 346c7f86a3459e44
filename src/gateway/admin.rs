//! The admin API under /system/, the same on every backend: list, describe, scale, delete,
//! logs (where the backend keeps them) and reload. A bearer token is required: the admin
//! token for changes, the admin or the read-only token for looking. Wire types in `api`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;
use hyper::{Method, Request, Response, StatusCode};

use super::api::{self, CallState, FunctionInfo, ReplicaCount, ScaleRequest};
use super::async_calls::AsyncCalls;
use super::body::BoxError;
use super::function::FunctionState;
use super::proxy::GatewayBody;
use super::{json_error, json_response, Gateway};
use crate::triggers::calls::StoreError;

/// What a token lets its bearer do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Admin,
    ReadOnly,
}

/// Compares without stopping at the first differing byte, so the time taken says nothing
/// about how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

impl Gateway {
    fn access<B>(&self, req: &Request<B>) -> Option<Access> {
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))?
            .as_bytes();
        let matches =
            |t: &Option<String>| t.as_ref().is_some_and(|t| same_secret(given, t.as_bytes()));
        if matches(&self.config.admin_token) {
            Some(Access::Admin)
        } else if matches(&self.config.read_token) {
            Some(Access::ReadOnly)
        } else {
            None
        }
    }

    pub(super) async fn admin<B>(self: &Arc<Self>, req: Request<B>) -> Response<GatewayBody>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        if self.config.admin_token.is_none() && self.config.read_token.is_none() {
            return json_error(
                StatusCode::FORBIDDEN,
                "the admin API is off: give the gateway a token (CUBEFLASH_ADMIN_TOKEN; in a cluster the cubeflash-admin Secret's `token` key) and restart it",
                None,
            );
        }
        let Some(access) = self.access(&req) else {
            return json_error(
                StatusCode::UNAUTHORIZED,
                "the admin API needs `Authorization: Bearer <token>`: locally the token is in .cubeflash/admin-token (or CUBEFLASH_ADMIN_TOKEN); in a cluster, the cubeflash-admin Secret",
                None,
            );
        };
        let path = req.uri().path().trim_end_matches('/').to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let method = req.method().clone();
        if access == Access::ReadOnly && method != Method::GET && method != Method::HEAD {
            return json_error(
                StatusCode::FORBIDDEN,
                "this token is read-only: scale, delete and reload need the admin token",
                None,
            );
        }
        let parts: Vec<&str> = path.trim_start_matches("/system/").split('/').collect();
        if let Some(route) =
            super::dashboard::route(&method, &parts, &query, access == Access::Admin)
        {
            return self.dashboard(route);
        }
        if method == Method::POST && parts == ["functions"] {
            return self.create_function(req).await;
        }
        let routes = self.routes();
        let find = |name: &str| routes.by_name.get(name).cloned();
        let unknown = |name: &str| routes.no_such_function(name);
        match (method, parts.as_slice()) {
            (Method::GET, ["functions"]) => {
                let list: Vec<FunctionInfo> = routes
                    .functions()
                    .iter()
                    .map(|f| self.describe(f))
                    .collect();
                json_response(StatusCode::OK, &list)
            }
            (Method::GET, ["functions", name]) => match find(name) {
                Some(f) => json_response(StatusCode::OK, &self.describe(&f)),
                None => unknown(name),
            },
            (Method::DELETE, ["functions", name]) => {
                if self.remove(name).await {
                    self.note_action(
                        format!("deleted {name}"),
                        format!("cubeflash delete {name}"),
                    );
                    json_response(
                        StatusCode::OK,
                        &api::Deleted {
                            deleted: name.to_string(),
                        },
                    )
                } else {
                    unknown(name)
                }
            }
            (Method::POST, ["functions", name, "scale"]) => {
                let Some(f) = find(name) else {
                    return unknown(name);
                };
                match requested_replicas(req, f.entry.scale.max, name).await {
                    Ok(n) => {
                        self.note_action(
                            format!("scaled {name} to {n}"),
                            format!("cubeflash scale {name} {n}"),
                        );
                        f.touch();
                        f.serverless.scale_to(n, true);
                        json_response(StatusCode::OK, &self.describe(&f))
                    }
                    Err(refusal) => refusal,
                }
            }
            (Method::GET, ["functions", name, "logs"]) => {
                let Some(f) = find(name) else {
                    return unknown(name);
                };
                let param = |key: &str| {
                    form_urlencoded::parse(query.as_bytes())
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| v.into_owned())
                };
                let lines = param("lines").and_then(|n| n.parse().ok()).unwrap_or(100);
                let after = param("after").and_then(|n| n.parse().ok()).unwrap_or(0);
                // A call's lines carry its id (the shims tag them); text matches anywhere.
                let call = param("call")
                    .filter(|c| !c.is_empty())
                    .map(|c| format!("[call {c}]"));
                let text = param("q")
                    .filter(|q| !q.is_empty())
                    .map(|q| q.to_lowercase());
                // Each line starts with its replica: `[NAME#N] `.
                let replica = param("replica")
                    .filter(|r| !r.is_empty())
                    .map(|r| format!("[{r}] "));
                let keep = |line: &str| {
                    replica.as_deref().is_none_or(|r| line.starts_with(r))
                        && call.as_deref().is_none_or(|c| line.contains(c))
                        && text
                            .as_deref()
                            .is_none_or(|t| line.to_lowercase().contains(t))
                };
                match f.serverless.log_since(after, lines, &keep) {
                    Some((lines, next)) => json_response(
                        StatusCode::OK,
                        &api::Logs {
                            function: name.to_string(),
                            lines,
                            next,
                        },
                    ),
                    None => json_error(
                        StatusCode::NOT_IMPLEMENTED,
                        "this gateway keeps no logs of its functions: in a cluster, `kubectl logs -l cubeflash.io/function=NAME`",
                        Some(name),
                    ),
                }
            }
            (method, ["calls", ..]) => {
                let Some(calls) = self.backend().and_then(|b| b.calls()) else {
                    return json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "this gateway keeps no async calls (in a cluster they need NATS JetStream, not supported yet)",
                        None,
                    );
                };
                self.calls_api(&calls, method, &parts[1..], &query).await
            }
            (Method::POST, ["reload"]) => match self.reload(query != "verify=false").await {
                Ok(summary) => {
                    self.note_action(
                        format!(
                            "reloaded from the repo: {} added, {} changed, {} removed, {} failed",
                            summary.added.len(),
                            summary.changed.len(),
                            summary.removed.len(),
                            summary.failed.len()
                        ),
                        "cubeflash deploy".into(),
                    );
                    json_response(StatusCode::OK, &summary)
                }
                Err(e) => json_error(StatusCode::UNPROCESSABLE_ENTITY, &e, None),
            },
            _ => json_error(
                StatusCode::NOT_FOUND,
                &format!("no admin route {path}"),
                None,
            ),
        }
    }

    /// /system/calls[?function=F&state=S&limit=N], /system/calls/ID[?wait=30s],
    /// POST /system/calls/ID/redrive, DELETE /system/calls/ID.
    async fn calls_api(
        &self,
        calls: &Arc<AsyncCalls>,
        method: Method,
        rest: &[&str],
        query: &str,
    ) -> Response<GatewayBody> {
        let param = |key: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
        };
        let failed = |e: StoreError| {
            match e {
            StoreError::NotFound(id) => json_error(
                StatusCode::NOT_FOUND,
                &format!("no async call {id:?} (finished calls are kept for 24 h; dead ones until purged)"),
                None,
            ),
            e @ (StoreError::NotDead { .. } | StoreError::Running(_)) => {
                json_error(StatusCode::CONFLICT, &e.to_string(), None)
            }
            e => json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("{:#}", anyhow::Error::from(e)),
                None,
            ),
        }
        };
        match (method, rest) {
            (Method::GET, []) => {
                let function = param("function");
                let state = match param("state").map(|s| serde_json::from_value::<CallState>(serde_json::Value::String(s.clone())).map_err(|_| s)) {
                    Some(Err(s)) => return json_error(StatusCode::BAD_REQUEST, &format!("state {s:?} is not one of queued, running, retrying, succeeded, failed, dead"), None),
                    Some(Ok(s)) => Some(s),
                    None => None,
                };
                let limit = param("limit").and_then(|n| n.parse().ok()).unwrap_or(100).min(10_000);
                match calls.store.list(function, state, limit).await {
                    Ok(list) => json_response(StatusCode::OK, &list),
                    Err(e) => failed(e),
                }
            }
            (Method::GET, [id]) => {
                let wait = match param("wait").map(|w| crate::spec::values::Dur::parse(&w)) {
                    Some(Err(_)) => return json_error(StatusCode::BAD_REQUEST, "wait takes a duration such as 30s (at most 5m)", None),
                    Some(Ok(d)) => d.value.min(std::time::Duration::from_secs(300)),
                    None => std::time::Duration::ZERO,
                };
                let deadline = tokio::time::Instant::now() + wait;
                loop {
                    let changed = calls.changed.notified();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    match calls.store.get(id).await {
                        Ok(call) if call.state.finished() || tokio::time::Instant::now() >= deadline => {
                            return json_response(StatusCode::OK, &call)
                        }
                        Ok(_) => {}
                        Err(e) => return failed(e),
                    }
                    // Another gateway may finish it (a shared store): look again now and then.
                    let next = deadline.min(tokio::time::Instant::now() + std::time::Duration::from_millis(500));
                    let _ = tokio::time::timeout_at(next, changed).await;
                }
            }
            (Method::POST, [id, "redrive"]) => {
                match calls.store.redrive(id).await {
                    Ok(call) => {
                        calls.wake.notify_one();
                        self.note_action(
                            format!("redrove call {id} of {}", call.function),
                            format!("cubeflash calls redrive {id}"),
                        );
                        json_response(StatusCode::OK, &call)
                    }
                    Err(e) => failed(e),
                }
            }
            (Method::DELETE, [id]) => {
                let shown = id.to_string();
                match calls.store.purge(id).await {
                    Ok(true) => {
                        self.note_action(
                            format!("purged call {shown}"),
                            format!("cubeflash calls purge {shown}"),
                        );
                        json_response(StatusCode::OK, &serde_json::json!({ "purged": shown }))
                    }
                    Ok(false) => failed(StoreError::NotFound(shown)),
                    Err(e) => failed(e),
                }
            }
            _ => json_error(
                StatusCode::NOT_FOUND,
                "the calls API is GET /system/calls, GET /system/calls/ID, POST /system/calls/ID/redrive, DELETE /system/calls/ID",
                None,
            ),
        }
    }

    /// A function as the admin API and `cubeflash list` show it.
    pub fn describe(&self, f: &FunctionState) -> FunctionInfo {
        let e = &f.entry;
        let base = self.url();
        let count = |p: &dyn crate::runtime::pool::ReplicaPool| ReplicaCount {
            desired: p.wanted(),
            ready: p.ready_count(),
        };
        let baseline_urls = f.baseline.as_ref().map(|b| b.urls()).unwrap_or_default();
        FunctionInfo {
            name: e.name.clone(),
            runtime: e.runtime,
            state: f.serverless.state(),
            triggers: e.triggers.clone(),
            replicas: count(f.serverless.as_ref()),
            baseline_replicas: f.baseline.as_deref().map(count),
            inflight: f.inflight(),
            queued: f.queued(),
            async_pending: f.async_pending(),
            async_oldest_pending_ms: f.async_oldest_age_ms(),
            async_store: self
                .backend()
                .and_then(|b| b.calls())
                .map(|c| c.store.kind().to_string()),
            queues: f.queue_statuses(),
            cold_starts: f.cold_starts.load(std::sync::atomic::Ordering::Relaxed),
            url: format!("{base}/function/{}", e.name),
            baseline_url: baseline_urls.first().cloned(),
            baseline_urls,
            replica_pids: f.serverless.pids(),
            baseline_pids: f.baseline.as_ref().map(|b| b.pids()).unwrap_or_default(),
            failed: f.serverless.failure(),
            trouble: f.serverless.trouble(),
            scale: e.scale.clone(),
            timeout: e.timeout.clone(),
        }
    }
}

/// The `{"replicas": N}` of a scale request, N from 0 to `max`; else the 400 to answer.
async fn requested_replicas<B>(
    req: Request<B>,
    max: u32,
    name: &str,
) -> Result<u32, Response<GatewayBody>>
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let body = Limited::new(req.into_body(), 4096)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    match serde_json::from_slice::<ScaleRequest>(&body) {
        Ok(ScaleRequest { replicas }) if replicas <= max => Ok(replicas),
        Ok(ScaleRequest { replicas }) => Err(json_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "{name} can run at most {max} {} (its scale.max), not {replicas}: raise scale.max in its function.yaml and deploy, or ask for fewer",
                if max == 1 { "replica" } else { "replicas" }
            ),
            Some(name),
        )),
        _ => Err(json_error(
            StatusCode::BAD_REQUEST,
            &format!("send {{\"replicas\": N}} with N from 0 to scale.max ({max})"),
            Some(name),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"abcd", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }
}
