//! The route table: function by name, and each http trigger's path and methods.
//! Built once per (re)load and swapped whole, so lookups never lock against a reload.

use std::collections::HashMap;
use std::sync::Arc;

use super::function::FunctionState;

/// The methods a trigger accepts (empty: any) and the function it routes to.
type Route = (Vec<String>, Arc<FunctionState>);

#[derive(Default)]
pub struct Routes {
    pub by_name: HashMap<String, Arc<FunctionState>>,
    exact: HashMap<String, Vec<Route>>,
    /// Prefix routes (`/api/*`), longest first.
    prefixes: Vec<(String, Route)>,
}

impl Routes {
    pub fn new(functions: Vec<Arc<FunctionState>>) -> Self {
        let mut routes = Routes::default();
        for f in functions {
            for http in f.function.spec.http_triggers() {
                let methods = http.methods.clone();
                match http.path.strip_suffix('*') {
                    Some(prefix) => routes
                        .prefixes
                        .push((prefix.to_string(), (methods, f.clone()))),
                    None => routes
                        .exact
                        .entry(http.path.clone())
                        .or_default()
                        .push((methods, f.clone())),
                }
            }
            routes.by_name.insert(f.name().to_string(), f);
        }
        routes
            .prefixes
            .sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        routes
    }

    /// The function an http trigger routes `method path` to.
    pub fn trigger(&self, method: &str, path: &str) -> Option<Arc<FunctionState>> {
        let allows = |methods: &[String]| methods.is_empty() || methods.iter().any(|m| m == method);
        if let Some(list) = self.exact.get(path) {
            if let Some((_, f)) = list.iter().find(|(m, _)| allows(m)) {
                return Some(f.clone());
            }
        }
        self.prefixes
            .iter()
            .find(|(prefix, (m, _))| path.starts_with(prefix.as_str()) && allows(m))
            .map(|(_, (_, f))| f.clone())
    }

    /// Sorted by name.
    pub fn functions(&self) -> Vec<Arc<FunctionState>> {
        let mut all: Vec<_> = self.by_name.values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }
}
