//! A typed reader over a located YAML tree (marked-yaml) that records every problem it meets
//! instead of stopping at the first, so a user sees all of them in one run. It knows YAML
//! shapes (mapping, list, string, number, boolean), not what any key means.

use std::collections::BTreeMap;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, LoaderOptions, Node, Span};

use super::diagnostic::{Diagnostic, Diagnostics, Loc, SourceFile};

/// Parses a whole file into a located tree; syntax errors, duplicate keys and empty files are
/// reported as a single diagnostic, since nothing after them can be trusted.
pub fn parse_document(file: &SourceFile) -> Result<Node, Box<Diagnostic>> {
    if file.text.trim().is_empty() || only_comments(&file.text) {
        return Err(Box::new(Diagnostic::whole_file(
            &file.display,
            "the file is empty",
        )));
    }
    let options = LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true)
        .toplevel_mapping();
    marked_yaml::parse_yaml_with_options(0, &file.text, options)
        .map_err(|e| Box::new(load_error(file, e)))
}

fn only_comments(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---")
}

fn load_error(file: &SourceFile, err: LoadError) -> Diagnostic {
    let at = |m: &marked_yaml::Marker| Loc {
        line: m.line(),
        column: m.column(),
        len: 1,
    };
    match err {
        LoadError::TopLevelMustBeMapping(m) => Diagnostic::new(
            file,
            at(&m),
            "",
            "expected a mapping of keys to values at the top",
        )
        .with_hint("start the file with `name: ...` on its own line"),
        LoadError::DuplicateKey(inner) => {
            let first = inner.prev_key.span().start().map(|m| m.line()).unwrap_or(0);
            let key = inner.key.as_str().to_string();
            Diagnostic::new(
                file,
                span_loc(inner.key.span(), key.len()),
                &key,
                format!("key `{key}` appears twice (first on line {first})"),
            )
            .with_hint("keep one of the two")
        }
        LoadError::ScanError(m, e) => {
            Diagnostic::new(file, at(&m), "", format!("invalid YAML: {}", e.info()))
                .with_hint("check the indentation and quoting around this position")
        }
        LoadError::UnexpectedAnchor(m) | LoadError::UnexpectedTag(m) => Diagnostic::new(
            file,
            at(&m),
            "",
            "YAML anchors, aliases and tags are not supported",
        )
        .with_hint("write the value out in full"),
        LoadError::MappingKeyMustBeScalar(m) => {
            Diagnostic::new(file, at(&m), "", "mapping keys must be plain strings")
        }
        LoadError::TopLevelMustBeSequence(m) => {
            Diagnostic::new(file, at(&m), "", "unexpected top-level sequence")
        }
    }
}

fn span_loc(span: &Span, len: usize) -> Loc {
    span.start()
        .map(|m| Loc {
            line: m.line(),
            column: m.column(),
            len,
        })
        .unwrap_or_default()
}

/// Where a node starts, and how long its text is when it fits on one line.
pub fn node_loc(node: &Node) -> Loc {
    let len = match node {
        Node::Scalar(s) => scalar_len(s),
        _ => 1,
    };
    span_loc(node.span(), len)
}

fn scalar_len(s: &MarkedScalarNode) -> usize {
    let text = s.as_str();
    if text.contains('\n') {
        1
    } else if s.may_coerce() {
        text.chars().count().max(1)
    } else {
        // Quoted: include the quotes.
        text.chars().count() + 2
    }
}

/// Joins a parent key path and a child key.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn is_null(node: &Node) -> bool {
    matches!(node, Node::Scalar(s) if s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL"))
}

/// How a node looks, for "found ..." in messages.
pub fn describe(node: &Node) -> String {
    match node {
        Node::Mapping(_) => "a mapping".into(),
        Node::Sequence(_) => "a list".into(),
        Node::Scalar(s) if is_null(node) => {
            let _ = s;
            "nothing".into()
        }
        Node::Scalar(s) if !s.may_coerce() => format!("the string {:?}", s.as_str()),
        Node::Scalar(s) if s.as_bool().is_some() => format!("the boolean {}", s.as_str()),
        Node::Scalar(s) if s.as_f64().is_some() => format!("the number {}", s.as_str()),
        Node::Scalar(s) => format!("{:?}", s.as_str()),
    }
}

/// The keys of one mapping, with the path that leads to it.
pub struct Fields<'n> {
    map: &'n MarkedMappingNode,
    pub path: String,
}

impl<'n> Fields<'n> {
    /// The value of `key`, treating an explicit null (`key:`) as absent.
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.map.get(key).filter(|n| !is_null(n))
    }

    pub fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// All entries, in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&'n MarkedScalarNode, &'n Node)> {
        self.map.iter()
    }

    pub fn loc(&self) -> Loc {
        span_loc(self.map.span(), 1)
    }
}

