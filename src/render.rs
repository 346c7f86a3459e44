//! Templates -> manifests: builds typed contexts from a validated repo, renders every
//! template through Tera, checks each object against the Kubernetes API types and
//! cubeflash's secure defaults, and returns the whole tree in memory. Writing it out (and
//! `--check` diffing) lives in `output`. No IO here.

pub mod check;
pub mod context;
pub mod filters;
pub mod output;
pub mod templates;

use std::collections::BTreeMap;
use std::fmt;

use tera::Tera;

use crate::spec::{Function, Repo};
use context::{labels_for, FunctionContext, ObjectContext, ProjectContext, GATEWAY_NAME};

pub use check::ObjectInfo;
pub use output::{diff, write_atomically, FileDiff, WriteSummary};

/// The folder under the repo root that holds rendered manifests.
pub const GENERATED_DIR: &str = "generated";

/// Why rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template does not parse.
    #[error("template {name} does not parse: {detail}")]
    TemplateSyntax { name: String, detail: String },
    /// A template failed while rendering.
    #[error("failed to render {output} from template {template}: {detail}")]
    Template {
        template: String,
        output: String,
        detail: String,
    },
    /// A rendered object failed the Kubernetes type or policy checks.
    #[error("generated/{output} (from template {template}) {problem}")]
    Object {
        template: String,
        output: String,
        problem: String,
    },
    /// A code file's path cannot be a ConfigMap key.
    #[error("function {function}: the file {path:?} cannot be shipped in a ConfigMap (names may use letters, digits, '-', '_' and '.', and must be unique once '/' becomes '__')")]
    BadFileName { function: String, path: String },
    /// The code does not fit in a ConfigMap.
    #[error("function {function}: its code is {bytes} bytes, more than a ConfigMap holds (1 MB); ship it in an image with `runtime: image`, or leave large files out of the function's folder")]
    CodeTooLarge { function: String, bytes: usize },
    /// Several of the above.
    #[error("{}", Many(.0))]
    Many(Vec<RenderError>),
}

struct Many<'a>(&'a [RenderError]);

impl fmt::Display for Many<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in self.0 {
            writeln!(f, "error: {e}")?;
        }
        write!(f, "{} problems found; nothing was written", self.0.len())
    }
}

/// A rendered object, ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub text: String,
    pub info: ObjectInfo,
}

/// Every file under generated/, keyed by its path relative to it (`random-quote/service.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub files: BTreeMap<String, RenderedFile>,
}

