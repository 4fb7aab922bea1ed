"""One flag per quantity, the same in every command (docs/cli.md's vocabulary table is generated
from :data:`VOCABULARY` and the parsers; tests/test_cli_vocabulary.py checks each row against
``--help``), and the old spellings kept for one release."""
from __future__ import print_function

import argparse
import sys

__all__ = ["VOCABULARY", "VOCABULARY_DEFAULTS", "NO_DEFAULT_REASON", "vocab_flag"]

#: One flag per quantity, the same in every command (docs/cli.md's vocabulary table, generated from
#: this list and the parsers; tests/test_cli_vocabulary.py checks each row against ``--help``):
#: (quantity, flag, default, old spellings accepted for one release with a deprecation line).
VOCABULARY = [
    ("rank of the Lanczos approximation (eigenpairs kept)", "--rank", 50, ("--k",)),
    ("training points removed one at a time and retrained without (leave-one-out)", "--retrainings", 20,
     ("--k",)),
    ("iterations of the inverse-HVP solver at most", "--solver-maxiter", None, ("--maxiter",)),
    ("L-BFGS iterations at most (training, retraining)", "--lbfgs-maxiter", 2000, ("--maxiter",)),
    ("rows of each ranked table", "--top", 10, ()),
    ("shares of a ranking checked, in percent", "--top-percent", [5, 10, 20, 30], ("--top",)),
    ("graph node of the model file to use", "--output-node", None, ("--output",)),
    ("CPU threads of CNTK's math", "--threads", 1, ()),
]
VOCABULARY_DEFAULTS = {flag: default for _, flag, default, _ in VOCABULARY}
#: Why a vocabulary flag has no number as its default (shown in --help and in the table).
NO_DEFAULT_REASON = {"--solver-maxiter": "the solver's own (cg: 10·d for d parameters; lissa: its own step "
                                        "budget; lanczos: 1000)",
                     "--output-node": "the only output (or loss) of the file"}


class _Deprecated(argparse.Action):
    """An old spelling of a flag (hidden from --help): it still works for one release, with a
    deprecation line on stderr naming the new spelling."""

    def __init__(self, option_strings, dest, new=None, **kwargs):
        self.new = new
        argparse.Action.__init__(self, option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print("influence: warning: %s is deprecated and will be removed in the next release; use %s"
              % (option_string, self.new), file=sys.stderr)
        setattr(namespace, self.dest, values)


def vocab_flag(p, flag, help, dest=None, old=(), **kwargs):
    """Add the vocabulary ``flag`` (its default from :data:`VOCABULARY`, stated at the end of the help)
    and, hidden, the old spellings in ``old`` (of the flag's row) that this command used to accept."""
    default = VOCABULARY_DEFAULTS[flag]
    if default is None:
        text = "default: %s" % NO_DEFAULT_REASON[flag]
    elif isinstance(default, list):
        text = "default %s" % " ".join(str(v) for v in default)
    else:
        text = "default %s" % default
    action = p.add_argument(flag, dest=dest, default=default, help="%s (%s)" % (help, text), **kwargs)
    allowed = dict((row[1], row[3]) for row in VOCABULARY)[flag]
    for spelling in old:
        assert spelling in allowed, (flag, spelling)
        p.add_argument(spelling, dest=action.dest, action=_Deprecated, new=flag, help=argparse.SUPPRESS,
                       **{k: v for k, v in kwargs.items() if k in ("type", "nargs", "choices")})
    return action
