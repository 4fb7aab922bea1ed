"""One flag vocabulary across the commands (issue 22 item 5), checked from the argparse parsers: every
row of docs/cli.md's vocabulary table (rendered by docs/gen_cli.py from ``influence.cli.VOCABULARY``
and the parsers) matches each listed command's ``--help``; a flag means one thing everywhere; old
spellings still parse, hidden, with a deprecation line; ``info --json`` is JSON; a --model that is not
a regular file gets the right message; --out's extension decides the format; --resume with nothing
to resume says so."""
import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys

import pytest

from influence.cli import VOCABULARY, build_parser, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gen_cli():
    spec = importlib.util.spec_from_file_location("gen_cli", os.path.join(ROOT, "docs", "gen_cli.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _gen_cli()
PARSER = build_parser()
COMMANDS = dict(GEN.commands(PARSER))
ROWS = GEN.vocabulary_rows(PARSER, VOCABULARY)


def _flat(text):
    return " ".join(text.split())


def _option_help(help_text, flag):
    """The help paragraph of ``flag`` in a --help text (whitespace flattened)."""
    lines = help_text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s+%s(\s|,|$)" % re.escape(flag), line):
            block = [line]
            for nxt in lines[i + 1:]:
                if re.match(r"^\s{2}-", nxt) or not nxt.startswith("    "):
                    break
                block.append(nxt)
            return _flat(" ".join(block))
    return None


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_the_vocabulary_table_has_the_issue_quantities():
    flags = [flag for _, flag, _, _ in VOCABULARY]
    for flag in ("--rank", "--retrainings", "--solver-maxiter", "--lbfgs-maxiter", "--top", "--threads"):
        assert flag in flags
    text = open(os.path.join(ROOT, "docs", "cli.md"), encoding="utf-8").read()
    table = text.split(GEN.VOCAB_BEGIN, 1)[1].split(GEN.VOCAB_END, 1)[0]
    assert text.index(GEN.VOCAB_BEGIN) < text.index(GEN.BEGIN)              # at the top of the page
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == len(VOCABULARY) + 1


@pytest.mark.parametrize("row", ROWS, ids=[r[1] for r in ROWS])
def test_every_vocabulary_row_matches_help(row):
    quantity, flag, default, names, old = row
    assert names, flag
    for name in names:
        help_text = COMMANDS["influence " + name].format_help()
        paragraph = _option_help(help_text, flag)
        assert paragraph is not None, "influence %s --help does not show %s" % (name, flag)
        shown = default.strip("`")
        if shown.startswith("["):                                    # a list default: "5 10 20 30"
            shown = " ".join(shown.strip("[]").replace(",", " ").split())
        assert ("(default %s)" % shown in paragraph or "(default: %s)" % _flat(shown) in paragraph), \
            "influence %s --help: %s says %r, the vocabulary says default %s" % (name, flag, paragraph, shown)
        for spelling in old:                                          # old spellings are hidden
            assert not re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(spelling),
                                 help_text.split("optional arguments:")[-1].split("options:")[-1]
                                 .replace(flag, "")), (name, spelling)


def test_a_flag_means_one_thing_in_every_command():
    """A visible flag has one dest everywhere, and a vocabulary quantity (its dest) is spelled only
    by its vocabulary flag."""
    dests, vocab_dest = {}, {}
    for name, sub in COMMANDS.items():
        for action in GEN._flags(sub):
            for s in action.option_strings:
                dests.setdefault(s, set()).add(action.dest)
                if s in [f for _, f, _, _ in VOCABULARY]:
                    vocab_dest[action.dest] = s
    clashes = {s: d for s, d in dests.items() if len(d) > 1}
    assert not clashes, clashes
    for name, sub in COMMANDS.items():
        for action in GEN._flags(sub):
            if action.dest in vocab_dest:
                assert vocab_dest[action.dest] in action.option_strings, (name, action.option_strings)


@pytest.mark.parametrize("command,old,new,value", [
    (["score", "--model", "m", "--train", "t", "--test", "q"], "--k", "rank", "7"),
    (["score", "--model", "m", "--train", "t", "--test", "q"], "--maxiter", "solver_maxiter", "9"),
    (["self", "--model", "m", "--train", "t"], "--k", "rank", "7"),
    (["verify", "--model", "m", "--train", "t", "--test", "q", "--test-index", "1"], "--k", "retrainings", "3"),
    (["train", "--data", "d", "--out", "o"], "--maxiter", "lbfgs_maxiter", "9"),
    (["evaluate", "loo", "--model", "m", "--train", "t", "--test", "q"], "--k", "retrainings", "3"),
    (["evaluate", "mislabel", "--model", "m", "--train", "t"], "--top", "top_percent", "5"),
    (["hvp", "--model", "m", "--data", "d", "--vector", "v"], "--output", "output", "z"),
])
def test_old_spellings_still_work_with_a_deprecation_line(command, old, new, value):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        args = build_parser().parse_args(command + [old, value])
    expected = [float(value)] if new == "top_percent" else (value if new == "output" else int(value))
    assert getattr(args, new) == expected
    line = err.getvalue().strip()
    assert line.startswith("influence: warning: %s is deprecated" % old) and "use --" in line, line
    assert len(line.splitlines()) == 1


def test_info_json_prints_json():
    code, out, err = _run(["info", "--json"])
    assert code == 0, err
    info = json.loads(out)
    assert info["influence"] and info["numpy"] and "cntk" in info and info["threads"] == 1


def test_threads_reach_a_fresh_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "influence", "info", "--json", "--threads", "2"], cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.decode())["threads"] == 2
    code, _, err = _run(["info", "--threads", "0"])
    assert code == 2 and "--threads 0 is not a positive integer" in err


