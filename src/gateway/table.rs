//! The route table: the one contract between `render`, which writes it into the gateway's
//! ConfigMap, and the gateway engine, which serves from it on either backend (the local
//! platform builds the same entries from the specs in memory). Read back strictly: unknown
//! keys, a bad duration or another version are errors, never a default.

use serde::{Deserialize, Serialize};

use crate::names::{FUNCTION_PORT, ROUTES_KEY};
use crate::spec::function::{HttpTrigger, Scale, ScheduleTrigger};
use crate::spec::values::Dur;
use crate::spec::{Function, Runtime, Trigger};

/// The table's format version; a gateway refuses another.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTable {
    pub version: u32,
    pub namespace: String,
    pub functions: Vec<RouteEntry>,
}

/// One function as the gateway serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteEntry {
    pub name: String,
    pub runtime: Runtime,
    /// The function's Deployment (Kubernetes backend).
    pub deployment: String,
    /// The function's Service URL (Kubernetes backend).
    pub service: String,
    pub baseline: Option<RouteBaseline>,
    pub triggers: Vec<Trigger>,
    pub scale: Scale,
    pub timeout: Dur,
    /// How async calls to it are retried.
    #[serde(default, rename = "async")]
    pub retry: crate::spec::function::RetryPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteBaseline {
    pub deployment: String,
    pub service: String,
    /// Always-on replicas.
    #[serde(default = "one")]
    pub replicas: u32,
}

fn one() -> u32 {
    1
}

/// Why a route table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The ConfigMap has no `routes.json` key.
    #[error("the route table ConfigMap has no `{ROUTES_KEY}` key: render and deploy the repo again (`cubeflash render && cubeflash deploy --target kubernetes`)")]
    Missing,
    /// The JSON does not match the table's type.
    #[error("the route table does not parse: deploy it again with this version of cubeflash")]
    Invalid(#[source] serde_json::Error),
    /// Written by another version of cubeflash.
    #[error("the route table has version {found}, this gateway reads version {VERSION}: run a gateway of the same cubeflash version as `cubeflash render`")]
    Version { found: u32 },
}

impl RouteTable {
    /// The table for `functions` in `namespace`, in the order given.
    pub fn new(namespace: &str, functions: &[Function]) -> Self {
        Self {
            version: VERSION,
            namespace: namespace.to_string(),
            functions: functions
                .iter()
                .map(|f| RouteEntry::new(namespace, f))
                .collect(),
        }
    }

    pub fn parse(text: &str) -> Result<Self, TableError> {
        let table: Self = serde_json::from_str(text).map_err(TableError::Invalid)?;
        if table.version != VERSION {
            return Err(TableError::Version {
                found: table.version,
            });
        }
        Ok(table)
    }

    /// Pretty JSON with a trailing newline: stable, reviewable in `generated/`.
    pub fn to_json(&self) -> String {
        let mut json = serde_json::to_string_pretty(self).expect("a route table serializes");
        json.push('\n');
        json
    }
}

impl RouteEntry {
    pub fn new(namespace: &str, f: &Function) -> Self {
        let spec = &f.spec;
        let svc = |name: &str| format!("http://{name}.{namespace}.svc:{FUNCTION_PORT}");
        Self {
            name: spec.name.clone(),
            runtime: spec.runtime,
            deployment: spec.name.clone(),
            service: svc(&spec.name),
            baseline: spec.baseline.as_ref().map(|b| {
                let name = format!("{}-baseline", spec.name);
                RouteBaseline {
                    service: svc(&name),
                    deployment: name,
                    replicas: b.replicas,
                }
            }),
            triggers: spec.triggers.clone(),
            scale: spec.scale.clone(),
            timeout: spec.timeout.clone(),
            retry: spec.retry.clone(),
        }
    }

    pub fn http_triggers(&self) -> impl Iterator<Item = &HttpTrigger> {
        Trigger::http_of(&self.triggers)
    }

    pub fn schedule_triggers(&self) -> impl Iterator<Item = &ScheduleTrigger> {
        Trigger::schedules_of(&self.triggers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = r#"{"version": 1, "namespace": "demo", "functions": [{
        "name": "a", "runtime": "python", "deployment": "a", "service": "http://a.demo.svc:8080",
        "baseline": null, "triggers": [{"http": {"path": "/a", "methods": ["GET"]}}],
        "scale": {"min": 0, "max": 2, "concurrency": 10, "limit": 0, "idle": "2s", "coldStartTimeout": "30s"},
        "timeout": "5s"}]}"#;

    #[test]
    fn a_table_round_trips_through_its_json() {
        let table = RouteTable::parse(TABLE).unwrap();
        assert_eq!(table.functions[0].scale.idle.value.as_secs(), 2);
        assert_eq!(RouteTable::parse(&table.to_json()).unwrap(), table);
    }

    #[test]
    fn a_bad_duration_is_an_error_not_a_default() {
        let bad = TABLE.replace("\"2s\"", "\"two seconds\"");
        let err = RouteTable::parse(&bad).unwrap_err();
        assert!(matches!(err, TableError::Invalid(_)), "{err}");
        assert!(format!("{:#}", anyhow::Error::from(err)).contains("two seconds"));
    }

    #[test]
    fn unknown_keys_and_other_versions_are_refused() {
        let extra = TABLE.replace("\"timeout\": \"5s\"", "\"timeout\": \"5s\", \"x\": 1");
        assert!(matches!(
            RouteTable::parse(&extra),
            Err(TableError::Invalid(_))
        ));
        let v2 = TABLE.replace("\"version\": 1", "\"version\": 2");
        assert!(matches!(
            RouteTable::parse(&v2),
            Err(TableError::Version { found: 2 })
        ));
    }
}
