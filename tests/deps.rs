//! Function dependencies on the local platform: a python `requirements.txt` installed into
//! the shared cache (here a wheel built by the test and installed offline with
//! `--no-index --find-links`), found there on the next deploy, kept out of the way when it
//! fails (the running version serves on), and on the path of a cold start from the warm
//! pool; a node `package.json` without its lock refused, located. Real `cubeflash deploy`
//! processes, real pip, real replicas.

mod common;

use std::path::Path;

use common::gateway::{one_function, Platform};
use common::{need, text};

/// Writes a pure-python wheel `cfgreet-VERSION` whose module says `greeting`.
fn wheel(dir: &Path, version: &str, greeting: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let script = r#"
import sys, zipfile
dir, version, greeting = sys.argv[1:4]
name = f"cfgreet-{version}"
with zipfile.ZipFile(f"{dir}/{name}-py3-none-any.whl", "w") as z:
    files = {
        "cfgreet/__init__.py": f"GREETING = {greeting!r}\n",
        f"{name}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: cfgreet\nVersion: {version}\n",
        f"{name}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: cubeflash-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    for path, text in files.items():
        z.writestr(path, text)
    z.writestr(f"{name}.dist-info/RECORD", "".join(f"{p},,\n" for p in files) + f"{name}.dist-info/RECORD,,\n")
"#;
    let o = std::process::Command::new("python3")
        .args(["-c", script, dir.to_str().unwrap(), version, greeting])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn python_requirements_are_installed_once_cached_and_a_bad_pin_keeps_the_old_version() {
    need("python3");
    let root = one_function(
        "greet",
        "python",
        "scale: {min: 0, idle: 30s}\n",
        "import cfgreet\n\ndef handle(req):\n    return cfgreet.GREETING\n",
    );
    let p = Platform::new(root);
    let cache = common::temp_tree(&[]);
    let cache_dir = cache.path().to_str().unwrap().to_string();
    let env = [("CUBEFLASH_CACHE_DIR", cache_dir.as_str())];
    wheel(
        &p.path().join("functions/greet/wheels"),
        "1.0",
        "hello from a wheel",
    );
    p.write(
        "functions/greet/requirements.txt",
        "--no-index\n--find-links wheels\ncfgreet==1.0\n",
    );
    assert_eq!(p.run(&["render"]).0, Some(0));
    let (code, out, err) = p.run_env(&["deploy"], &env);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("greet: installing dependencies from requirements.txt")
            && out.contains("greet: dependencies installed in"),
        "{out}"
    );
    assert_eq!(p.run(&["invoke", "greet"]).1, "hello from a wheel\n");
    let entries: Vec<String> = std::fs::read_dir(cache.path().join("deps"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].starts_with("pip-cpython-3"), "{entries:?}");
    assert!(cache
        .path()
        .join("deps")
        .join(&entries[0])
        .join("cfgreet/__init__.py")
        .is_file());

    // From zero, through the warm pool: the pooled interpreter puts the cache on its path.
    assert_eq!(p.run(&["scale", "greet", "0"]).0, Some(0));
    assert_eq!(p.run(&["invoke", "greet"]).1, "hello from a wheel\n");

    // Changed code, same requirements: the cache answers.
    p.write(
        "functions/greet/handler.py",
        "import cfgreet\n\ndef handle(req):\n    return cfgreet.GREETING.upper()\n",
    );
    assert_eq!(p.run(&["render"]).0, Some(0));
    let started = std::time::Instant::now();
    let (code, out, err) = p.run_env(&["deploy"], &env);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("greet: dependencies cached"), "{out}");
    assert!(!out.contains("installing"), "{out}");
    assert_eq!(p.run(&["invoke", "greet"]).1, "HELLO FROM A WHEEL\n");
    eprintln!("deploy with cached dependencies: {:?}", started.elapsed());

    // A version that does not exist: pip's own message, the running version serves on.
    p.write(
        "functions/greet/requirements.txt",
        "--no-index\n--find-links wheels\ncfgreet==9.9\n",
    );
    assert_eq!(p.run(&["render"]).0, Some(0));
    let (code, out, err) = p.run_env(&["deploy"], &env);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("No matching distribution found for cfgreet==9.9"),
        "{out}{err}"
    );
    assert!(out.contains("keeps serving"), "{out}");
    assert_eq!(p.run(&["invoke", "greet"]).1, "HELLO FROM A WHEEL\n");
    let after: Vec<String> = std::fs::read_dir(cache.path().join("deps"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        after, entries,
        "a failed install leaves nothing in the cache"
    );

    // A new version of the library: a new entry; `deps --prune` removes the old one.
    wheel(
        &p.path().join("functions/greet/wheels"),
        "2.0",
        "hello from 2.0",
    );
    p.write(
        "functions/greet/requirements.txt",
        "--no-index\n--find-links wheels\ncfgreet==2.0\n",
    );
    assert_eq!(p.run(&["render"]).0, Some(0));
    let (code, out, err) = p.run_env(&["deploy"], &env);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(p.run(&["invoke", "greet"]).1, "HELLO FROM 2.0\n");
    let (code, out, _) = p.run_env(&["deps"], &env);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("greet: dependencies cached")
            && out.contains("1 cache entry no function of this repo uses"),
        "{out}"
    );
    let (code, out, _) = p.run_env(&["deps", "--prune"], &env);
    assert_eq!(code, Some(0));
    assert!(
        out.contains(&format!(
            "pruned {}",
            cache.path().join("deps").join(&entries[0]).display()
        )),
        "{out}"
    );
    assert_eq!(
        std::fs::read_dir(cache.path().join("deps"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn a_node_package_json_without_its_lock_file_is_refused_where_it_is() {
    let root = one_function("hi", "node", "", "module.exports = () => 'hi';\n");
    let p = Platform::new(root);
    p.write(
        "functions/hi/package.json",
        r#"{"name": "hi", "version": "1.0.0", "dependencies": {"left-pad": "1.3.0"}}"#,
    );
    let (code, out, err) = p.run(&["validate"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        err.contains("functions/hi/package.json")
            && err.contains("without its package-lock.json")
            && err.contains("npm install --package-lock-only"),
        "{err}"
    );
}

/// Runs `npm ARGS` in `dir` offline.
fn npm(dir: &Path, args: &[&str]) {
    let o = std::process::Command::new("npm")
        .args(args)
        .args(["--offline", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "npm {args:?}: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

#[test]
fn a_node_function_gets_its_locked_packages_from_npm_ci() {
    need("node");
    need("npm");
    let root = one_function(
        "hi",
        "node",
        "",
        "const left = require('cfleft');\nexports.handle = async () => left.greet();\n",
    );
    let p = Platform::new(root);
    let cache = common::temp_tree(&[]);
    let cache_dir = cache.path().to_str().unwrap().to_string();
    let env = [("CUBEFLASH_CACHE_DIR", cache_dir.as_str())];
    // A package of our own, packed to a tarball beside the function (no registry needed).
    let pkg = p.path().join("cfleft");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join("package.json"),
        r#"{"name": "cfleft", "version": "1.0.0", "main": "index.js"}"#,
    )
    .unwrap();
    std::fs::write(
        pkg.join("index.js"),
        "exports.greet = () => 'hello from npm';\n",
    )
    .unwrap();
    let fdir = p.path().join("functions/hi");
    npm(
        &pkg,
        &["pack", "--pack-destination", fdir.to_str().unwrap()],
    );
    std::fs::remove_dir_all(&pkg).unwrap();
    p.write(
        "functions/hi/package.json",
        r#"{"name": "hi", "version": "1.0.0", "dependencies": {"cfleft": "file:cfleft-1.0.0.tgz"}}"#,
    );
    npm(&fdir, &["install", "--package-lock-only"]);
    assert!(!fdir.join("node_modules").exists());
    assert_eq!(p.run(&["render"]).0, Some(0));
    let (code, out, err) = p.run_env(&["deploy"], &env);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("hi: dependencies installed in"), "{out}");
    assert_eq!(p.run(&["invoke", "hi"]).1, "hello from npm\n");
    // From zero, through the warm pool.
    assert_eq!(p.run(&["scale", "hi", "0"]).0, Some(0));
    assert_eq!(p.run(&["invoke", "hi"]).1, "hello from npm\n");
    let entry = std::fs::read_dir(cache.path().join("deps"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(entry
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("npm-node-"));
    assert!(entry.join("node_modules/cfleft/index.js").is_file());
    assert!(
        !entry.join("package.json").exists(),
        "only node_modules stays in the entry"
    );
}

#[test]
fn a_cluster_target_refuses_dependencies_it_cannot_install_naming_the_file() {
    let dir = common::temp_tree(&[
        ("cubeflash.yaml", "namespace: test\ntarget: kubernetes\n"),
        (
            "functions/r/function.yaml",
            "name: r\nruntime: python\nhandler: handler.py\n",
        ),
        (
            "functions/r/handler.py",
            "import jinja2\n\ndef handle(req):\n    return 'x'\n",
        ),
        ("functions/r/requirements.txt", "jinja2==3.1.4\n"),
    ]);
    let o = common::cubeflash(dir.path(), &["render"]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("functions/r/requirements.txt")
            && err.contains("cubeflash does not build yet")
            && err.contains("--target local"),
        "{err}"
    );
    assert!(
        !dir.path().join("generated/r").exists(),
        "nothing half-written"
    );
}