/// Reads typed values out of one file's tree, collecting every problem.
pub struct Reader<'f> {
    pub file: &'f SourceFile,
    pub diags: Diagnostics,
}

impl<'f> Reader<'f> {
    pub fn new(file: &'f SourceFile) -> Self {
        Self {
            file,
            diags: Diagnostics::default(),
        }
    }

    /// Records a problem at `node`.
    pub fn error(&mut self, node: &Node, path: &str, message: impl Into<String>, hint: &str) {
        self.error_at(node_loc(node), path, message, hint);
    }

    pub fn error_at(&mut self, loc: Loc, path: &str, message: impl Into<String>, hint: &str) {
        let mut d = Diagnostic::new(self.file, loc, path, message);
        if !hint.is_empty() {
            d = d.with_hint(hint);
        }
        self.diags.push(d);
    }

    /// A mapping whose keys must all be in `allowed`; unknown keys are reported with the
    /// closest allowed key as a suggestion.
    pub fn mapping<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        allowed: &[&str],
    ) -> Option<Fields<'n>> {
        let Node::Mapping(map) = node else {
            self.error(
                node,
                path,
                format!("expected a mapping, found {}", describe(node)),
                &format!("allowed keys here: {}", allowed.join(", ")),
            );
            return None;
        };
        for (key, _) in map.iter() {
            if !allowed.contains(&key.as_str()) {
                let hint = match closest(key.as_str(), allowed) {
                    Some(best) => format!(
                        "did you mean `{best}`? allowed keys here: {}",
                        allowed.join(", ")
                    ),
                    None => format!("allowed keys here: {}", allowed.join(", ")),
                };
                self.error_at(
                    span_loc(key.span(), key.as_str().chars().count()),
                    &join(path, key.as_str()),
                    format!("unknown key `{}`", key.as_str()),
                    &hint,
                );
            }
        }
        Some(Fields {
            map,
            path: path.to_string(),
        })
    }

    /// A required key: reports its absence at the enclosing mapping.
    pub fn required<'n>(
        &mut self,
        fields: &Fields<'n>,
        key: &str,
        example: &str,
    ) -> Option<&'n Node> {
        let node = fields.get(key);
        if node.is_none() {
            self.error_at(
                fields.loc(),
                &fields.path_of(key),
                format!("missing required key `{key}`"),
                &format!("add it, e.g. `{example}`"),
            );
        }
        node
    }

    /// A plain or quoted string (numbers and booleans are refused: quote them if meant).
    pub fn string(&mut self, node: &Node, path: &str, hint: &str) -> Option<String> {
        match node {
            Node::Scalar(s)
                if !s.may_coerce() || (s.as_bool().is_none() && s.as_f64().is_none()) =>
            {
                Some(s.as_str().to_string())
            }
            _ => {
                self.error(
                    node,
                    path,
                    format!("expected a string, found {}", describe(node)),
                    hint,
                );
                None
            }
        }
    }

    /// Any scalar, as its text: used where Kubernetes wants strings but users write numbers
    /// (environment values, quantities).
    pub fn scalar_text(&mut self, node: &Node, path: &str, hint: &str) -> Option<String> {
        match node {
            Node::Scalar(s) => Some(s.as_str().to_string()),
            _ => {
                self.error(
                    node,
                    path,
                    format!("expected a single value, found {}", describe(node)),
                    hint,
                );
                None
            }
        }
    }

    /// `true` or `false`.
    pub fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node {
            Node::Scalar(s) if s.as_bool().is_some() => s.as_bool(),
            _ => {
                self.error(
                    node,
                    path,
                    format!("expected true or false, found {}", describe(node)),
                    "write true or false",
                );
                None
            }
        }
    }

    /// A whole number within `[min, max]`.
    pub fn uint(&mut self, node: &Node, path: &str, min: u32, max: u32) -> Option<u32> {
        let value = match node {
            Node::Scalar(s) if s.may_coerce() => s.as_str().parse::<u64>().ok(),
            _ => None,
        };
        match value {
            Some(v) if v >= u64::from(min) && v <= u64::from(max) => Some(v as u32),
            _ => {
                self.error(
                    node,
                    path,
                    format!(
                        "expected a whole number from {min} to {max}, found {}",
                        describe(node)
                    ),
                    &format!(
                        "write a number without quotes, e.g. `{}: {min}`",
                        last_key(path)
                    ),
                );
                None
            }
        }
    }

    /// A Go-style duration (`500ms`, `30s`, `1m30s`); zero is refused unless `allow_zero`.
    pub fn duration(
        &mut self,
        node: &Node,
        path: &str,
        allow_zero: bool,
        example: &str,
    ) -> Option<std::time::Duration> {
        let text = self.scalar_text(node, path, "")?;
        let key = last_key(path);
        match super::values::parse_duration(&text) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.error(
                    node,
                    path,
                    format!("{key} must be longer than zero"),
                    &format!("e.g. `{key}: {example}`"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(why) => {
                self.error(node, path, why, &format!("e.g. `{key}: {example}`"));
                None
            }
        }
    }

    pub fn sequence<'n>(&mut self, node: &'n Node, path: &str, hint: &str) -> Option<&'n [Node]> {
        match node {
            Node::Sequence(seq) => Some(seq.as_slice()),
            _ => {
                self.error(
                    node,
                    path,
                    format!("expected a list, found {}", describe(node)),
                    hint,
                );
                None
            }
        }
    }

    /// A mapping of names to scalar values, e.g. `env`.
    pub fn string_map(
        &mut self,
        node: &Node,
        path: &str,
        hint: &str,
    ) -> BTreeMap<String, (String, Loc)> {
        let mut out = BTreeMap::new();
        let Node::Mapping(map) = node else {
            self.error(
                node,
                path,
                format!("expected a mapping, found {}", describe(node)),
                hint,
            );
            return out;
        };
        for (key, value) in map.iter() {
            let key_path = join(path, key.as_str());
            if is_null(value) {
                out.insert(key.as_str().to_string(), (String::new(), node_loc(value)));
            } else if let Some(text) = self.scalar_text(value, &key_path, hint) {
                let loc = span_loc(key.span(), key.as_str().chars().count());
                out.insert(key.as_str().to_string(), (text, loc));
            }
        }
        out
    }
}

