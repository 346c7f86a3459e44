//! Secrets: set with `cubeflash secret` into `.cubeflash/secrets/` (private modes, never
//! printed), read by a real replica from `$CUBEFLASH_SECRETS/<name>/<key>`, refused at deploy
//! when not set; in a cluster mounted read-only from a Kubernetes Secret named in the
//! rendered Deployment (no value in generated/), and checked before anything is applied.

mod common;
mod fake_kube;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;

use common::gateway::{one_function, Platform};
use common::{need, text};

fn secret_set(p: &Platform, name: &str, key: &str, value: &str) -> (Option<i32>, String, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cubeflash"))
        .args(["secret", "set", name, key])
        .current_dir(p.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(value.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    (o.status.code(), text(&o.stdout), text(&o.stderr))
}

const READS: &str = "import os\n\ndef handle(req):\n    with open(os.path.join(os.environ['CUBEFLASH_SECRETS'], 'db', 'password')) as f:\n        return 'password is ' + f.read()\n";

#[test]
fn a_function_reads_its_secret_as_a_file_and_a_missing_one_is_refused_at_deploy() {
    need("python3");
    let p = Platform::new(one_function("app", "python", "secrets: [db]\n", READS));
    assert_eq!(p.run(&["render"]).0, Some(0));
    let (code, out, err) = p.run(&["deploy"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains(
            "app names the secret \"db\", which is not set here: `cubeflash secret set db KEY`"
        ),
        "{out}{err}"
    );
    let (code, out, err) = secret_set(&p, "db", "password", "hunter2\n");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(!out.contains("hunter2"), "{out}");
    let file = p.path().join(".cubeflash/secrets/db/password");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"hunter2",
        "the final newline is dropped"
    );
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(file.parent().unwrap()).unwrap().mode() & 0o777,
        0o700
    );
    let (code, out, err) = p.run(&["deploy"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(p.run(&["invoke", "app"]).1, "password is hunter2\n");
    // A new value reaches the function at its next deploy, with no code change.
    secret_set(&p, "db", "password", "s3cret");
    assert_eq!(p.run(&["deploy"]).0, Some(0));
    assert_eq!(p.run(&["invoke", "app"]).1, "password is s3cret\n");
    let (code, out, _) = p.run(&["secret", "ls"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("db") && out.contains("password") && out.contains("app"),
        "{out}"
    );
    assert!(!out.contains("s3cret") && !out.contains("hunter2"), "{out}");
    // Nothing of it in generated/.
    let rendered = std::fs::read_to_string(p.path().join("generated/app/deployment.yaml")).unwrap();
    assert!(!rendered.contains("s3cret"));
    assert!(
        rendered.contains("secretName: db")
            && rendered.contains("mountPath: /var/cubeflash/secrets/db"),
        "{rendered}"
    );
    assert!(
        rendered.contains("value: \"/var/cubeflash/secrets\"")
            || rendered.contains("value: /var/cubeflash/secrets"),
        "{rendered}"
    );
    let (code, _, err) = p.run(&["secret", "rm", "db", "nokey"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("no key \"nokey\""), "{err}");
}

#[test]
fn bad_secret_names_are_refused_where_they_are_written() {
    let p = Platform::new(one_function(
        "app",
        "python",
        "secrets: [db, db, Bad_Name]\n",
        "def handle(req):\n    return 'x'\n",
    ));
    let (code, _, err) = p.run(&["validate"]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("secrets[1]") && err.contains("listed twice"),
        "{err}"
    );
    assert!(
        err.contains("secrets[2]") && err.contains("Bad_Name"),
        "{err}"
    );
    let (code, _, err) = secret_set(&p, "db", "../../etc/passwd", "x");
    assert_ne!(code, Some(0));
    assert!(err.contains("a key is a file name"), "{err}");
}

/// A repo for namespace `demo` with one function `app` that names the secret `db`.
fn cluster_repo() -> tempfile::TempDir {
    common::temp_tree(&[
        ("cubeflash.yaml", "namespace: demo\n"),
        (
            "functions/app/function.yaml",
            "name: app\nruntime: python\nhandler: handler.py\nsecrets: [db]\n",
        ),
        ("functions/app/handler.py", READS),
    ])
}

#[test]
fn a_cluster_deploy_checks_the_secrets_exist_before_applying_anything() {
    let api = fake_kube::FakeApi::start();
    let dir = cluster_repo();
    assert!(common::cubeflash(dir.path(), &["render"]).status.success());
    let kc = api.kubeconfig(dir.path());
    let o = fake_kube::deploy(dir.path(), &kc, &["--no-wait"]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("app needs the Secret db: kubectl -n demo create secret generic db"),
        "{err}"
    );
    assert!(
        !api.seen().iter().any(|s| s.method == "PATCH"),
        "nothing applied"
    );
    api.state
        .lock()
        .unwrap()
        .objects
        .entry("/api/v1/namespaces/demo/secrets".into())
        .or_default()
        .insert(
            "db".into(),
            serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "demo"}, "data": {"password": "aHVudGVyMg=="}}),
        );
    let o = fake_kube::deploy(dir.path(), &kc, &["--no-wait"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn secret_set_for_a_cluster_applies_one_key_of_a_secret_that_no_deploy_prunes() {
    let api = fake_kube::FakeApi::start();
    let dir = cluster_repo();
    let kc = api.kubeconfig(dir.path());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cubeflash"))
        .args(["secret", "set", "db", "password", "--target", "kubernetes"])
        .current_dir(dir.path())
        .env("KUBECONFIG", &kc)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hunter2\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    // A key that is not a file name is refused here, before the API server sees it.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_cubeflash"))
        .args(["secret", "rm", "db", "../x", "--target", "kubernetes"])
        .current_dir(dir.path())
        .env("KUBECONFIG", &kc)
        .output()
        .unwrap();
    assert!(!o.status.success() && text(&o.stderr).contains("a key is a file name"));
    assert!(!api
        .seen()
        .iter()
        .any(|s| s.method == "DELETE" || s.path.contains("..")));
    assert!(!text(&o.stdout).contains("hunter2"));
    let patch = api
        .seen()
        .into_iter()
        .find(|s| s.method == "PATCH" && s.path == "/api/v1/namespaces/demo/secrets/db")
        .expect("an apply of the Secret");
    assert_eq!(
        patch.query.get("fieldManager").map(String::as_str),
        Some("cubeflash-secret")
    );
    assert_eq!(patch.content_type, "application/apply-patch+yaml");
    assert_eq!(
        patch.body["data"]["password"], "aHVudGVyMg==",
        "{:?}",
        patch.body
    );
    assert!(
        patch.body["metadata"]["labels"].is_null(),
        "no managed-by label: prune leaves it alone"
    );
    // The deploy's check now finds it.
    assert!(common::cubeflash(dir.path(), &["render"]).status.success());
    let o = fake_kube::deploy(dir.path(), &kc, &["--no-wait"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}
