"""The code stays readable in the ways docs/architecture.md promises: no call in vgg16/ passes more than five
arguments by position (a C function called through ctypes aside), and the runner's `_run` fits on one screen."""

import ast

from conftest import ROOT

MAX_POSITIONAL = 5
# Calls into jpeg_region.c through ctypes take the C function's arguments in its order: there are no keywords.
CTYPES_CALLERS = {"vgg16/data/region_decode.py"}


def positional_calls(tree: ast.AST) -> list:
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Call) and len([a for a in node.args if not isinstance(a, ast.Starred)]) > MAX_POSITIONAL]


def test_no_call_in_the_package_passes_more_than_five_arguments_by_position():
    found = []
    for path in sorted((ROOT / "vgg16").rglob("*.py")):
        where = str(path.relative_to(ROOT))
        if where in CTYPES_CALLERS:
            continue
        for call in positional_calls(ast.parse(path.read_text())):
            found.append(f"{where}:{call.lineno} {ast.unparse(call.func)}")
    assert not found, found


def test_the_checker_finds_a_long_positional_call():
    assert len(positional_calls(ast.parse("f(1, 2, 3, 4, 5, 6)\nf(1, 2, 3, 4, 5, x=6)\nf(*range(9))"))) == 1


def test_the_runners_run_fits_on_one_screen():
    tree = ast.parse((ROOT / "vgg16" / "runner.py").read_text())
    run = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_run")
    assert run.end_lineno - run.lineno + 1 <= 60
