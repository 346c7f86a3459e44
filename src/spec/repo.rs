//! Loads a whole repo (cubeflash.yaml plus every functions/<name>/), then checks what spans
//! files: folder names, handler files, and routes claimed by two functions. Reading happens
//! in `load`; everything after it is a pure function of what was read.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::decode::parse_document;
use super::diagnostic::{Diagnostic, Diagnostics, SourceFile};
use super::function::{self, FunctionSpec, Runtime};
use super::project::{self, ProjectSpec};
use super::values;
use super::SpecError;

pub const FUNCTIONS_DIR: &str = "functions";
pub const FUNCTION_FILE: &str = "function.yaml";
pub const TEMPLATES_DIR: &str = "templates";

/// One file of a function's code, as it will be shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeFile {
    /// Relative to the function's folder, with '/' separators.
    pub path: String,
    pub bytes: Vec<u8>,
}

/// A function: its spec, code and template overrides.
#[derive(Debug, Clone)]
pub struct Function {
    pub spec: FunctionSpec,
    /// `functions/<name>`, relative to the repo root.
    pub rel_dir: PathBuf,
    pub files: Vec<CodeFile>,
    /// Template overrides from functions/<name>/templates/, keyed like the built-ins
    /// (`function/deployment.yaml`).
    pub templates: BTreeMap<String, String>,
    /// The function.yaml as read, for messages that quote it.
    pub source: SourceFile,
}

/// A loaded and validated repo.
#[derive(Debug, Clone)]
pub struct Repo {
    pub root: PathBuf,
    pub project: ProjectSpec,
    /// Sorted by name.
    pub functions: Vec<Function>,
    /// The repo's own templates/, keyed like the built-ins.
    pub templates: BTreeMap<String, String>,
}

/// The nearest folder at or above `start` that holds a cubeflash.yaml.
pub fn find_root(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|dir| dir.join(project::FILE_NAME).is_file())
        .map(Path::to_path_buf)
}

/// What was read from disk, before any checking.
struct RawFunction {
    dir_name: String,
    source: SourceFile,
    files: Vec<CodeFile>,
    templates: BTreeMap<String, String>,
}

/// Reads and validates the repo at `root`; every problem in every file is reported at once.
pub fn load(root: &Path) -> Result<Repo, SpecError> {
    let project_path = root.join(project::FILE_NAME);
    if !project_path.is_file() {
        return Err(SpecError::NotARepo {
            dir: root.to_path_buf(),
        });
    }
    let mut diags = Diagnostics::default();
    let project_source = read_source(root, Path::new(project::FILE_NAME), &mut diags)?;
    let (raw, missing) = read_functions(root)?;
    diags.extend(missing);
    let templates = read_templates(&root.join(TEMPLATES_DIR))?;
    let mut raw_functions = Vec::new();
    for (dir_name, rel) in raw {
        if let Some(source) = read_source(root, &rel, &mut diags)? {
            let dir = root
                .join(&rel)
                .parent()
                .expect("function.yaml has a folder")
                .to_path_buf();
            raw_functions.push(RawFunction {
                dir_name,
                source,
                files: read_code(&dir)?,
                templates: read_templates(&dir.join(TEMPLATES_DIR))?,
            });
        }
    }
    let (repo, more) = check(root, project_source, raw_functions, templates);
    diags.extend(more);
    if diags.is_empty() {
        Ok(repo.expect("no problems means a repo"))
    } else {
        Err(SpecError::Invalid(diags.sorted()))
    }
}

fn read_source(
    root: &Path,
    rel: &Path,
    diags: &mut Diagnostics,
) -> Result<Option<SourceFile>, SpecError> {
    let path = root.join(rel);
    let bytes = fs::read(&path).map_err(|source| SpecError::Io {
        path: path.clone(),
        source,
    })?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Some(SourceFile::new(rel, text))),
        Err(_) => {
            diags.push(
                Diagnostic::whole_file(rel, "the file is not UTF-8 text")
                    .with_hint("save it as UTF-8"),
            );
            Ok(None)
        }
    }
}

