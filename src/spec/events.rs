//! Test events: `functions/NAME/events/EVENT.json`, requests kept in git beside the code
//! and reviewed with it, run from the dashboard's console and by `cubeflash invoke NAME
//! --event EVENT`.

use std::path::{Path, PathBuf};

use crate::gateway::api::TestEvent;

/// Where a function's test events live.
pub fn dir(root: &Path, function: &str) -> PathBuf {
    root.join("functions").join(function).join("events")
}

/// Why an event could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("{function} has no test event {name:?}{}; add {} (method, path, headers, body)", listed(.known), .path.display())]
    Missing {
        function: String,
        name: String,
        path: PathBuf,
        known: Vec<String>,
    },
    #[error("test event name {0:?} is not a file name: use letters, digits, '-' and '_'")]
    BadName(String),
    #[error("failed to read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {detail}; a test event is JSON like {{\"method\": \"POST\", \"path\": \"/\", \"headers\": {{}}, \"body\": ...}}", .path.display())]
    Invalid { path: PathBuf, detail: String },
}

fn listed(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(" (it has {})", names.join(", "))
    }
}

/// Every test event of `function`, by file name; an unreadable or invalid one is an error.
pub fn list(root: &Path, function: &str) -> Result<Vec<TestEvent>, EventError> {
    let dir = dir(root, function);
    let mut names = names(&dir)?;
    names.sort();
    names
        .iter()
        .map(|n| read(&dir.join(format!("{n}.json")), n))
        .collect()
}

/// One test event by name (its file name without `.json`).
pub fn load(root: &Path, function: &str, name: &str) -> Result<TestEvent, EventError> {
    let name = name.strip_suffix(".json").unwrap_or(name);
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(EventError::BadName(name.to_string()));
    }
    let dir = dir(root, function);
    let path = dir.join(format!("{name}.json"));
    if !path.is_file() {
        let mut known = names(&dir).unwrap_or_default();
        known.sort();
        return Err(EventError::Missing {
            function: function.to_string(),
            name: name.to_string(),
            path,
            known,
        });
    }
    read(&path, name)
}

fn names(dir: &Path) -> Result<Vec<String>, EventError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(EventError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    Ok(entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json").map(str::to_string)
        })
        .collect())
}

fn read(path: &Path, name: &str) -> Result<TestEvent, EventError> {
    let text = std::fs::read_to_string(path).map_err(|source| EventError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut event: TestEvent = serde_json::from_str(&text).map_err(|e| EventError::Invalid {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let invalid = |detail: String| EventError::Invalid {
        path: path.to_path_buf(),
        detail,
    };
    if hyper::Method::from_bytes(event.method.to_uppercase().as_bytes()).is_err() {
        return Err(invalid(format!(
            "method {:?} is not an HTTP method",
            event.method
        )));
    }
    event.method = event.method.to_uppercase();
    if !event.path.starts_with('/') {
        return Err(invalid(format!(
            "path {:?} must start with / (it is appended to the function's URL)",
            event.path
        )));
    }
    for (k, v) in &event.headers {
        if hyper::header::HeaderName::from_bytes(k.as_bytes()).is_err()
            || hyper::header::HeaderValue::from_str(v).is_err()
        {
            return Err(invalid(format!(
                "header {k:?}: {v:?} is not a valid HTTP header"
            )));
        }
    }
    event.name = name.to_string();
    Ok(event)
}

impl TestEvent {
    /// The body as bytes to send, and the content type it implies: a string as it is
    /// (text/plain), any other JSON value as JSON.
    pub fn body_bytes(&self) -> Option<(Vec<u8>, &'static str)> {
        match &self.body {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => {
                Some((s.clone().into_bytes(), "text/plain; charset=utf-8"))
            }
            Some(v) => Some((v.to_string().into_bytes(), "application/json")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(root: &Path, name: &str, text: &str) {
        let d = dir(root, "f");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("{name}.json")), text).unwrap();
    }

    #[test]
    fn events_load_with_defaults_and_located_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        assert!(list(root, "f").unwrap().is_empty());
        event(root, "hello", r#"{"body": {"name": "ada"}}"#);
        event(
            root,
            "post",
            r#"{"method": "post", "path": "/items?x=1", "headers": {"X-A": "b"}, "body": "hi"}"#,
        );
        let all = list(root, "f").unwrap();
        assert_eq!(
            all.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["hello", "post"]
        );
        assert_eq!((all[0].method.as_str(), all[0].path.as_str()), ("GET", "/"));
        assert_eq!(
            all[0].body_bytes().unwrap(),
            (br#"{"name":"ada"}"#.to_vec(), "application/json")
        );
        assert_eq!(all[1].method, "POST");
        assert_eq!(all[1].body_bytes().unwrap().0, b"hi");

        let missing = load(root, "f", "nope").unwrap_err().to_string();
        assert!(
            missing.contains("no test event \"nope\" (it has hello, post)"),
            "{missing}"
        );
        assert!(matches!(
            load(root, "f", "../x"),
            Err(EventError::BadName(_))
        ));

        event(root, "bad", r#"{"method": "GET", "pth": "/"}"#);
        let bad = load(root, "f", "bad").unwrap_err().to_string();
        assert!(
            bad.contains("bad.json") && bad.contains("unknown field `pth`"),
            "{bad}"
        );
        assert!(list(root, "f").is_err(), "one bad event fails the listing");
        event(root, "bad", r#"{"path": "items"}"#);
        let bad = load(root, "f", "bad").unwrap_err().to_string();
        assert!(bad.contains("must start with /"), "{bad}");
    }
}
