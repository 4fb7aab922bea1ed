"""The package layout of docs/architecture.md holds: no module imports a private name of another,
no import cycle between modules, no module grows past the size where it should be split, every
parameter a library error names has a command-line flag (or is documented as API-only), and the
moved module paths still work for one release with a DeprecationWarning.

The layers themselves (which package may import which) are checked by lint-imports (setup.cfg
[importlinter]), which `make test` runs in .venv-modern."""
import ast
import importlib
import os
import sys
import warnings

import pytest

import influence
from influence.common import moved

ROOT = os.path.dirname(influence.__file__)
#: A module past this many lines is a candidate for a split along a boundary of the layout.
MAX_MODULE_LINES = 600


def _modules():
    for d, _, files in os.walk(ROOT):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(d, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                is_pkg = rel.endswith(".__init__")
                yield (rel[:-9] if is_pkg else rel), is_pkg, path


def _imports(name, is_pkg, path):
    """(imported module, names, lineno) of every `from X import ...` (relative ones resolved)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = name if is_pkg else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            yield target, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno


def test_no_module_imports_a_private_name_of_another():
    bad = []
    for name, is_pkg, path in _modules():
        for target, names, line in _imports(name, is_pkg, path):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append("%s:%d imports %s from %s" % (os.path.relpath(path, ROOT), line, n, target))
    assert not bad, "\n".join(bad)


def test_no_import_cycle_between_modules():
    modules = {name: (is_pkg, path) for name, is_pkg, path in _modules()}
    graph = {}
    for name, (is_pkg, path) in modules.items():
        edges = set()
        for target, names, _ in _imports(name, is_pkg, path):
            for cand in [target + "." + n for n in names] + [target]:
                if cand in modules and cand != name:
                    edges.add(cand)
                    break
        # a package's __init__ re-exports its modules: a module importing its own package is an edge
        # to the __init__, which imports it back: that is the one cycle Python resolves by order
        graph[name] = {e for e in edges if not name.startswith(e + ".")}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v, counter=[0]):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_no_module_over_the_size_limit():
    big = []
    for name, _, path in _modules():
        n = sum(1 for _ in open(path, encoding="utf-8"))
        if n > MAX_MODULE_LINES:
            big.append("%s: %d lines" % (name, n))
    assert not big, big


def _error_parameters():
    """Every parameter name a library error can mention: literal first arguments of param(), and the
    names passed to the shared checks that build such errors."""
    checks = {"check_nonneg": 1, "check_int": 1, "check_batch_size": 1, "refuse": 3}
    names = set()
    for name, _, path in _modules():
        if name.startswith("influence.cli"):
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            if not isinstance(node, ast.Call):
                continue
            func = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            pos = 0 if func == "param" else checks.get(func)
            if pos is not None and len(node.args) > pos:
                arg = node.args[pos]
                value = getattr(arg, "value", getattr(arg, "s", None))    # ast.Constant (3.8+) / ast.Str (3.6)
                if isinstance(value, str):
                    names.add(value)
    return names


def test_every_parameter_named_in_a_library_error_has_a_flag():
    from influence.cli._common import API_ONLY, FLAGS
    names = _error_parameters()
    assert {"damping", "maxiter", "method", "k", "random_state", "batch_size", "mapping", "skip"} <= names
    missing = sorted(n for n in names if n not in FLAGS and n not in API_ONLY)
    assert not missing, "add a flag to influence.cli._common.FLAGS (or to API_ONLY, with why): %s" % missing


def test_parameter_mentions_render_in_each_front_end():
    from influence.cli._common import cli_spelling
    from influence.common.errors import InfluenceError, param, render
    e = InfluenceError("%s is negative; pass e.g. %s or %s" % (param("damping", -1), param("damping", 0.01),
                                                               param("method", "cg")), parameter="damping")
    assert str(e) == "damping=-1 is negative; pass e.g. damping=0.01 or method='cg'"
    assert e.parameters == ["damping", "damping", "method"] and e.parameter == "damping"
    assert render(e.template, cli_spelling("score")) == "--damping -1 is negative; pass e.g. --damping 0.01 or --solver cg"
    assert render(e.template, cli_spelling("self")).endswith("--method cg")
    ctf = InfluenceError("map it with %s or ignore it with %s" % (param("mapping", {"label": "INPUT"}),
                                                                   param("skip", ["label"])))
    assert render(ctf.template, cli_spelling()) == "map it with --ctf-map label=INPUT or ignore it with --ctf-skip label"
    assert "\ue000" not in str(ctf) and "\ue000" not in ctf.args[0]


@pytest.mark.parametrize("old", sorted(moved.MOVED))
def test_old_module_paths_work_with_a_deprecation_warning(old):
    module = importlib.import_module(old)
    module.__dict__["_warned"] = False
    new = importlib.import_module(moved.MOVED[old])
    public = getattr(new, "__all__", [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert public and all(getattr(module, n) is getattr(new, n) for n in public)
    assert len(caught) == 1 and issubclass(caught[0].category, DeprecationWarning)
    assert moved.MOVED[old] in str(caught[0].message) and "0.3" in str(caught[0].message)


def test_the_function_hvp_survives_the_old_module_path():
    import influence.hvp  # noqa: F401  (the old module path)
    from influence.hvp import adaptive_difference
    from influence.curvature import hvp
    from influence.curvature.steps import adaptive_difference as new
    assert influence.hvp is hvp and adaptive_difference is new
    import influence.models
    from influence.adapters import reference
    assert influence.models is reference
