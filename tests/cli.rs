//! The cubeflash binary run in temporary repos: validation errors, render, --check,
//! template overrides, new and init.

mod common;

use std::fs;
use std::path::Path;

use common::{cubeflash, snapshot, temp_tree, text};

const PROJECT: &str = "namespace: demo\n";
const HANDLER: &str = "def handle(req):\n    return 'hi'\n";

fn function_yaml(name: &str, extra: &str) -> String {
    format!("name: {name}\nruntime: python\nhandler: handler.py\n{extra}")
}

/// A repo with one python function per (name, extra function.yaml lines).
fn repo(functions: &[(&str, &str)]) -> tempfile::TempDir {
    let mut files: Vec<(String, String)> = vec![("cubeflash.yaml".into(), PROJECT.into())];
    for (name, extra) in functions {
        files.push((
            format!("functions/{name}/function.yaml"),
            function_yaml(name, extra),
        ));
        files.push((format!("functions/{name}/handler.py"), HANDLER.into()));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    temp_tree(&refs)
}

fn render_ok(dir: &Path) {
    let out = cubeflash(dir, &["render"]);
    assert!(out.status.success(), "render failed: {}", text(&out.stderr));
}

/// Renders a repo with `function.yaml` as the one function's spec and returns stderr,
/// after checking it failed with exit code 2 and left generated/ untouched.
fn invalid(yaml: &str) -> String {
    let dir = repo(&[("ok", "")]);
    render_ok(dir.path());
    fs::create_dir_all(dir.path().join("functions/bad")).unwrap();
    fs::write(dir.path().join("functions/bad/function.yaml"), yaml).unwrap();
    fs::write(dir.path().join("functions/bad/handler.py"), HANDLER).unwrap();
    let before = snapshot(&dir.path().join("generated"));
    let out = cubeflash(dir.path(), &["render"]);
    assert_eq!(out.status.code(), Some(2), "stdout: {}", text(&out.stdout));
    assert_eq!(
        snapshot(&dir.path().join("generated")),
        before,
        "generated/ changed after a failed render"
    );
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn assert_has(stderr: &str, needles: &[&str]) {
    for n in needles {
        assert!(stderr.contains(n), "expected {n:?} in:\n{stderr}");
    }
}

#[test]
fn every_problem_in_a_file_is_reported_at_once_with_its_location() {
    let stderr = invalid(
        "name: bad\nruntime: python\nhandler: handler.py\nscale:\n  min: 5\n  max: 2\n  idel: 10s\ntimeout: 30\nresources: { memory: 128MB }\n",
    );
    assert_has(
        &stderr,
        &[
            "functions/bad/function.yaml:5:8: scale.min: min (5) is greater than max (2)",
            "functions/bad/function.yaml:7:3: scale.idel: unknown key `idel`",
            "did you mean `idle`?",
            "functions/bad/function.yaml:8:10: timeout: \"30\" is not a duration",
            "functions/bad/function.yaml:9:22: resources.memory: \"128MB\" is not a Kubernetes quantity (did you mean 128Mi?)",
            "4 problems found; nothing was rendered or deployed",
        ],
    );
    // The offending line is quoted with carets under the value.
    assert!(stderr.contains("7 |   idel: 10s\n  |   ^^^^"), "{stderr}");
}

#[test]
fn yaml_syntax_error() {
    let stderr = invalid("name: bad\nruntime: [python\n");
    assert_has(&stderr, &["functions/bad/function.yaml:", "invalid YAML"]);
}

#[test]
fn wrong_types() {
    let stderr = invalid("name: bad\nruntime: python\nhandler: handler.py\nscale:\n  max: \"3\"\ntriggers: {http: {path: /x}}\nenv: [A]\n");
    assert_has(
        &stderr,
        &[
            "5:8: scale.max: expected a whole number from 1 to 1000, found the string \"3\"",
            "6:11: triggers: expected a list, found a mapping",
            "7:6: env: expected a mapping, found a list",
        ],
    );
}

#[test]
fn names_must_be_dns_labels_and_match_their_folder() {
    let stderr = invalid("name: Bad_Name\nruntime: python\nhandler: handler.py\n");
    assert_has(
        &stderr,
        &[
            "1:7: name: \"Bad_Name\" is not a DNS-1123 label",
            "rename it, e.g. `name: bad-name`",
        ],
    );
    let stderr = invalid("name: other\nruntime: python\nhandler: handler.py\n");
    assert_has(
        &stderr,
        &["1:7: name: the function is named \"other\" but its folder is functions/bad"],
    );
}

#[test]
fn unsupported_runtime() {
    let stderr = invalid("name: bad\nruntime: go\nhandler: main.go\n");
    assert_has(
        &stderr,
        &[
            "2:10: runtime: unsupported runtime \"go\"",
            "use one of python, node, exec, image",
        ],
    );
}

#[test]
fn bad_durations_and_quantities() {
    let stderr = invalid("name: bad\nruntime: python\nhandler: handler.py\nscale: { coldStartTimeout: 5min }\nresources: { cpu: lots }\n");
    assert_has(
        &stderr,
        &[
            "4:28: scale.coldStartTimeout: \"5min\" is not a duration",
            "5:19: resources.cpu: \"lots\" is not a Kubernetes quantity",
        ],
    );
}

#[test]
fn invalid_cron() {
    let stderr = invalid("name: bad\nruntime: python\nhandler: handler.py\ntriggers:\n  - schedule: { cron: \"0 0 */5 * * * *\" }\n");
    assert_has(&stderr, &["5:23: triggers[0].schedule.cron: \"0 0 */5 * * * *\" has 7 fields, a schedule has 5 (6 with seconds)"]);
}

#[test]
fn http_paths_must_start_with_a_slash() {
    let stderr = invalid(
        "name: bad\nruntime: python\nhandler: handler.py\ntriggers:\n  - http: { path: quote }\n",
    );
    assert_has(&stderr, &["5:19: triggers[0].http.path: \"quote\" does not start with \"/\": write it as \"/quote\""]);
}

#[test]
fn a_path_and_method_claimed_by_two_functions() {
    let dir = repo(&[
        ("alpha", "triggers:\n  - http: { path: /shared, methods: [GET] }\n"),
        ("beta", "triggers:\n  - http: { path: /other }\n  - http: { path: /shared, methods: [POST, GET] }\n"),
        ("gamma", "triggers:\n  - http: { path: /shared, methods: [PUT] }\n"),
    ]);
    let out = cubeflash(dir.path(), &["render"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert_has(&stderr, &["functions/beta/function.yaml:6:19: triggers[1].http.path: POST,GET /shared is already routed to function alpha", "1 problem found"]);
    assert!(!dir.path().join("generated").exists());
}

#[test]
fn handler_files_must_exist() {
    let stderr = invalid("name: bad\nruntime: python\nhandler: missing.py\n");
    assert_has(
        &stderr,
        &["3:10: handler: the handler file missing.py does not exist in functions/bad"],
    );
    let stderr = invalid("name: bad\nruntime: node\nhandler: handler.py\n");
    assert_has(
        &stderr,
        &["3:10: handler: \"handler.py\" is not a node handler"],
    );
}

#[test]
fn an_empty_file() {
    let stderr = invalid("# nothing yet\n");
    assert_has(
        &stderr,
        &["error: functions/bad/function.yaml: the file is empty"],
    );
}

#[test]
fn missing_required_keys_and_bad_project_file() {
    let stderr = invalid("runtime: python\n");
    assert_has(
        &stderr,
        &[
            "name: missing required key `name`",
            "handler: missing required key `handler`",
        ],
    );
    let dir = repo(&[("ok", "")]);
    fs::write(
        dir.path().join("cubeflash.yaml"),
        "namespace: default\ntarget: cloud\nimages: { python: python }\n",
    )
    .unwrap();
    let out = cubeflash(dir.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert_has(
        &text(&out.stderr),
        &[
            "cubeflash.yaml:1:12: namespace: the `default` namespace is not used",
            "cubeflash.yaml:2:9: target: unknown target \"cloud\"",
            "images.python: \"python\" has no tag",
        ],
    );
}

#[test]
fn render_writes_one_object_per_file_with_a_header_and_is_reproducible() {
    let dir = repo(&[(
        "quote",
        "baseline: { replicas: 2 }\ntriggers:\n  - schedule: { cron: \"@hourly\" }\n",
    )]);
    render_ok(dir.path());
    let first = snapshot(&dir.path().join("generated"));
    let names: Vec<String> = first
        .iter()
        .map(|(p, _)| p.strip_prefix(dir.path()).unwrap().display().to_string())
        .collect();
    for expected in [
        "generated/quote/configmap.yaml",
        "generated/quote/deployment.yaml",
        "generated/quote/service.yaml",
        "generated/quote/baseline-deployment.yaml",
        "generated/quote/baseline-service.yaml",
        "generated/quote/schedule-1.yaml",
        "generated/gateway/namespace.yaml",
        "generated/gateway/role.yaml",
        "generated/gateway/routes-configmap.yaml",
    ] {
        assert!(
            names.contains(&expected.to_string()),
            "{expected} not in {names:?}"
        );
    }
    for (path, bytes) in &first {
        let t = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            t.starts_with("# Generated by `cubeflash render` from "),
            "{}",
            path.display()
        );
        assert_eq!(t.matches("\napiVersion:").count(), 1, "{}", path.display());
    }
    let baseline =
        fs::read_to_string(dir.path().join("generated/quote/baseline-deployment.yaml")).unwrap();
    assert!(baseline.contains("  replicas: 2\n") && baseline.contains("name: quote-baseline"));
    // Same input, same bytes: again in place, and in another folder.
    render_ok(dir.path());
    assert_eq!(snapshot(&dir.path().join("generated")), first);
    let other = repo(&[(
        "quote",
        "baseline: { replicas: 2 }\ntriggers:\n  - schedule: { cron: \"@hourly\" }\n",
    )]);
    render_ok(other.path());
    let strip = |s: Vec<(std::path::PathBuf, Vec<u8>)>,
                 root: &Path|
     -> Vec<(std::path::PathBuf, Vec<u8>)> {
        s.into_iter()
            .map(|(p, b)| (p.strip_prefix(root).unwrap().to_path_buf(), b))
            .collect()
    };
    assert_eq!(
        strip(snapshot(&other.path().join("generated")), other.path()),
        strip(first, dir.path())
    );
}

#[test]
fn render_removes_the_files_of_removed_functions() {
    let dir = repo(&[("one", ""), ("two", "")]);
    render_ok(dir.path());
    assert!(dir.path().join("generated/two/deployment.yaml").exists());
    fs::remove_dir_all(dir.path().join("functions/two")).unwrap();
    let out = cubeflash(dir.path(), &["render"]);
    assert!(
        text(&out.stdout).contains("removed"),
        "{}",
        text(&out.stdout)
    );
    assert!(!dir.path().join("generated/two").exists());
    assert!(dir.path().join("generated/one/deployment.yaml").exists());
    assert!(!fs::read_dir(dir.path()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".generated")));
}

#[test]
fn check_fails_with_a_unified_diff_when_generated_is_stale() {
    let dir = repo(&[("one", "")]);
    render_ok(dir.path());
    let out = cubeflash(dir.path(), &["render", "--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let svc = dir.path().join("generated/one/service.yaml");
    fs::write(
        &svc,
        fs::read_to_string(&svc)
            .unwrap()
            .replace("type: ClusterIP", "type: NodePort"),
    )
    .unwrap();
    fs::write(dir.path().join("generated/stray.yaml"), "x: 1\n").unwrap();
    let before = snapshot(&dir.path().join("generated"));
    let out = cubeflash(dir.path(), &["render", "--check"]);
    assert_eq!(out.status.code(), Some(1));
    let diff = text(&out.stdout);
    assert_has(
        &diff,
        &[
            "--- a/generated/one/service.yaml",
            "+++ b/generated/one/service.yaml",
            "-  type: NodePort",
            "+  type: ClusterIP",
            "--- a/generated/stray.yaml",
            "+++ /dev/null",
        ],
    );
    assert_has(
        &text(&out.stderr),
        &[
            "generated/ is out of date: 2 files differ",
            "run `cubeflash render`",
        ],
    );
    assert_eq!(
        snapshot(&dir.path().join("generated")),
        before,
        "--check must not write"
    );
}

#[test]
fn validate_writes_nothing() {
    let dir = repo(&[("one", "")]);
    let out = cubeflash(dir.path(), &["validate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_has(
        &text(&out.stdout),
        &["ok: 1 function (one)", "namespace demo"],
    );
    assert!(!dir.path().join("generated").exists());
}

#[test]
fn repo_and_function_templates_override_the_built_ins() {
    let dir = repo(&[("one", ""), ("two", "")]);
    let service = common::repo_root().join("templates/function/_service.yaml");
    let builtin = fs::read_to_string(service).unwrap();
    let repo_version = builtin.replace("type: ClusterIP", "type: NodePort");
    let fn_version = builtin.replace("type: ClusterIP", "type: LoadBalancer");
    fs::create_dir_all(dir.path().join("templates/function")).unwrap();
    fs::write(
        dir.path().join("templates/function/_service.yaml"),
        repo_version,
    )
    .unwrap();
    fs::create_dir_all(dir.path().join("functions/two/templates/function")).unwrap();
    fs::write(
        dir.path()
            .join("functions/two/templates/function/_service.yaml"),
        fn_version,
    )
    .unwrap();
    // An extra template adds an object for every function.
    fs::write(
        dir.path().join("templates/function/pdb.yaml"),
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: {{ function.name }}\n  namespace: {{ project.namespace }}\nspec:\n  maxUnavailable: 1\n  selector:\n    matchLabels:\n      cubeflash.io/function: {{ function.name }}\n",
    )
    .unwrap();
    render_ok(dir.path());
    let read = |p: &str| fs::read_to_string(dir.path().join("generated").join(p)).unwrap();
    assert!(read("one/service.yaml").contains("type: NodePort"));
    assert!(read("two/service.yaml").contains("type: LoadBalancer"));
    assert!(read("one/pdb.yaml").contains("kind: PodDisruptionBudget"));
    // The override is not shipped as function code.
    assert!(!read("two/configmap.yaml").contains("LoadBalancer"));
}

#[test]
fn a_template_typo_names_the_file_and_field_and_writes_nothing() {
    let dir = repo(&[("one", "")]);
    render_ok(dir.path());
    let before = snapshot(&dir.path().join("generated"));
    let builtin =
        fs::read_to_string(common::repo_root().join("templates/function/_service.yaml")).unwrap();
    fs::create_dir_all(dir.path().join("templates/function")).unwrap();
    fs::write(
        dir.path().join("templates/function/_service.yaml"),
        builtin.replace("targetPort:", "targetPrt:"),
    )
    .unwrap();
    let out = cubeflash(dir.path(), &["render"]);
    assert_eq!(out.status.code(), Some(2));
    assert_has(&text(&out.stderr), &["generated/one/service.yaml (from template function/service.yaml) spec.ports[0].targetPrt is not a field of Service (v1)"]);
    assert_eq!(snapshot(&dir.path().join("generated")), before);

    // A template that drops a secure default is refused too.
    let deployment =
        fs::read_to_string(common::repo_root().join("templates/function/_deployment.yaml"))
            .unwrap();
    fs::write(dir.path().join("templates/function/_service.yaml"), builtin).unwrap();
    fs::write(
        dir.path().join("templates/function/_deployment.yaml"),
        deployment.replace(
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: false",
        ),
    )
    .unwrap();
    let out = cubeflash(dir.path(), &["render"]);
    assert_eq!(out.status.code(), Some(2));
    assert_has(&text(&out.stderr), &["generated/one/deployment.yaml (from template function/deployment.yaml) spec.template.spec.containers[function]: set securityContext.readOnlyRootFilesystem: true"]);
    assert_eq!(snapshot(&dir.path().join("generated")), before);
}

#[test]
fn a_template_syntax_error_is_reported() {
    let dir = repo(&[("one", "")]);
    fs::create_dir_all(dir.path().join("templates/function")).unwrap();
    fs::write(
        dir.path().join("templates/function/service.yaml"),
        "{% if %}\n",
    )
    .unwrap();
    let out = cubeflash(dir.path(), &["render"]);
    assert_eq!(out.status.code(), Some(2));
    assert_has(&text(&out.stderr), &["function/service.yaml"]);
}

#[test]
fn not_a_repo() {
    let dir = tempfile::tempdir().unwrap();
    let out = cubeflash(dir.path(), &["render"]);
    assert_eq!(out.status.code(), Some(2));
    assert_has(
        &text(&out.stderr),
        &["no cubeflash.yaml in", "cubeflash init"],
    );
}

#[test]
fn init_then_new_gives_a_repo_that_renders_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let out = cubeflash(dir.path(), &["init", "--namespace", "team-a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in [
        "cubeflash.yaml",
        "Makefile",
        ".gitignore",
        "generated/gateway/namespace.yaml",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    assert!(
        fs::read_to_string(dir.path().join("generated/gateway/namespace.yaml"))
            .unwrap()
            .contains("name: team-a")
    );
    let again = cubeflash(dir.path(), &["init"]);
    assert_eq!(again.status.code(), Some(2));
    assert_has(&text(&again.stderr), &["cubeflash.yaml already exists"]);

    for (name, runtime) in [("py-fn", "python"), ("js-fn", "node"), ("sh-fn", "exec")] {
        let out = cubeflash(dir.path(), &["new", name, "--runtime", runtime]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(dir
            .path()
            .join(format!("generated/{name}/deployment.yaml"))
            .exists());
    }
    let out = cubeflash(dir.path(), &["render", "--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let out = cubeflash(dir.path(), &["new", "py-fn"]);
    assert_has(&text(&out.stderr), &["functions/py-fn already exists"]);
    let out = cubeflash(dir.path(), &["new", "Bad_Name"]);
    assert_eq!(out.status.code(), Some(2));
    assert_has(&text(&out.stderr), &["try \"bad-name\""]);
}

#[test]
fn new_functions_work_at_once() {
    let dir = tempfile::tempdir().unwrap();
    assert!(cubeflash(dir.path(), &["init"]).status.success());
    for (name, runtime) in [("py-fn", "python"), ("js-fn", "node"), ("sh-fn", "exec")] {
        let program = if runtime == "node" { "node" } else { "python3" };
        common::need(program);
        assert!(cubeflash(
            dir.path(),
            &["new", name, "--runtime", runtime, "--no-render"]
        )
        .status
        .success());
        let fdir = dir.path().join("functions").join(name);
        let replica = match runtime {
            "exec" => common::Replica::start(&fdir, "sh", &["-c", "python3 server.py"], &[]),
            _ => common::start_shim(
                runtime,
                &fdir,
                if runtime == "node" {
                    "handler.js"
                } else {
                    "handler.py"
                },
            ),
        }
        .unwrap_or_else(|e| panic!("{runtime}: {e}"));
        let resp = reqwest::blocking::get(replica.url("/?name=cube")).unwrap();
        assert_eq!(resp.status(), 200, "{runtime}");
        let v: serde_json::Value = resp.json().unwrap();
        assert!(v["hello"].is_string(), "{runtime}: {v}");
    }
}

#[test]
fn the_examples_in_this_repo_are_valid_and_rendered() {
    let out = cubeflash(&common::repo_root(), &["render", "--check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn a_queue_trigger_needs_a_nats_server_and_valid_names() {
    let stderr = invalid(
        "name: bad\nruntime: python\nhandler: handler.py\ntriggers:\n  - queue: { subject: quotes.requested }\n",
    );
    assert_has(
        &stderr,
        &["5:12: triggers[0].queue: a queue trigger (subject \"quotes.requested\") needs a NATS server with JetStream, and cubeflash.yaml names none", "add `nats: { url: nats://127.0.0.1:4222 }`"],
    );
    let stderr = invalid(
        "name: bad\nruntime: python\nhandler: handler.py\ntriggers:\n  - queue: { subject: q, stream: a.b, ordered: true, concurrency: 4 }\n",
    );
    assert_has(
        &stderr,
        &[
            "triggers[0].queue.stream: \"a.b\" is not a JetStream name",
            "triggers[0].queue.concurrency: an ordered queue is handled one message at a time, not 4",
        ],
    );
}

#[test]
fn a_schedule_takes_an_iana_time_zone() {
    let stderr = invalid(
        "name: bad\nruntime: python\nhandler: handler.py\ntriggers:\n  - schedule: { cron: \"0 9 * * *\", timezone: Europe/Pariss }\n",
    );
    assert_has(
        &stderr,
        &["triggers[0].schedule.timezone: \"Europe/Pariss\" is not a time zone (did you mean Europe/Paris?)"],
    );
    let dir = repo(&[(
        "tick",
        "triggers:\n  - schedule: { cron: \"0 9 * * *\", timezone: Europe/Paris }\n",
    )]);
    render_ok(dir.path());
    let cronjob = fs::read_to_string(dir.path().join("generated/tick/schedule-1.yaml")).unwrap();
    assert!(cronjob.contains("timeZone: Europe/Paris"), "{cronjob}");
}
