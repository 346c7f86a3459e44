//! The Kubernetes gateway's /metrics and its admin API under /system/ (list, describe,
//! scale), shaped like the local gateway's so that `cubeflash ls --gateway` works on both.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::{Function, KubeGateway};
use crate::gateway::admin::requested_replicas;
use crate::gateway::metrics::{label, StateLabels};
use crate::gateway::proxy::GatewayBody;
use crate::gateway::{json_error, json_response};

impl KubeGateway {
    /// /metrics: the local gateway's families that apply here, gauges refreshed now.
    pub(super) fn metrics_response(&self) -> Response<GatewayBody> {
        for f in self.functions().values() {
            let live = &f.live;
            let function = &f.entry.name;
            let ready = live.ready.load(Ordering::Relaxed);
            let desired = live.desired.load(Ordering::Relaxed);
            for (state, n) in [
                ("ready", ready),
                ("starting", desired.saturating_sub(ready)),
                ("baseline", live.baseline_ready.load(Ordering::Relaxed)),
            ] {
                let labels = StateLabels {
                    function: function.clone(),
                    state,
                };
                self.metrics
                    .replicas
                    .get_or_create(&labels)
                    .set(i64::from(n));
            }
            for (family, v) in [
                (&self.metrics.inflight, &live.inflight),
                (&self.metrics.queued, &live.queued),
            ] {
                family
                    .get_or_create(&label(function))
                    .set(i64::from(v.load(Ordering::Relaxed)));
            }
        }
        Response::builder()
            .header(
                hyper::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .body(
                Full::new(Bytes::from(self.metrics.encode()))
                    .map_err(|never: Infallible| match never {})
                    .boxed(),
            )
            .expect("a valid response")
    }

    /// A function as the admin API and `cubeflash ls --gateway` show it.
    fn describe(&self, f: &Function, base: &str) -> serde_json::Value {
        let live = &f.live;
        json!({
            "name": f.entry.name,
            "triggers": f.entry.triggers,
            "replicas": { "desired": live.desired.load(Ordering::Relaxed), "ready": live.ready.load(Ordering::Relaxed) },
            "baselineReplicas": f.entry.baseline.as_ref().map(|_| json!({ "ready": live.baseline_ready.load(Ordering::Relaxed) })),
            "inflight": live.inflight.load(Ordering::Relaxed),
            "queued": live.queued.load(Ordering::Relaxed),
            "coldStarts": live.cold_starts.load(Ordering::Relaxed),
            "url": format!("{base}/function/{}", f.entry.name),
            "baselineUrl": f.entry.baseline.as_ref().map(|b| b.service.clone()),
            "failed": null,
            "scale": f.entry.scale,
            "timeout": f.entry.timeout,
        })
    }

    /// The admin API under /system/: list, describe and scale, with the bearer token from
    /// CUBEFLASH_ADMIN_TOKEN (the rendered Deployment reads it from the cubeflash-admin Secret).
    pub(super) async fn admin(&self, req: Request<Incoming>) -> Response<GatewayBody> {
        let Some(token) = &self.config.admin_token else {
            return json_error(
                StatusCode::FORBIDDEN,
                "the admin API is off: create the Secret cubeflash-admin with a `token` key (the gateway reads it as CUBEFLASH_ADMIN_TOKEN) and restart the gateway",
                None,
            );
        };
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(format!("Bearer {token}").as_str()) {
            return json_error(
                StatusCode::UNAUTHORIZED,
                "the admin API needs `Authorization: Bearer <token>` (the cubeflash-admin Secret's token)",
                None,
            );
        }
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost");
        let base = format!("http://{host}");
        let path = req.uri().path().trim_end_matches('/').to_string();
        let parts: Vec<&str> = path.trim_start_matches("/system/").split('/').collect();
        let functions = self.functions();
        let unknown = |name: &str| {
            json_error(
                StatusCode::NOT_FOUND,
                &format!("no function named {name:?}"),
                Some(name),
            )
        };
        match (req.method().clone(), parts.as_slice()) {
            (hyper::Method::GET, ["functions"]) => {
                let mut list: Vec<&Arc<Function>> = functions.values().collect();
                list.sort_by(|a, b| a.entry.name.cmp(&b.entry.name));
                let list: Vec<serde_json::Value> =
                    list.iter().map(|f| self.describe(f, &base)).collect();
                json_response(StatusCode::OK, &serde_json::Value::Array(list))
            }
            (hyper::Method::GET, ["functions", name]) => match functions.get(*name) {
                Some(f) => json_response(StatusCode::OK, &self.describe(f, &base)),
                None => unknown(name),
            },
            (hyper::Method::POST, ["functions", name, "scale"]) => {
                let Some(f) = functions.get(*name).cloned() else {
                    return unknown(name);
                };
                match requested_replicas(req, f.entry.scale.max, name).await {
                    Ok(n) => {
                        let current = f.live.desired.load(Ordering::Relaxed);
                        self.scale(&f, current, n).await;
                        json_response(StatusCode::OK, &self.describe(&f, &base))
                    }
                    Err(refusal) => refusal,
                }
            }
            _ => json_error(
                StatusCode::NOT_FOUND,
                &format!("no admin route {path} on the Kubernetes gateway"),
                None,
            ),
        }
    }
}
