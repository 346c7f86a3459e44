//! End to end against a real cluster, when CUBEFLASH_E2E_KUBECONFIG names its kubeconfig
//! (kind or k3d; see README "Kubernetes"): deploy a repo into a fresh namespace, call a
//! function through the in-cluster gateway (kubectl port-forward), see it scale back to zero,
//! delete it. It is ignored (reported as such) unless run with `make test-e2e`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::text;

fn kubectl(kubeconfig: &str, args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs")
}

fn cubeflash(dir: &Path, kubeconfig: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cubeflash"))
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

struct PortForward(Child);

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs a real cluster: set CUBEFLASH_E2E_KUBECONFIG and run `make test-e2e`"]
fn deploy_invoke_scale_to_zero_and_delete_on_a_real_cluster() {
    let kubeconfig = std::env::var("CUBEFLASH_E2E_KUBECONFIG").expect(
        "CUBEFLASH_E2E_KUBECONFIG names the cluster's kubeconfig (README, \"Kubernetes\", says how to make one with kind or k3d)",
    );
    assert!(
        common::have("kubectl"),
        "the end-to-end suite needs kubectl on PATH"
    );
    let ns = format!("cubeflash-e2e-{}", std::process::id());
    let image = std::env::var("CUBEFLASH_E2E_IMAGE")
        .unwrap_or_else(|_| "ghcr.io/cubeflash/cubeflash:0.1.0".into());
    let dir = common::temp_tree(&[
        (
            "cubeflash.yaml",
            &format!("namespace: {ns}\ntarget: kubernetes\nimages: {{gateway: \"{image}\"}}\n"),
        ),
        (
            "functions/hello/function.yaml",
            "name: hello\nruntime: python\nhandler: handler.py\nscale: {min: 0, max: 2, idle: 20s}\n",
        ),
        ("functions/hello/handler.py", "def handle(req):\n    return 'hello from the cluster'\n"),
    ]);
    assert!(cubeflash(dir.path(), &kubeconfig, &["render"])
        .status
        .success());
    let o = cubeflash(dir.path(), &kubeconfig, &["deploy", "--timeout", "5m"]);
    assert!(
        o.status.success(),
        "deploy: {}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );

    let port = common::free_port();
    let _pf = PortForward(
        Command::new("kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .args([
                "-n",
                &ns,
                "port-forward",
                "svc/cubeflash-gateway",
                &format!("{port}:8080"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}/function/hello");
    let deadline = Instant::now() + Duration::from_secs(120);
    let answer = loop {
        match reqwest::blocking::get(&url) {
            Ok(r) if r.status().is_success() => break r.text().unwrap(),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_secs(1)),
            other => panic!("no answer through the gateway: {other:?}"),
        }
    };
    assert!(answer.contains("hello from the cluster"), "{answer}");

    // Idle for longer than scale.idle: back to zero replicas.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let o = kubectl(
            &kubeconfig,
            &[
                "-n",
                &ns,
                "get",
                "deploy",
                "hello",
                "-o",
                "jsonpath={.spec.replicas}",
            ],
        );
        if text(&o.stdout).trim() == "0" {
            break;
        }
        assert!(Instant::now() < deadline, "hello did not scale to zero");
        std::thread::sleep(Duration::from_secs(2));
    }

    let o = cubeflash(dir.path(), &kubeconfig, &["delete", "hello"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let _ = kubectl(&kubeconfig, &["delete", "namespace", &ns, "--wait=false"]);
}