@pytest.mark.parametrize("model,needle", [
    ("/dev/null", "--model /dev/null is not a regular file"),
    ("{tmp}", "--model {tmp} is a folder"),
    ("{tmp}/missing.cntk", "--model {tmp}/missing.cntk: no such file"),
])
def test_a_model_that_is_not_a_regular_file(tmp_path, model, needle):
    model, needle = model.format(tmp=tmp_path), needle.format(tmp=tmp_path)
    code, _, err = _run(["score", "--model", model, "--train", "t.npz", "--test", "q.npz"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


@pytest.mark.parametrize("command,out,needle", [
    (["score", "--test", "q.npz"], "s.txt", "'influence score' writes .csv, .json or .npy files"),
    (["self"], "r.parquet", "'influence self' writes .csv, .json or .npy files"),
    (["score", "--test", "q.npz"], "scores", "give a name ending in .csv, .json or .npy, e.g. --out"),
])
def test_an_out_extension_the_command_cannot_write(tmp_path, command, out, needle):
    out = str(tmp_path / out)
    code, _, err = _run(command[:1] + ["--model", "/dev/null", "--train", "t.npz"] + command[1:] + ["--out", out])
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert os.listdir(str(tmp_path)) == []


def test_out_npy_writes_the_score_matrix_for_few_test_points(cntk, tmp_path):
    import numpy as np
    import influence
    x, y = influence.load_digits()
    np.savez(str(tmp_path / "train.npz"), x=x[:200], y=y[:200])
    np.savez(str(tmp_path / "test.npz"), x=x[200:205], y=y[200:205])
    model = str(tmp_path / "m.cntk")
    assert _run(["train", "--data", str(tmp_path / "train.npz"), "--l2", "1e-2", "--out", model, "--quiet"])[0] == 0
    base = ["score", "--model", model, "--train", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz"),
            "--test-index", "1", "3", "--solver", "direct", "--quiet"]
    code, out, err = _run(base + ["--out", str(tmp_path / "s.npy")])
    assert code == 0, err
    matrix = np.load(str(tmp_path / "s.npy"))                       # a real .npy, not CSV text
    assert matrix.shape == (2, 200) and matrix.dtype == np.float64
    code, out, err = _run(base + ["--out", str(tmp_path / "s.json")])
    assert code == 0, err
    np.testing.assert_array_equal(np.array(json.load(open(str(tmp_path / "s.json")))["influence"]), matrix)
    # self: .npy is the self-influence vector; --resume with nothing to resume says so
    code, out, err = _run(["self", "--model", model, "--train", str(tmp_path / "train.npz"), "--out",
                           str(tmp_path / "r.npy"), "--resume", "--quiet"])
    assert code == 0, err
    assert "--resume: %s.partial/ holds nothing to resume; starting" % str(tmp_path / "r.npy") in err
    assert np.load(str(tmp_path / "r.npy")).shape == (200,)
