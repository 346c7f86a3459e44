//! What the bench asks of the gateway: function targets resolved to URLs (and their
//! baselines'), scale-to-zero through the admin API before a cold sample, and the
//! replica-seconds each function held, from /metrics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::gateway::client::{AdminClient, ClientError};

use super::http::{self, PreparedRequest};
use super::plan::{self, Endpoint, Plan};
use super::{BenchError, GatewayHandle, ResolvedTarget, Role};

/// Turns the plan's targets into requests: function targets through the gateway (and their
/// baselines, whose URL the admin API gives); then checks each one listens.
pub async fn resolve_targets(
    plan: &Plan,
    gateway: Option<&GatewayHandle>,
) -> Result<(Vec<ResolvedTarget>, Vec<String>), BenchError> {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for t in &plan.targets {
        let build = |name: &str, url: &str| {
            PreparedRequest::new(url, &t.method, &t.headers, &t.body).map_err(|source| {
                BenchError::Request {
                    target: name.to_string(),
                    source,
                }
            })
        };
        match &t.endpoint {
            Endpoint::Url(url) => out.push(ResolvedTarget {
                name: t.name.clone(),
                role: Role::Url,
                function: None,
                request: build(&t.name, url)?,
            }),
            Endpoint::Function {
                name,
                path,
                baseline,
            } => {
                let gw = gateway.ok_or(BenchError::NoGateway)?;
                let info = gw.client().function(name).await.map_err(|e| {
                    if e.status() == Some(reqwest::StatusCode::NOT_FOUND) {
                        BenchError::UnknownFunction(name.clone())
                    } else {
                        BenchError::Admin(e)
                    }
                })?;
                let url = format!("{}/function/{name}{path}", gw.url);
                out.push(ResolvedTarget {
                    name: t.name.clone(),
                    role: Role::Serverless,
                    function: Some(name.clone()),
                    request: build(&t.name, &url)?,
                });
                let has_baseline = info.baseline_replicas.is_some();
                if baseline.direct && has_baseline {
                    let Some(base) = info.baseline_url.as_deref() else {
                        return Err(BenchError::NoBaselineUrl(name.clone()));
                    };
                    let bname = plan::baseline_name(&t.name);
                    let url = format!("{}{path}", base.trim_end_matches('/'));
                    match build(&bname, &url) {
                        Ok(request) => out.push(ResolvedTarget {
                            name: bname.clone(),
                            role: Role::Baseline,
                            function: Some(name.clone()),
                            request,
                        }),
                        // A cluster's Service name: reachable only inside the cluster.
                        Err(BenchError::Request {
                            source: http::RequestError::Resolve { .. },
                            ..
                        }) if baseline.gateway => notes.push(format!(
                            "{bname} left out: {url} resolves only inside the cluster; {} (the baseline through the gateway) stands for it",
                            plan::gateway_baseline_name(&t.name)
                        )),
                        Err(e) => return Err(e),
                    }
                }
                if baseline.gateway && has_baseline {
                    let bname = plan::gateway_baseline_name(&t.name);
                    let url = format!("{}/baseline/{name}{path}", gw.url);
                    out.push(ResolvedTarget {
                        name: bname.clone(),
                        role: Role::BaselineGateway,
                        function: Some(name.clone()),
                        request: build(&bname, &url)?,
                    });
                }
            }
        }
    }
    for t in &out {
        http::probe(t.request.addr, Duration::from_secs(3))
            .await
            .map_err(|source| BenchError::Unreachable {
                target: t.name.clone(),
                url: t.request.url.clone(),
                source,
            })?;
    }
    Ok((out, notes))
}

pub(super) async fn scale_to_zero(client: &AdminClient, function: &str) -> Result<(), BenchError> {
    client.scale(function, 0).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let f = client.function(function).await?;
        if f.replicas.desired == 0 && f.replicas.ready == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::StillRunning(function.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `cubeflash_replica_seconds_total` by "function/kind", from the gateway's /metrics.
pub(super) async fn replica_seconds(client: &AdminClient) -> BTreeMap<String, f64> {
    match client.metrics().await {
        Ok(text) => parse_replica_seconds(&text),
        Err(_) => BTreeMap::new(),
    }
}

impl GatewayHandle {
    /// The admin API of this gateway.
    pub fn client(&self) -> AdminClient {
        AdminClient::new(&self.url, Some(self.token.clone()))
    }
}

impl From<ClientError> for BenchError {
    fn from(e: ClientError) -> Self {
        BenchError::Admin(e)
    }
}

fn parse_replica_seconds(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("cubeflash_replica_seconds_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                kv.strip_prefix(&format!("{name}=\""))
                    .and_then(|v| v.strip_suffix('"'))
            })
        };
        if let (Some(f), Some(k), Ok(v)) = (
            label("function"),
            label("kind"),
            value.trim().parse::<f64>(),
        ) {
            out.insert(format!("{f}/{k}"), v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_seconds_are_read_per_function_and_kind() {
        let text = "# TYPE x counter\ncubeflash_replica_seconds_total{function=\"q\",kind=\"serverless\"} 1.5\ncubeflash_replica_seconds_total{function=\"q\",kind=\"baseline\"} 30.0\n";
        let m = parse_replica_seconds(text);
        assert_eq!(m["q/serverless"], 1.5);
        assert_eq!(m["q/baseline"], 30.0);
    }
}
