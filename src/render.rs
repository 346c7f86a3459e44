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
use context::{
    labels_for, route_table, FunctionContext, ProjectContext, TemplateContext, GATEWAY_NAME,
};

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

struct Job<'a> {
    template: String,
    output: String,
    context: TemplateContext<'a>,
}

/// Renders the whole repo in memory; every problem in every object is reported together.
pub fn render(repo: &Repo) -> Result<Rendered, RenderError> {
    let sources = templates::layered(&templates::builtin_map(), &repo.templates);
    let base = engine(&sources)?;
    let project = ProjectContext::new(&repo.project);
    let mut errors = Vec::new();
    let mut out = Rendered::default();

    let functions: Vec<(&Function, FunctionContext)> = repo
        .functions
        .iter()
        .filter_map(|f| {
            FunctionContext::new(&repo.project, f)
                .map(|c| (f, c))
                .map_err(|e| errors.push(e))
                .ok()
        })
        .collect();

    for (f, ctx) in &functions {
        let own;
        let tera = if f.templates.is_empty() {
            &base
        } else {
            match engine(&templates::layered(&sources, &f.templates)) {
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
        let jobs = function_jobs(tera, &project, ctx);
        run(tera, jobs, &repo.project.namespace, &mut out, &mut errors);
    }

    let contexts: Vec<FunctionContext> = functions.into_iter().map(|(_, c)| c).collect();
    let routes = route_table(&repo.project, &contexts);
    let (labels, selector) = labels_for(GATEWAY_NAME, "gateway", None);
    let jobs = base
        .get_template_names()
        .filter(|n| n.starts_with("gateway/") && templates::is_manifest(n))
        .map(|n| Job {
            template: n.to_string(),
            output: n.to_string(),
            context: TemplateContext {
                project: &project,
                function: None,
                workload: None,
                trigger: None,
                labels: labels.clone(),
                selector: selector.clone(),
                routes_json: Some(&routes),
            },
        })
        .collect();
    run(
        &base,
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

fn sorted(mut jobs: Vec<Job>) -> Vec<Job> {
    jobs.sort_by(|a, b| a.output.cmp(&b.output));
    jobs
}

fn function_jobs<'a>(
    tera: &Tera,
    project: &'a ProjectContext,
    f: &'a FunctionContext,
) -> Vec<Job<'a>> {
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
            context: TemplateContext {
                project,
                function: Some(f),
                workload: Some(workload),
                trigger: None,
                labels,
                selector,
                routes_json: None,
            },
        });
    }
    for schedule in f.schedules() {
        let (labels, selector) = labels_for(&f.name, "schedule", Some(&f.name));
        jobs.push(Job {
            template: "triggers/schedule.yaml".into(),
            output: format!("{}/schedule-{}.yaml", f.name, schedule.index),
            context: TemplateContext {
                project,
                function: Some(f),
                workload: None,
                trigger: Some(schedule),
                labels,
                selector,
                routes_json: None,
            },
        });
    }
    sorted(jobs)
}

fn run(
    tera: &Tera,
    jobs: Vec<Job>,
    namespace: &str,
    out: &mut Rendered,
    errors: &mut Vec<RenderError>,
) {
    for job in jobs {
        let context = match tera::Context::from_serialize(&job.context) {
            Ok(c) => c,
            Err(e) => {
                errors.push(RenderError::Template {
                    template: job.template,
                    output: job.output,
                    detail: chain(&e),
                });
                continue;
            }
        };
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
                let source = job
                    .context
                    .function
                    .map(|f| f.source.as_str())
                    .unwrap_or("cubeflash.yaml");
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
