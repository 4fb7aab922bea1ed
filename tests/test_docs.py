"""The docs match the code: docs/cli.md's command reference is the generator's output, every
signature heading of docs/api.md is the object's ``inspect.signature``, and every shell and Python
block of README.md runs and succeeds."""
import ast
import importlib
import importlib.util
import inspect
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

import influence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


# ---------------------------------------------------------------------------------------- docs/cli.md
def _gen_cli():
    spec = importlib.util.spec_from_file_location("gen_cli", os.path.join(ROOT, "docs", "gen_cli.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_md_is_generated_from_the_parsers():
    from influence.cli import VOCABULARY, build_parser
    gen = _gen_cli()
    text = _read("docs", "cli.md")
    assert "influence/cli.py" not in text                            # a package now: influence/cli/
    assert text == gen.render_page(text, build_parser(), VOCABULARY), (
        "docs/cli.md is out of date with influence/cli/; regenerate it with: %s" % gen.REGENERATE)


def test_cli_md_lists_every_command_and_flag():
    from influence.cli import build_parser
    gen = _gen_cli()
    text = _read("docs", "cli.md")
    parser = build_parser()
    subs = gen._subcommands(parser)
    assert len(subs) >= 6
    for name, _, sub in subs:
        section = text.split("### `influence %s`" % name, 1)[1].split("\n### ", 1)[0]
        for action in gen._flags(sub):
            for flag in action.option_strings:
                assert "`%s" % flag in section, (name, flag)


def test_cli_generator_renders_any_parser():
    """Robust to commands and flags it has never seen (the CLI changes): nargs, choices, required,
    switches, %(default)s in help, '|' in metavars, hand-written text outside the markers kept."""
    import argparse
    gen = _gen_cli()
    parser = argparse.ArgumentParser(prog="tool", description="A tool.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("brand-new", help="a command added later", description="Does new things.")
    p.add_argument("--in", dest="inp", required=True, metavar="A|B", help="input")
    p.add_argument("--mode", choices=["x", "y"], default="x", help="mode (default %(default)s)")
    p.add_argument("--ids", type=int, nargs="+", metavar="I", help="ids")
    p.add_argument("--fast", action="store_true", help="go fast")
    p.add_argument("--hidden", help=argparse.SUPPRESS)
    page = "intro\n%s\nold\n%s\nepilogue\n" % (gen.BEGIN, gen.END)
    out = gen.render_page(page, parser)
    assert out.startswith("intro\n" + gen.BEGIN + "\n") and out.endswith(gen.END + "\nepilogue\n")
    assert "old" not in out and "--hidden" not in out
    assert "| [`tool brand-new`](#tool-brand-new) | a command added later |" in out
    assert "tool brand-new --in A|B [--mode {x,y}] [--ids I [I ...]] [--fast]" in out
    assert "| `--in A\\|B` | required | input |" in out
    assert "| `--mode {x,y}` | `x` | mode (default x) |" in out
    assert "| `--ids I [I ...]` | — | ids |" in out
    assert "| `--fast` | off | go fast |" in out
    with pytest.raises(ValueError, match="marker"):
        gen.render_page("no markers", parser)


# ---------------------------------------------------------------------------------------- docs/api.md
#: A signature heading: ``### `influence.NAME(PARAMETERS)` `` (or ####), anything after it ignored.
SIGNATURE_HEADING = re.compile(r"^#{3,4} `(influence(?:\.\w+)+)\((.*?)\)`")
#: Names in defaults of documented signatures.
DEFAULT_NAMESPACE = {"np": np, "numpy": np}


def _api_entries():
    out = []
    for line in _read("docs", "api.md").splitlines():
        m = SIGNATURE_HEADING.match(line)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def _resolve(dotted):
    """The object named ``influence.a.b``: attributes of the package first (the public API, where
    ``influence.curvature.hessian`` is the function), else the longest importable module prefix. Returns
    (object, owner) with owner the class when the object is looked up on one."""
    parts = dotted.split(".")
    obj, owner = influence, None
    try:
        for p in parts[1:]:
            owner, obj = obj, getattr(obj, p)
        return obj, owner if inspect.isclass(owner) else None
    except AttributeError:
        pass
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        owner = None
        for p in parts[i:]:
            owner, obj = obj, getattr(obj, p)     # AttributeError: the documented name does not exist
        return obj, owner if inspect.isclass(owner) else None
    raise AttributeError("%s does not exist" % dotted)


def _documented(params_text):
    """[(name, kind, default)] of a documented parameter list, parsed as Python."""
    fn = ast.parse("def _f(%s): pass" % params_text).body[0]
    a = fn.args
    out = []
    plain = a.args
    defaults = [None] * (len(plain) - len(a.defaults)) + list(a.defaults)
    for arg, d in zip(plain, defaults):
        out.append((arg.arg, "POSITIONAL_OR_KEYWORD", d))
    if a.vararg is not None:
        out.append((a.vararg.arg, "VAR_POSITIONAL", None))
    for arg, d in zip(a.kwonlyargs, a.kw_defaults):
        out.append((arg.arg, "KEYWORD_ONLY", d))
    if a.kwarg is not None:
        out.append((a.kwarg.arg, "VAR_KEYWORD", None))
    return [(n, k, inspect.Parameter.empty if d is None else
             eval(compile(ast.Expression(d), "<api.md>", "eval"), dict(DEFAULT_NAMESPACE)))
            for n, k, d in out]


def _actual(obj, owner):
    if inspect.isclass(obj) and obj.__init__ is not object.__init__:
        # the constructor's parameters (Python 3.6's inspect prefers a base's generic __new__, such
        # as scipy 1.5 LinearOperator's (*args, **kwargs))
        params = list(inspect.signature(obj.__init__).parameters.values())[1:]
    else:
        params = list(inspect.signature(obj).parameters.values())
        if owner is not None and inspect.isfunction(inspect.getattr_static(owner, obj.__name__, None)):
            params = params[1:]                   # an instance method: drop self
    return [(p.name, p.kind.name, p.default) for p in params if not p.name.startswith("_")]


def _same_default(a, b):
    if a is inspect.Parameter.empty or b is inspect.Parameter.empty:
        return a is b
    try:
        return type(a) == type(b) and bool(a == b) or a is b
    except Exception:                                       # noqa: BLE001 - arrays and the like
        return a is b


API_ENTRIES = _api_entries()


def test_api_md_has_signature_entries():
    assert len(API_ENTRIES) >= 30, API_ENTRIES


@pytest.mark.parametrize("name,params", API_ENTRIES, ids=[n for n, _ in API_ENTRIES])
def test_api_md_signature_matches_code(name, params):
    obj, owner = _resolve(name)
    documented = _documented(params)
    actual = _actual(obj, owner)
    fmt = lambda ps: ", ".join("%s%s" % (n, "" if d is inspect.Parameter.empty else "=%r" % (d,))  # noqa: E731
                               for n, _, d in ps)
    message = "docs/api.md documents %s(%s) but the code has %s(%s)" % (name, fmt(documented), name, fmt(actual))
    assert [(n, k) for n, k, _ in documented] == [(n, k) for n, k, _ in actual], message
    for (n, _, d), (_, _, a) in zip(documented, actual):
        assert _same_default(d, a), message + " (default of %s)" % n


def test_every_public_name_is_documented():
    text = _read("docs", "api.md")
    headed = {n for n, _ in API_ENTRIES}
    for name in influence.__all__:
        obj = getattr(influence, name)
        full = "influence.%s" % name
        if inspect.isclass(obj) and issubclass(obj, BaseException) or inspect.ismodule(obj) \
                or not callable(obj):
            assert "`%s`" % full in text, "%s is not named in docs/api.md" % full
        else:
            assert full in headed, "%s has no signature heading in docs/api.md" % full


def test_signature_check_catches_drift():
    """The checker itself: a changed default, a missing parameter and an unknown name are caught."""
    obj, owner = _resolve("influence.HessianOperator")
    actual = _actual(obj, owner)
    assert [n for n, _, _ in actual][:2] == ["model", "data"]
    wrong_default = _documented('model, data, damping=0.5, batch_size=None, rel_step=None, stencil="central"')
    assert not all(_same_default(d, a) for (_, _, d), (_, _, a) in zip(wrong_default, actual))
    assert len(_documented("model, data")) != len(actual)
    with pytest.raises(AttributeError):
        _resolve("influence.no_such_function")
    obj, owner = _resolve("influence.CNTKModel.predict")
    assert owner is influence.CNTKModel and [n for n, _, _ in _actual(obj, owner)] == ["x", "batch_size"]
    obj, owner = _resolve("influence.curvature.hessian.central_difference")
    assert obj.__name__ == "central_difference"
    assert _same_default(np.float32, _documented("dtype=np.float32")[0][2])
    assert not _same_default(np.float64, np.float32) and not _same_default(1, True)


# ---------------------------------------------------------------------------------------- README.md
#: How the README's blocks are run, applied in order to each block's text:
#:  - the venv paths become the interpreter running the tests (the same .venv under `make test`; a
#:    git worktree shares the main checkout's venvs), with this checkout first on PYTHONPATH;
#:  - reduced size: 300 training digits instead of 1,200, and 2 leave-one-out retrainings instead
#:    of 6 (the network, mlp:32 with d = 2,410 parameters, and every flag stay as written): the full
#:    block takes minutes (self's dense Hessian, the retrainings);
#:  - `make` targets run as `make -n` (dry run: the target exists and resolves): `make test` inside
#:    the test suite would recurse, and tests/test_demo.py runs `make demo`'s program at reduced size.
#: A block that sets CHECKOUT= (the command line block) runs as ONE script, as pasted into an empty
#: temporary folder: the CHECKOUT line names a checkout whose .venv is the environment running the
#: tests, and PATH holds no venv, so `influence` and `python` come from `source .../activate`.
README_SUBSTITUTIONS = [
    (".venv/bin/influence", "{python} -m influence"),
    (".venv/bin/python", "{python}"),
    ("x=x[:1200], y=y[:1200]", "x=x[:300], y=y[:300]"),
    ("--test-index 7 --retrainings 6", "--test-index 7 --retrainings 2"),
    (re.compile(r"^make (\w+)", re.M), r"make -n \1"),
]
#: The line of the command block that names the checkout (the one line a user edits).
CHECKOUT_LINE = re.compile(r"^CHECKOUT=\S+", re.M)
#: The README blocks that need CNTK (they skip where CNTK is not importable, i.e. in .venv-modern).
CNTK_MARKERS = ("influence train", "CNTKModel", "adapters.cntk")
#: Seconds one README command may take.
README_TIMEOUT = 900


def _readme_blocks():
    blocks = re.findall(r"^```(bash|sh|python)\n(.*?)^```", _read("README.md"), re.M | re.S)
    return [(lang, text) for lang, text in blocks]


README_BLOCKS = _readme_blocks()


def _substituted(text):
    for old, new in README_SUBSTITUTIONS:
        text = old.sub(new, text) if hasattr(old, "sub") else text.replace(old, new)
    return text.replace("{python}", shlex.quote(sys.executable))


def _shell_commands(text):
    """The commands of a shell block: continuation lines joined, comment-only lines dropped."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            out.append(current)
            current = ""
    return out


def test_readme_has_blocks_to_run():
    langs = [lang for lang, _ in README_BLOCKS]
    assert langs.count("python") >= 1 and langs.count("bash") >= 2, langs
    assert any("influence self" in t for _, t in README_BLOCKS)
    pasted = [t for _, t in README_BLOCKS if CHECKOUT_LINE.search(t)]
    assert len(pasted) == 1 and 'source "$CHECKOUT/.venv/bin/activate"' in pasted[0]
    assert ".venv/bin/" not in pasted[0].replace('"$CHECKOUT/.venv/bin/activate"', "")    # no relative venv path
    for old, _ in README_SUBSTITUTIONS[2:4]:
        assert old in pasted[0], old                                 # the reductions still apply


def _checkout_with_this_venv(tmp_path):
    """A checkout folder whose .venv is the environment running the tests: this one when it is, else a
    folder with a .venv link to it."""
    if os.path.realpath(sys.prefix) == os.path.realpath(os.path.join(ROOT, ".venv")):
        return ROOT
    fake = tmp_path / "checkout"
    fake.mkdir()
    os.symlink(sys.prefix, str(fake / ".venv"))
    return str(fake)
    assert _shell_commands("# c\na \\\n  b\n\nc  # d\n") == ["a    b", "c  # d"]


@pytest.mark.parametrize("lang,text", README_BLOCKS,
                         ids=["%d-%s" % (i, lang) for i, (lang, _) in enumerate(README_BLOCKS)])
def test_readme_block_runs(lang, text, tmp_path, request):
    """Each command of the block in turn, in one folder (the block's commands use each other's
    files); all are run even after a failure, and every failure is reported."""
    if any(m in text for m in CNTK_MARKERS):
        request.getfixturevalue("cntk")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    cwd = ROOT if "make " in text else str(tmp_path)
    if CHECKOUT_LINE.search(text):                  # as pasted into an empty folder: one script
        if not os.path.exists(os.path.join(sys.prefix, "bin", "activate")):
            pytest.skip("the tests do not run in a virtual environment with bin/activate")
        folder = tmp_path / "empty"
        folder.mkdir()
        cwd = str(folder)
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                      if p and os.path.realpath(p) != os.path.realpath(os.path.join(sys.prefix, "bin")))
        env.pop("VIRTUAL_ENV", None)
        text = CHECKOUT_LINE.sub("CHECKOUT=" + shlex.quote(_checkout_with_this_venv(tmp_path)), text)
    text = _substituted(text)
    if CHECKOUT_LINE.search(text):
        commands = [["bash", "-e", "-o", "pipefail", "-c", text]]
    else:
        commands = [[sys.executable, "-c", text]] if lang == "python" else \
            [["bash", "-e", "-o", "pipefail", "-c", c] for c in _shell_commands(text)]
    failures = []
    for cmd in commands:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=README_TIMEOUT)
        if proc.returncode != 0:
            failures.append("$ %s\n(exit %d) %s" % (cmd[-1], proc.returncode, proc.stdout[-2000:]))
    assert not failures, "README commands failed:\n" + "\n".join(failures)