/// The whole error chain of a Tera error, which keeps the useful part in its sources.
fn chain(err: &tera::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

fn engine(sources: &BTreeMap<String, String>) -> Result<Tera, RenderError> {
    let mut tera = Tera::default();
    tera.autoescape_on(vec![]);
    tera.register_filter("yaml_str", filters::yaml_str);
    let manifests = sources
        .iter()
        .filter(|(k, _)| templates::MANIFEST_DIRS.iter().any(|d| k.starts_with(d)));
    tera.add_raw_templates(manifests.map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| {
            let name = match &e.kind {
                tera::ErrorKind::Msg(m) => m.split('\'').nth(1).unwrap_or("?").to_string(),
                _ => "?".into(),
            };
            RenderError::TemplateSyntax {
                name,
                detail: chain(&e),
            }
        })?;
    Ok(tera)
}

/// One object to render: which template, where it goes, and its own context.
struct Job {
    template: String,
    output: String,
    object: ObjectContext,
}

/// Renders the whole repo in memory; every problem in every object is reported together.
/// Functions are rendered in parallel (each is independent), results merged in name order.
pub fn render(repo: &Repo) -> Result<Rendered, RenderError> {
    let sources = templates::layered(&templates::builtin_map(), &repo.templates);
    let base = engine(&sources)?;
    let project = ProjectContext::new(&repo.project);

    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let chunk = repo.functions.len().div_ceil(threads).max(1);
    let parts: Vec<(Vec<FunctionContext>, Rendered, Vec<RenderError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = repo
            .functions
            .chunks(chunk)
            .map(|group| {
                let (base, sources, project) = (&base, &sources, &project);
                s.spawn(move || render_functions(group, &repo.project, base, sources, project))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("render threads do not panic"))
            .collect()
    });

    let mut out = Rendered::default();
    let mut errors = Vec::new();
    let mut contexts = Vec::new();
    for (ctxs, rendered, errs) in parts {
        contexts.extend(ctxs);
        out.files.extend(rendered.files);
        errors.extend(errs);
    }

    let routes =
        crate::gateway::table::RouteTable::new(&repo.project.namespace, &repo.functions).to_json();
    let mut context = tera::Context::new();
    context.insert("project", &project);
    context.insert("routesJson", &routes);
    let (labels, selector) = labels_for(GATEWAY_NAME, "gateway", None);
    let jobs = base
        .get_template_names()
        .filter(|n| n.starts_with("gateway/") && templates::is_manifest(n))
        .map(|n| Job {
            template: n.to_string(),
            output: n.to_string(),
            object: ObjectContext {
                workload: None,
                trigger: None,
                labels: labels.clone(),
                selector: selector.clone(),
            },
        })
        .collect();
    run(
        &base,
        context,
        "cubeflash.yaml",
        sorted(jobs),
        &repo.project.namespace,
        &mut out,
        &mut errors,
    );

    match errors.len() {
        0 => Ok(out),
        1 => Err(errors.pop().expect("one error")),
        _ => Err(RenderError::Many(errors)),
    }
}

/// Renders one group of functions with the shared engine, or their own where they override
/// templates.
fn render_functions(
    group: &[Function],
    spec: &crate::spec::ProjectSpec,
    base: &Tera,
    sources: &BTreeMap<String, String>,
    project: &ProjectContext,
) -> (Vec<FunctionContext>, Rendered, Vec<RenderError>) {
    let mut out = Rendered::default();
    let mut errors = Vec::new();
    let mut contexts = Vec::new();
    for f in group {
        let ctx = match FunctionContext::new(spec, f) {
            Ok(c) => c,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let own;
        let tera = if f.templates.is_empty() {
            base
        } else {
            match engine(&templates::layered(sources, &f.templates)) {
                Ok(t) => {
                    own = t;
                    &own
                }
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            }
        };
        let mut context = tera::Context::new();
        context.insert("project", project);
        context.insert("function", &ctx);
        let jobs = function_jobs(tera, &ctx);
        run(
            tera,
            context,
            &ctx.source,
            jobs,
            &spec.namespace,
            &mut out,
            &mut errors,
        );
        contexts.push(ctx);
    }
    (contexts, out, errors)
}

fn sorted(mut jobs: Vec<Job>) -> Vec<Job> {
    jobs.sort_by(|a, b| a.output.cmp(&b.output));
    jobs
}

fn function_jobs(tera: &Tera, f: &FunctionContext) -> Vec<Job> {
    let mut jobs = Vec::new();
    for name in tera
        .get_template_names()
        .filter(|n| n.starts_with("function/") && templates::is_manifest(n))
    {
        let file = name.trim_start_matches("function/");
        let baseline = file.starts_with("baseline-");
        if baseline && f.baseline.is_none() {
            continue;
        }
        let workload = f.workload(baseline);
        let (labels, selector) = labels_for(&f.name, workload.component, Some(&f.name));
        jobs.push(Job {
            template: name.to_string(),
            output: format!("{}/{file}", f.name),
            object: ObjectContext {
                workload: Some(workload),
                trigger: None,
                labels,
                selector,
            },
        });
    }
    // A schedule with seconds runs on the local platform only (the Kubernetes target
    // refuses it): it has no CronJob.
    for schedule in f
        .schedules()
        .into_iter()
        .filter(|s| !crate::spec::values::cron_has_seconds(&s.cron))
    {
        let (labels, selector) = labels_for(&f.name, "schedule", Some(&f.name));
        jobs.push(Job {
            template: "triggers/schedule.yaml".into(),
            output: format!("{}/schedule-{}.yaml", f.name, schedule.index),
            object: ObjectContext {
                workload: None,
                trigger: Some(schedule),
                labels,
                selector,
            },
        });
    }
    sorted(jobs)
}

/// Renders and checks `jobs` with `context` (the shared part) plus each job's own part.
fn run(
    tera: &Tera,
    mut context: tera::Context,
    source: &str,
    jobs: Vec<Job>,
    namespace: &str,
    out: &mut Rendered,
    errors: &mut Vec<RenderError>,
) {
    for job in jobs {
        context.insert("workload", &job.object.workload);
        context.insert("trigger", &job.object.trigger);
        context.insert("labels", &job.object.labels);
        context.insert("selector", &job.object.selector);
        let body = match tera.render(&job.template, &context) {
            Ok(text) => text,
            Err(e) => {
                errors.push(RenderError::Template {
                    template: job.template,
                    output: job.output,
                    detail: chain(&e),
                });
                continue;
            }
        };
        // One trailing newline: safe, since yaml_str never writes a block that keeps more.
        let body = format!("{}\n", body.trim_start_matches('\n').trim_end());
        match check::check_manifest(&body, namespace) {
            Ok(None) => {}
            Ok(Some(info)) => {
                let text = format!(
                    "# Generated by `cubeflash render` from {source} with template {}. Do not edit: change those and render again.\n{body}",
                    job.template,
                );
                out.files.insert(job.output, RenderedFile { text, info });
            }
            Err(problems) => {
                errors.extend(problems.into_iter().map(|problem| RenderError::Object {
                    template: job.template.clone(),
                    output: job.output.clone(),
                    problem,
                }));
            }
        }
    }
}
