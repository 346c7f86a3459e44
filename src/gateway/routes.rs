//! The route table in memory: function by name, and each http trigger's path and methods.
//! Built once per (re)load and swapped whole, so lookups never lock against a reload.
//! Deterministic: an exact path beats a prefix, a longer prefix beats a shorter one, and
//! among equals the function whose name sorts first wins.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::function::FunctionState;

/// The methods a trigger accepts (empty: any) and the function it routes to.
#[derive(Clone)]
struct Route {
    methods: Vec<String>,
    function: Arc<FunctionState>,
}

/// What an http trigger lookup found.
pub enum Match {
    Found(Arc<FunctionState>),
    /// Routes serve the path, none with this method; these are the methods they take.
    MethodNotAllowed(Vec<String>),
    NotFound,
}

#[derive(Default)]
pub struct Routes {
    pub by_name: HashMap<String, Arc<FunctionState>>,
    sorted: Vec<Arc<FunctionState>>,
    exact: HashMap<String, Vec<Route>>,
    /// Prefix routes (`/api/*` is the prefix `/api`), longest first.
    prefixes: Vec<(String, Route)>,
}

impl Routes {
    pub fn new(functions: Vec<Arc<FunctionState>>) -> Self {
        let mut sorted: BTreeMap<String, Arc<FunctionState>> = BTreeMap::new();
        for f in functions {
            sorted.insert(f.name().to_string(), f);
        }
        let mut routes = Routes::default();
        for f in sorted.values() {
            for http in f.entry.http_triggers() {
                let route = Route {
                    methods: http.methods.clone(),
                    function: f.clone(),
                };
                match http.path.strip_suffix('*') {
                    Some(prefix) => routes
                        .prefixes
                        .push((prefix.trim_end_matches('/').to_string(), route)),
                    None => routes
                        .exact
                        .entry(http.path.clone())
                        .or_default()
                        .push(route),
                }
            }
        }
        // Stable: equal lengths keep name order.
        routes
            .prefixes
            .sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        routes.sorted = sorted.values().cloned().collect();
        routes.by_name = sorted.into_iter().collect();
        routes
    }

    /// The function an http trigger routes `method path` to.
    pub fn trigger(&self, method: &str, path: &str) -> Match {
        // HEAD goes where GET does, as HTTP servers answer it.
        let allows = |r: &Route| {
            r.methods.is_empty()
                || r.methods
                    .iter()
                    .any(|m| m == method || (method == "HEAD" && m == "GET"))
        };
        let exact = self.exact.get(path).into_iter().flatten();
        let prefixed = self
            .prefixes
            .iter()
            .filter(|(prefix, _)| {
                path.strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .map(|(_, r)| r);
        let mut allowed: Vec<String> = Vec::new();
        for r in exact.chain(prefixed) {
            if allows(r) {
                return Match::Found(r.function.clone());
            }
            allowed.extend(r.methods.iter().cloned());
        }
        if allowed.is_empty() {
            return Match::NotFound;
        }
        allowed.sort();
        allowed.dedup();
        if allowed.iter().any(|m| m == "GET") && !allowed.iter().any(|m| m == "HEAD") {
            allowed.push("HEAD".into());
        }
        Match::MethodNotAllowed(allowed)
    }

    /// Sorted by name.
    pub fn functions(&self) -> &[Arc<FunctionState>] {
        &self.sorted
    }

    /// The 404 for a function name this table does not have, with the nearest name.
    pub fn no_such_function(&self, name: &str) -> hyper::Response<super::GatewayBody> {
        let names: Vec<&str> = self.sorted.iter().map(|f| f.name()).collect();
        let hint = crate::spec::decode::closest(name, &names)
            .map(|n| format!("; did you mean {n:?}?"))
            .unwrap_or_else(|| "; `cubeflash list` shows them".into());
        super::json_error(
            hyper::StatusCode::NOT_FOUND,
            &format!("no function named {name:?}{hint}"),
            Some(name),
        )
    }
}
