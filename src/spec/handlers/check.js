// cubeflash: checks node handlers' syntax and that they export their function.
//
// stdin: [{"path", "display", "name", "dir"}]; stdout: [{"display", "line", "column", "len",
// "kind", "message"}]. CommonJS files are compiled with vm.compileFunction (as require would
// wrap them) and .mjs files with `node --check`: neither runs them. The export is looked
// for in the source; only when that finds nothing is the file loaded, in a separate process
// with a clean environment and a time limit, to ask what it exports.
"use strict";
const fs = require("fs");
const vm = require("vm");
const { spawnSync } = require("child_process");

function located(display, text) {
  // "file:LINE\n<code>\n   ^^^\n\nSyntaxError: msg"
  const lines = String(text).split("\n");
  const head = lines[0].match(/:(\d+)$/);
  const caret = lines.find((l) => /^\s*\^+\s*$/.test(l));
  const message = lines.find((l) => /^\w*Error: /.test(l)) || lines[0];
  return {
    display,
    line: head ? Number(head[1]) : 0,
    column: caret ? caret.indexOf("^") + 1 : 1,
    len: caret ? caret.trim().length : 1,
    kind: "syntax",
    message,
  };
}

function esc(name) {
  return name.replace(/[$]/g, "\\$");
}

function exportsStatically(source, name) {
  const n = esc(name);
  const patterns = [
    `\\b(module\\.)?exports\\.${n}\\s*=`,
    `\\b(module\\.)?exports\\[\\s*['"\`]${n}['"\`]\\s*\\]\\s*=`,
    `\\bmodule\\.exports\\s*=\\s*\\{[^]*?\\b${n}\\b`,
    `\\bexport\\s+(async\\s+)?function\\s*\\*?\\s*${n}\\b`,
    `\\bexport\\s+(const|let|var|class)\\s+${n}\\b`,
    `\\bexport\\s*\\{[^}]*\\b${n}\\b[^}]*\\}`,
  ];
  if (name === "handle") {
    // The shim also takes a module that is itself the function, or its default export.
    patterns.push(`\\bmodule\\.exports\\s*=\\s*(async\\b|function\\b|\\(|[A-Za-z_$][\\w$]*\\s*(=>|;|$))`);
    patterns.push(`\\bexport\\s+default\\b`, `\\bexports\\.default\\s*=`);
  }
  return patterns.some((p) => new RegExp(p, "m").test(source));
}

function exportsWhenLoaded(item) {
  const probe = `
    const path = ${JSON.stringify(item.path)};
    const name = ${JSON.stringify(item.name)};
    (async () => {
      const m = path.endsWith(".mjs") ? await import(require("url").pathToFileURL(path).href) : require(path);
      let fn = m && m[name];
      if (typeof fn !== "function" && name === "handle") fn = typeof m === "function" ? m : m && m.default;
      process.stdout.write(JSON.stringify({ ok: typeof fn === "function", keys: m ? Object.keys(m) : [] }));
      process.exit(0);
    })().catch((e) => { process.stdout.write(JSON.stringify({ error: String(e && e.message || e) })); process.exit(0); });`;
  const run = spawnSync(process.execPath, ["-e", probe], {
    cwd: item.dir,
    env: Object.assign({ PATH: process.env.PATH || "/usr/bin:/bin", HOME: item.dir }, item.env),
    timeout: 5000,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
  try {
    return JSON.parse(run.stdout.trim().split("\n").pop());
  } catch (e) {
    return { error: run.error ? `did not load within 5s` : (run.stderr || "").trim().split("\n").pop() || "did not load" };
  }
}

function check(item) {
  let source;
  try {
    source = fs.readFileSync(item.path, "utf8");
  } catch (e) {
    return { display: item.display, line: 0, column: 0, len: 0, kind: "unreadable", message: `cannot read it: ${e.code}` };
  }
  if (item.path.endsWith(".mjs")) {
    const run = spawnSync(process.execPath, ["--check", item.path], { encoding: "utf8" });
    if (run.status !== 0) {
      return located(item.display, (run.stderr || "").replace(item.path, item.display));
    }
  } else {
    try {
      vm.compileFunction(source.replace(/^#!.*/, ""), ["exports", "require", "module", "__filename", "__dirname"], { filename: item.display });
    } catch (e) {
      return located(item.display, e.stack || e);
    }
  }
  if (exportsStatically(source, item.name)) return null;
  const loaded = exportsWhenLoaded(item);
  if (loaded.ok) return null;
  if (loaded.error) {
    return { display: item.display, line: 0, column: 0, len: 0, kind: "load", message: loaded.error };
  }
  return { display: item.display, line: 0, column: 0, len: 0, kind: "missing", message: item.name, defined: loaded.keys };
}

const input = JSON.parse(fs.readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(input.map(check).filter(Boolean)));
