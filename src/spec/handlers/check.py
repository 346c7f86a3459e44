"""cubeflash: compiles python handlers and finds their function, running none of their code.

stdin: [{"path", "display", "name"}]; stdout: [{"display", "line", "column", "len", "kind",
"message", "defined"}]. compile() checks syntax (and what only the compiler sees, such as
`return` outside a function); the AST tells what the module defines at its top level,
including inside top-level if/try/with blocks.
"""
import ast
import json
import sys


def top_level_names(body, found):
    """Names bound at module level; True if a star import makes that unknowable."""
    star = False
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = type(node).__name__
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        found.setdefault(n.id, "assignment")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    star = True
                else:
                    found.setdefault((alias.asname or alias.name).split(".")[0], "import")
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            blocks = [getattr(node, k, []) for k in ("body", "orelse", "finalbody")]
            blocks += [h.body for h in getattr(node, "handlers", [])]
            for block in blocks:
                star = top_level_names(block, found) or star
    return star


def check(item):
    shown = item["display"]
    try:
        with open(item["path"], "rb") as f:
            source = f.read()
    except OSError as err:
        return {"display": shown, "line": 0, "column": 0, "len": 0, "kind": "unreadable",
                "message": f"cannot read it: {err.strerror}"}
    try:
        tree = compile(source, shown, "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
        compile(tree, shown, "exec", dont_inherit=True)
    except SyntaxError as err:
        line = err.lineno or 1
        column = err.offset or 1
        end = getattr(err, "end_offset", None)
        if getattr(err, "end_lineno", None) not in (None, line):
            end = None
        length = max(1, (end - column) if end and end > column else 1)
        return {"display": shown, "line": line, "column": column, "len": length,
                "kind": "syntax", "message": f"{type(err).__name__}: {err.msg}"}
    except ValueError as err:
        return {"display": shown, "line": 0, "column": 0, "len": 0, "kind": "syntax",
                "message": str(err)}
    found = {}
    star = top_level_names(tree.body, found)
    name = item["name"]
    if name in found or star:
        return None
    defined = sorted(n for n, kind in found.items() if kind in ("FunctionDef", "AsyncFunctionDef"))
    return {"display": shown, "line": 0, "column": 0, "len": 0, "kind": "missing",
            "message": name, "defined": defined}


def main():
    problems = [p for p in (check(item) for item in json.load(sys.stdin)) if p]
    json.dump(problems, sys.stdout)


main()
