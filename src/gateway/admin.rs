//! The admin API under /system/ (bearer token required): list, describe, scale, delete,
//! logs and reload. The CLI's list, describe, scale, rm, logs and deploy use it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::function::FunctionState;
use super::proxy::GatewayBody;
use super::{json_error, json_response, Gateway};

/// The `{"replicas": N}` of a scale request, N from 0 to `max`; else the 400 to answer. Both
/// gateways' admin APIs take it.
pub(crate) async fn requested_replicas(
    req: Request<Incoming>,
    max: u32,
    name: &str,
) -> Result<u32, Response<GatewayBody>> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let replicas = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("replicas").and_then(Value::as_u64));
    match replicas {
        Some(n) if n <= u64::from(max) => Ok(n as u32),
        _ => Err(json_error(
            StatusCode::BAD_REQUEST,
            &format!("send {{\"replicas\": N}} with N from 0 to scale.max ({max})"),
            Some(name),
        )),
    }
}

impl Gateway {
    pub(super) async fn admin(self: &Arc<Self>, req: Request<Incoming>) -> Response<GatewayBody> {
        let expected = format!("Bearer {}", self.config.admin_token);
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return json_error(
                StatusCode::UNAUTHORIZED,
                "the admin API needs `Authorization: Bearer <token>`: the token is CUBEFLASH_ADMIN_TOKEN, or the one in .cubeflash/admin-token",
                None,
            );
        }
        let path = req.uri().path().trim_end_matches('/').to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let method = req.method().clone();
        let parts: Vec<&str> = path.trim_start_matches("/system/").split('/').collect();
        let routes = self.routes();
        let find = |name: &str| routes.by_name.get(name).cloned();
        let unknown = |name: &str| {
            json_error(
                StatusCode::NOT_FOUND,
                &format!("no function named {name:?}"),
                Some(name),
            )
        };
        match (method, parts.as_slice()) {
            (Method::GET, ["functions"]) => {
                let list: Vec<Value> = routes
                    .functions()
                    .iter()
                    .map(|f| self.describe(f))
                    .collect();
                json_response(StatusCode::OK, &Value::Array(list))
            }
            (Method::GET, ["functions", name]) => match find(name) {
                Some(f) => json_response(StatusCode::OK, &self.describe(&f)),
                None => unknown(name),
            },
            (Method::DELETE, ["functions", name]) => {
                let removed = self.remove(name);
                match removed {
                    Some(f) => {
                        f.shutdown().await;
                        json_response(StatusCode::OK, &json!({ "deleted": name }))
                    }
                    None => unknown(name),
                }
            }
            (Method::POST, ["functions", name, "scale"]) => {
                let Some(f) = find(name) else {
                    return unknown(name);
                };
                match requested_replicas(req, f.function.spec.scale.max, name).await {
                    Ok(n) => {
                        f.serverless.scale_to(n);
                        json_response(StatusCode::OK, &self.describe(&f))
                    }
                    Err(refusal) => refusal,
                }
            }
            (Method::GET, ["functions", name, "logs"]) => {
                let Some(f) = find(name) else {
                    return unknown(name);
                };
                let lines = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("lines="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(100);
                json_response(
                    StatusCode::OK,
                    &json!({ "function": name, "lines": f.logs.tail(lines) }),
                )
            }
            (Method::POST, ["reload"]) => match self.reload().await {
                Ok(summary) => json_response(StatusCode::OK, &summary),
                Err(e) => json_error(StatusCode::UNPROCESSABLE_ENTITY, &format!("{e:#}"), None),
            },
            _ => json_error(
                StatusCode::NOT_FOUND,
                &format!("no admin route {path}"),
                None,
            ),
        }
    }

    fn remove(&self, name: &str) -> Option<Arc<FunctionState>> {
        let mut routes = self.routes.write().expect("routes lock");
        let found = routes.by_name.get(name).cloned()?;
        let rest: Vec<_> = routes
            .functions()
            .into_iter()
            .filter(|f| f.name() != name)
            .collect();
        *routes = Arc::new(super::routes::Routes::new(rest));
        Some(found)
    }

    /// A function as the admin API and `cubeflash list` show it.
    pub fn describe(&self, f: &FunctionState) -> Value {
        let spec = &f.function.spec;
        let base = self.url();
        let baseline_urls: Vec<String> = f
            .baseline
            .as_ref()
            .map(|b| {
                b.ready()
                    .iter()
                    .map(|e| format!("http://{}", e.addr))
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "name": spec.name,
            "runtime": spec.runtime,
            "triggers": spec.triggers,
            "replicas": { "desired": f.serverless.running(), "ready": f.serverless.ready_count() },
            "baselineReplicas": f.baseline.as_ref().map(|b| json!({ "desired": b.running(), "ready": b.ready_count() })),
            "inflight": f.inflight.load(Ordering::Relaxed),
            "queued": f.queued.load(Ordering::Relaxed),
            "coldStarts": f.cold_starts.load(Ordering::Relaxed),
            "url": format!("{base}/function/{}", spec.name),
            "baselineUrl": baseline_urls.first(),
            "baselineUrls": baseline_urls,
            "failed": f.serverless.failure(),
            "scale": spec.scale,
            "timeout": spec.timeout,
        })
    }
}
