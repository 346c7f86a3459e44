//! A run against a cluster: how the gateway was reached (a port-forward cubeflash opened, or
//! an address the user gave), and what the sampler reads from the API server instead of the
//! process table: ready replicas from the functions' Deployments, CPU from the metrics API.

use std::collections::HashMap;

use crate::deploy::kubernetes::{self as kube_target, usage};

use super::sampler::Side;

/// The cluster a run measures.
pub struct Cluster {
    pub client: kube::Client,
    /// The API server's URL (for error messages).
    pub url: String,
    pub namespace: String,
    /// How the gateway is reached, in words, for the terminal and the report.
    pub via: String,
}

/// Ready replicas of a function's Deployment and of its baseline's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub serverless: u32,
    pub baseline: u32,
}

impl Cluster {
    /// Ready replicas by function, from the Deployments (None: the API server did not answer).
    pub async fn ready(&self) -> Option<HashMap<String, Ready>> {
        let list = kube_target::functions(self.client.clone(), &self.url, &self.namespace)
            .await
            .map_err(|e| tracing::debug!(error = %e, "bench sampler: listing Deployments failed"))
            .ok()?;
        let ready = |v: &serde_json::Value| {
            v["ready"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0)
        };
        Some(
            list.iter()
                .filter_map(|f| {
                    let name = f["name"].as_str()?.to_string();
                    let serverless = ready(&f["replicas"]);
                    let baseline = ready(&f["baselineReplicas"]);
                    Some((
                        name,
                        Ready {
                            serverless,
                            baseline,
                        },
                    ))
                })
                .collect(),
        )
    }

    /// CPU cores in use by (function, side), from the metrics API; None without one.
    pub async fn cpu(&self) -> Option<HashMap<(String, Side), f64>> {
        let usage = usage::pod_cpu(self.client.clone(), &self.url, &self.namespace)
            .await
            .map_err(|e| tracing::debug!(error = %e, "bench sampler: reading pod metrics failed"))
            .ok()??;
        Some(
            usage
                .into_iter()
                .filter_map(|((function, component), cores)| {
                    let side = match component.as_str() {
                        "function" => Side::Serverless,
                        "baseline" => Side::Baseline,
                        _ => return None,
                    };
                    Some(((function, side), cores))
                })
                .collect(),
        )
    }
}