/// The last key of a path, without a list index: `steps[0].closed.concurrency[1]` -> `concurrency`.
fn last_key(path: &str) -> &str {
    let key = path.rsplit('.').next().unwrap_or(path);
    key.split('[').next().unwrap_or(key)
}

/// The allowed key a mistyped one most likely meant, ignoring case, `_` and `-`.
pub fn closest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| s.to_lowercase().replace(['_', '-'], "");
    let k = norm(key);
    allowed
        .iter()
        .map(|a| (strsim::levenshtein(&k, &norm(a)), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> (SourceFile, Node) {
        let file = SourceFile::new("f.yaml", text);
        let node = parse_document(&file).expect("parses");
        (file, node)
    }

    #[test]
    fn unknown_keys_are_all_reported_with_a_suggestion() {
        let (file, node) = read("nmae: x\ncoldstarttimeout: 3s\nzzz: 1\n");
        let mut r = Reader::new(&file);
        r.mapping(&node, "", &["name", "coldStartTimeout"]);
        let d: Vec<_> = r.diags.iter().collect();
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].loc.line, 1);
        assert!(d[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("did you mean `name`"));
        assert!(d[1]
            .hint
            .as_deref()
            .unwrap()
            .contains("did you mean `coldStartTimeout`"));
        assert!(!d[2].hint.as_deref().unwrap().contains("did you mean"));
    }

    #[test]
    fn quoted_numbers_are_not_numbers_and_numbers_are_not_strings() {
        let (file, node) = read("a: \"2\"\nb: 3\n");
        let mut r = Reader::new(&file);
        let f = r.mapping(&node, "", &["a", "b"]).unwrap();
        assert_eq!(r.uint(f.get("a").unwrap(), "a", 0, 10), None);
        assert_eq!(r.string(f.get("b").unwrap(), "b", ""), None);
        assert_eq!(r.diags.len(), 2);
        assert!(r.diags.0[0].message.contains("found the string \"2\""));
        assert_eq!(
            r.diags.0[0].loc,
            Loc {
                line: 1,
                column: 4,
                len: 3
            }
        );
    }

    #[test]
    fn syntax_errors_duplicates_and_empty_files_are_single_diagnostics() {
        let bad = SourceFile::new("f.yaml", "a: [1, 2\n");
        assert!(parse_document(&bad)
            .unwrap_err()
            .message
            .starts_with("invalid YAML"));
        let dup = SourceFile::new("f.yaml", "a: 1\na: 2\n");
        let d = parse_document(&dup).unwrap_err();
        assert!(d.message.contains("appears twice"), "{d}");
        assert_eq!(d.loc.line, 2);
        let empty = SourceFile::new("f.yaml", "# nothing\n\n");
        assert_eq!(
            parse_document(&empty).unwrap_err().message,
            "the file is empty"
        );
    }
}
