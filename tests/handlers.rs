//! `cubeflash validate` (and deploy) compile handlers with the languages' own compilers and
//! check the named function exists, reported like every other diagnostic: file, line,
//! column, the line quoted, a hint. Real python3 and node.

mod common;

use common::{cubeflash, need, temp_tree, text};

/// `validate` in a repo of one function `f` (function.yaml body `spec`, extra files).
fn validate(spec: &str, files: &[(&str, &str)]) -> (Option<i32>, String) {
    let yaml = format!("name: f\n{spec}");
    let mut tree = vec![
        ("cubeflash.yaml", "namespace: test\n"),
        ("functions/f/function.yaml", yaml.as_str()),
    ];
    let paths: Vec<(String, &str)> = files
        .iter()
        .map(|(p, c)| (format!("functions/f/{p}"), *c))
        .collect();
    tree.extend(paths.iter().map(|(p, c)| (p.as_str(), *c)));
    let dir = temp_tree(&tree);
    let out = cubeflash(dir.path(), &["validate"]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains("panicked"), "{all}");
    (out.status.code(), all)
}

fn refused(spec: &str, files: &[(&str, &str)], needles: &[&str]) {
    let (code, out) = validate(spec, files);
    assert_eq!(code, Some(2), "{out}");
    for n in needles {
        assert!(out.contains(n), "missing {n:?} in:\n{out}");
    }
}

#[test]
fn a_python_syntax_error_is_located_in_the_handler_file() {
    need("python3");
    refused(
        "runtime: python\nhandler: handler.py\n",
        &[(
            "handler.py",
            "import json\n\ndef handle(req)\n    return 1\n",
        )],
        &[
            "error: functions/f/handler.py:3:",
            "SyntaxError: expected ':'",
            "3 | def handle(req)",
            "= help: fix the syntax",
        ],
    );
}

#[test]
fn what_only_the_python_compiler_sees_is_refused_too() {
    need("python3");
    refused(
        "runtime: python\nhandler: handler.py\n",
        &[("handler.py", "def handle(req):\n    pass\nreturn 3\n")],
        &["functions/f/handler.py:3:", "'return' outside function"],
    );
}

#[test]
fn a_missing_python_function_names_the_ones_that_exist() {
    need("python3");
    refused(
        "runtime: python\nhandler: handler.py:main\n",
        &[("handler.py", "def handle(req):\n    return 1\n\ndef helper():\n    pass\n")],
        &[
            "functions/f/function.yaml:3:10: handler: handler.py defines no function main at module level (it has: handle, helper)",
            "`handler: handler.py:handle`",
        ],
    );
}

#[test]
fn python_functions_defined_in_ways_other_than_def_are_found() {
    need("python3");
    for source in [
        "from os.path import join as handle\n",
        "try:\n    import ujson\nexcept ImportError:\n    def handle(req):\n        return 1\n",
        "handle = lambda req: 1\n",
        "from somewhere import *\n",
        "class handle:\n    def __init__(self, req):\n        pass\n",
    ] {
        let (code, out) = validate(
            "runtime: python\nhandler: handler.py\n",
            &[("handler.py", source)],
        );
        assert_eq!(code, Some(0), "{source}\n{out}");
    }
}

#[test]
fn python_checks_run_none_of_the_handler_code() {
    need("python3");
    let dir = temp_tree(&[
        ("cubeflash.yaml", "namespace: test\n"),
        (
            "functions/f/function.yaml",
            "name: f\nruntime: python\nhandler: handler.py\n",
        ),
        (
            "functions/f/handler.py",
            "open(__file__ + '.ran', 'w').write('x')\n\ndef handle(req):\n    return 1\n",
        ),
    ]);
    let out = cubeflash(dir.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!dir.path().join("functions/f/handler.py.ran").exists());
    assert!(!dir.path().join("functions/f/__pycache__").exists());
}

#[test]
fn a_node_syntax_error_is_located_in_the_handler_file() {
    need("node");
    refused(
        "runtime: node\nhandler: handler.js\n",
        &[(
            "handler.js",
            "exports.handle = async (req) => {\n  return {;\n};\n",
        )],
        &[
            "error: functions/f/handler.js:2:",
            "SyntaxError",
            "2 |   return {;",
        ],
    );
}

#[test]
fn a_node_module_syntax_error_is_located_too() {
    need("node");
    refused(
        "runtime: node\nhandler: handler.mjs\n",
        &[(
            "handler.mjs",
            "export async function handle(req) {\n  return (;\n}\n",
        )],
        &["error: functions/f/handler.mjs:2:", "SyntaxError"],
    );
}

#[test]
fn a_missing_node_export_names_the_ones_that_exist() {
    need("node");
    refused(
        "runtime: node\nhandler: handler.js:main\n",
        &[("handler.js", "exports.handle = async () => 1;\n")],
        &[
            "handler: handler.js does not export a function main (it has: handle)",
            "`handler: handler.js:handle`",
        ],
    );
}

#[test]
fn node_exports_in_their_usual_forms_are_found() {
    need("node");
    for (file, source) in [
        (
            "handler.js",
            "module.exports = { handle };\nasync function handle() { return 1; }\n",
        ),
        ("handler.js", "module.exports = async (req) => 1;\n"),
        (
            "handler.js",
            "Object.assign(module.exports, { handle: () => 1 });\n",
        ),
        (
            "handler.mjs",
            "export default async function (req) { return 1; }\n",
        ),
        (
            "handler.mjs",
            "const handle = () => 1;\nexport { handle };\n",
        ),
    ] {
        let (code, out) = validate(
            &format!("runtime: node\nhandler: {file}\n"),
            &[(file, source)],
        );
        assert_eq!(code, Some(0), "{source}\n{out}");
    }
}

#[test]
fn an_exec_program_must_exist_and_be_executable() {
    refused(
        "runtime: exec\nhandler: no-such-program-here --port $PORT\n",
        &[],
        &["the program no-such-program-here is not on this machine's PATH"],
    );
    let dir = temp_tree(&[
        ("cubeflash.yaml", "namespace: test\n"),
        (
            "functions/f/function.yaml",
            "name: f\nruntime: exec\nhandler: ./server\n",
        ),
        (
            "functions/f/server",
            "#!/bin/sh\nexec python3 -m http.server $PORT\n",
        ),
    ]);
    std::fs::set_permissions(
        dir.path().join("functions/f/server"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let out = cubeflash(dir.path(), &["validate"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("./server is not executable"), "{err}");
    assert!(err.contains("chmod +x functions/f/server"), "{err}");
    let (code, out) = validate("runtime: exec\nhandler: FOO=1 exec sh -c 'true'\n", &[]);
    assert_eq!(
        code,
        Some(0),
        "shell words and assignments are not programs: {out}"
    );
}

#[test]
fn deploy_refuses_what_validate_refuses_and_starts_nothing() {
    need("python3");
    let dir = temp_tree(&[
        ("cubeflash.yaml", "namespace: test\n"),
        (
            "functions/f/function.yaml",
            "name: f\nruntime: python\nhandler: handler.py\n",
        ),
        ("functions/f/handler.py", "def handle(req)\n    return 1\n"),
    ]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cubeflash"))
        .arg("deploy")
        .current_dir(dir.path())
        .env("CUBEFLASH_PORT", "0")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("functions/f/handler.py:1:"), "{err}");
    assert!(!dir.path().join(".cubeflash/gateway.pid").exists());
}