/// The function folders (name, relative path of their function.yaml), sorted, and problems
/// with folders that lack a function.yaml.
fn read_functions(root: &Path) -> Result<(Vec<(String, PathBuf)>, Diagnostics), SpecError> {
    let dir = root.join(FUNCTIONS_DIR);
    let mut found = Vec::new();
    let mut diags = Diagnostics::default();
    if !dir.exists() {
        return Ok((found, diags));
    }
    for entry in sorted_entries(&dir)? {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        let rel = Path::new(FUNCTIONS_DIR).join(&name).join(FUNCTION_FILE);
        if root.join(&rel).is_file() {
            found.push((name, rel));
        } else {
            diags.push(
                Diagnostic::whole_file(
                    &Path::new(FUNCTIONS_DIR).join(&name),
                    "this function folder has no function.yaml",
                )
                .with_hint(format!(
                    "create it with `cubeflash new {name} --runtime python`, or remove the folder"
                )),
            );
        }
    }
    Ok((found, diags))
}

fn sorted_entries(dir: &Path) -> Result<Vec<fs::DirEntry>, SpecError> {
    let io = |source| SpecError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

/// Files that are build or editor leftovers, never function code.
fn skipped(name: &str) -> bool {
    name.starts_with('.')
        || name == "__pycache__"
        || name == "node_modules"
        || name.ends_with(".pyc")
}

/// Every code file under a function folder except function.yaml and templates/.
fn read_code(dir: &Path) -> Result<Vec<CodeFile>, SpecError> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((current, prefix)) = stack.pop() {
        for entry in sorted_entries(&current)? {
            let name = entry.file_name().to_string_lossy().to_string();
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if skipped(&name) || rel == FUNCTION_FILE || rel == TEMPLATES_DIR {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                stack.push((path, rel));
            } else if path.is_file() {
                let bytes = fs::read(&path).map_err(|source| SpecError::Io {
                    path: path.clone(),
                    source,
                })?;
                out.push(CodeFile { path: rel, bytes });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Template files under `dir`, keyed by their path relative to it.
pub fn read_templates(dir: &Path) -> Result<BTreeMap<String, String>, SpecError> {
    let mut out = BTreeMap::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for file in read_code(dir)? {
        let text = String::from_utf8(file.bytes).map_err(|_| SpecError::NotText {
            path: dir.join(&file.path),
        })?;
        out.insert(file.path, text);
    }
    Ok(out)
}

/// Decodes and cross-checks what `load` read. Pure: no IO.
fn check(
    root: &Path,
    project_source: Option<SourceFile>,
    raw: Vec<RawFunction>,
    templates: BTreeMap<String, String>,
) -> (Option<Repo>, Diagnostics) {
    let mut diags = Diagnostics::default();
    let project = project_source.and_then(|source| {
        parse_document(&source)
            .map_err(|d| Diagnostics(vec![*d]))
            .and_then(|node| project::decode(&source, &node))
            .map_err(|d| diags.extend(d))
            .ok()
    });
    let mut functions = Vec::new();
    for f in raw {
        let decoded = parse_document(&f.source)
            .map_err(|d| Diagnostics(vec![*d]))
            .and_then(|node| function::decode(&f.source, &node));
        match decoded {
            Ok(spec) => {
                check_function(&f, &spec, &mut diags);
                functions.push(Function {
                    rel_dir: Path::new(FUNCTIONS_DIR).join(&f.dir_name),
                    spec,
                    files: f.files,
                    templates: f.templates,
                    source: f.source,
                });
            }
            Err(d) => diags.extend(d),
        }
    }
    check_routes(&functions, &mut diags);
    if let Some(p) = &project {
        check_queues(p, &functions, &mut diags);
        if p.target == crate::spec::Target::Kubernetes {
            check_for_cluster(&functions, &mut diags);
        }
    }
    functions.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    let repo = project.map(|project| Repo {
        root: root.to_path_buf(),
        project,
        functions,
        templates,
    });
    (repo, diags)
}

fn check_function(raw: &RawFunction, spec: &FunctionSpec, diags: &mut Diagnostics) {
    let at = |loc, key: &str, msg: String| Diagnostic::new(&raw.source, loc, key, msg);
    if spec.name != raw.dir_name {
        diags.push(
            at(
                spec.locs.name,
                "name",
                format!(
                    "the function is named {:?} but its folder is functions/{}",
                    spec.name, raw.dir_name
                ),
            )
            .with_hint(format!(
                "rename the folder to functions/{}, or set `name: {}`",
                spec.name, raw.dir_name
            )),
        );
    }
    let has = |path: &str| raw.files.iter().any(|f| f.path == path);
    if spec.runtime == Runtime::Node && has("package.json") && !has("package-lock.json") {
        diags.push(
            Diagnostic::whole_file(
                &Path::new(FUNCTIONS_DIR).join(&raw.dir_name).join("package.json"),
                "a package.json without its package-lock.json: dependencies are installed with `npm ci`, which installs exactly what the lock file says, and there is none",
            )
            .with_hint(format!(
                "run `npm install --package-lock-only` in functions/{} and commit package-lock.json",
                raw.dir_name
            )),
        );
    }
    if let Some((file, _)) = spec.handler_file() {
        if !has(file) {
            diags.push(
                at(
                    spec.locs.handler,
                    "handler",
                    format!(
                        "the handler file {file} does not exist in functions/{}",
                        raw.dir_name
                    ),
                )
                .with_hint(format!(
                    "create functions/{}/{file}, or point `handler` at an existing file",
                    raw.dir_name
                )),
            );
        }
    }
    if spec.runtime == Runtime::Exec {
        let program = spec
            .handler
            .as_deref()
            .and_then(|h| h.split_whitespace().next());
        if let Some(local) = program.and_then(|p| p.strip_prefix("./")) {
            if !has(local) {
                diags.push(
                    at(
                        spec.locs.handler,
                        "handler",
                        format!(
                            "the program ./{local} does not exist in functions/{}",
                            raw.dir_name
                        ),
                    )
                    .with_hint("add the program to the function's folder, or fix the command line"),
                );
            }
        }
    }
}

/// What a cluster cannot run: a schedule with seconds (a CronJob fires once a minute at
/// most).
fn check_for_cluster(functions: &[Function], diags: &mut Diagnostics) {
    for f in functions {
        let declared = match f.spec.runtime {
            Runtime::Python => Some("requirements.txt"),
            Runtime::Node => Some("package-lock.json"),
            _ => None,
        }
        .filter(|file| f.files.iter().any(|c| c.path == *file));
        if let Some(file) = declared {
            diags.push(
                Diagnostic::whole_file(
                    &f.rel_dir.join(file),
                    format!("{} declares dependencies, and on Kubernetes they need an image with them installed, which cubeflash does not build yet (its code ships in a ConfigMap on the stock runtime image, where the imports would fail)", f.spec.name),
                )
                .with_hint("deploy it on the local platform (`--target local`), or give it `runtime: image` with an image you build that holds the dependencies"),
            );
        }
        for (s, (index, loc)) in f.spec.schedule_triggers().zip(&f.spec.locs.schedules) {
            if values::cron_has_seconds(&s.cron) {
                diags.push(
                    Diagnostic::new(
                        &f.source,
                        *loc,
                        &format!("triggers[{index}].schedule.cron"),
                        format!("{:?} has a seconds field, and a Kubernetes CronJob fires at most once a minute", s.cron),
                    )
                    .with_hint("write five fields (minute first) for the Kubernetes target; seconds work on the local platform only"),
                );
            }
        }
    }
}

/// The Kubernetes target's own checks, for a deploy there when cubeflash.yaml names
/// another target.
pub fn check_cluster(repo: &Repo) -> Result<(), SpecError> {
    let mut diags = Diagnostics::default();
    check_for_cluster(&repo.functions, &mut diags);
    if diags.is_empty() {
        Ok(())
    } else {
        Err(SpecError::Invalid(diags))
    }
}

/// Queue triggers need a NATS server, and one durable consumer belongs to one trigger; in a
/// cluster, so do async calls.
fn check_queues(project: &ProjectSpec, functions: &[Function], diags: &mut Diagnostics) {
    let mut durables: Vec<(&str, &str, &str)> = Vec::new();
    for f in functions {
        if let (Some(loc), None, crate::spec::Target::Kubernetes) =
            (f.spec.locs.async_policy, &project.nats, project.target)
        {
            diags.push(
                Diagnostic::new(
                    &f.source,
                    loc,
                    "async",
                    "in a cluster async calls are stored in NATS JetStream (a gateway pod's disk is not a durable queue), and cubeflash.yaml names no NATS server",
                )
                .with_hint("add `nats: { url: nats://nats.<namespace>.svc:4222 }` to cubeflash.yaml (the README's \"Async calls in a cluster\" has a minimal NATS manifest)"),
            );
        }
        let queues = f.spec.triggers.iter().filter_map(|t| match t {
            crate::spec::Trigger::Queue(q) => Some(q),
            _ => None,
        });
        for (q, (index, loc)) in queues.zip(&f.spec.locs.queues) {
            let at = |msg: String| {
                Diagnostic::new(&f.source, *loc, &format!("triggers[{index}].queue"), msg)
            };
            if project.nats.is_none() {
                diags.push(
                    at(format!("a queue trigger (subject {:?}) needs a NATS server with JetStream, and cubeflash.yaml names none", q.subject))
                        .with_hint("add `nats: { url: nats://127.0.0.1:4222 }` to cubeflash.yaml (run one with `nats-server -js`)"),
                );
            }
            if let Some((other, _, _)) = durables
                .iter()
                .find(|(_, s, d)| *s == q.stream && *d == q.durable)
            {
                diags.push(
                    at(format!(
                        "stream {} and durable {} are already the queue trigger of {other}",
                        q.stream, q.durable
                    ))
                    .with_hint("give one of them another `durable:`"),
                );
            }
            durables.push((&f.spec.name, &q.stream, &q.durable));
        }
    }
}

/// One path and method may be claimed by one function only.
fn check_routes(functions: &[Function], diags: &mut Diagnostics) {
    struct Claim<'a> {
        function: &'a str,
        path: &'a str,
        methods: &'a [String],
    }
    let mut claims: Vec<Claim> = Vec::new();
    let mut ordered: Vec<&Function> = functions.iter().collect();
    ordered.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    for f in ordered {
        for (i, http) in f.spec.http_triggers().enumerate() {
            let overlap = |other: &[String]| {
                other.is_empty()
                    || http.methods.is_empty()
                    || other.iter().any(|m| http.methods.contains(m))
            };
            if let Some(c) = claims
                .iter()
                .find(|c| c.path == http.path && overlap(c.methods))
            {
                let (index, loc) = f.spec.locs.http_paths.get(i).copied().unwrap_or_default();
                let d = Diagnostic::new(
                    &f.source,
                    loc,
                    &format!("triggers[{index}].http.path"),
                    format!(
                        "{} {} is already routed to function {}",
                        if http.methods.is_empty() {
                            "ANY".to_string()
                        } else {
                            http.methods.join(",")
                        },
                        http.path,
                        c.function
                    ),
                )
                .with_hint(
                    "give one of the two triggers another path, or split the methods between them",
                );
                diags.push(d);
            }
            claims.push(Claim {
                function: &f.spec.name,
                path: &http.path,
                methods: &http.methods,
            });
        }
    }
}
