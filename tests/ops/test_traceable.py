"""The ops stay traceable by Dynamo on every torch the package supports: no ``locals()`` in
pyengine's code (Dynamo before torch 2.13 cannot trace it; a GPU image with torch 2.11 broke every
op's torch.compile test on it, while torch 2.13 here traced it without complaint)."""

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_no_locals_calls_in_the_package():
    found = []
    for path in sorted(glob.glob(os.path.join(ROOT, "pyengine", "**", "*.py"), recursive=True)):
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("locals", "vars"):
                if node.func.id == "vars" and node.args:
                    continue  # vars(obj) is an attribute dict, traceable
                found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert not found, f"locals() in {found}: pass the arguments by name instead"
