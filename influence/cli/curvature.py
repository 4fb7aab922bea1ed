"""The flags every command that uses curvature shares (--curvature, --damping), the plan line that
says which curvature was used and why, and how a solve above its tolerance is reported."""
from __future__ import print_function

import argparse
import os
import sys

from ._common import log

__all__ = ["curvature_flags", "curvature_line", "curvature_summary", "check_converged", "NotConverged", "damping_value",
           "factors_summary"]


def damping_value(text):
    """--damping: a number >= 0 or "auto"."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is neither a number nor 'auto' (e.g. --damping 0.01 or "
                                         "--damping auto)" % text)


def curvature_flags(p, what="the curvature"):
    """--curvature and --damping, the same in every command that uses curvature."""
    from ..scoring.choice import CURVATURES
    p.add_argument("--curvature", choices=CURVATURES, default="auto",
                   help="the curvature C of (C + damping·I)⁻¹: hessian (exact, at an optimum), gauss-newton "
                   "(positive semi-definite at any weights: networks trained a few epochs), fisher (the "
                   "empirical Fisher, any loss), ekfac (the EK-FAC approximation: no iterations, fitted "
                   "once), or auto (default: the Hessian at an optimum where H + "
                   "damping·I is positive definite, otherwise Gauss-Newton; printed before the work)")
    p.add_argument("--damping", type=damping_value, default=None, metavar="λ|auto",
                   help="λ added to %s: a number >= 0, or auto (0.1 × the mean eigenvalue, by 10 Hutchinson "
                   "probes); default: 0 with the Hessian, auto with gauss-newton and fisher" % what)


def curvature_line(args, cur):
    """The plan line that says which curvature and damping a command uses, and why."""
    log(args, "influence: curvature: %s" % cur.reason)


def curvature_summary(args, job):
    """{"curvature", "damping", "curvature_reason", "preconditioner", "factors"} of a job's s_test for
    --json and .json outputs (what was asked for when the solve came from a resumed checkpoint);
    EK-FAC's automatic damping, one per block, is "auto"."""
    st = getattr(job, "s_test", None)
    if st is None:
        out = {"curvature": args.curvature, "damping": args.damping, "curvature_reason": "resumed: as asked"}
    else:
        damping = st.damping if st.damping == st.damping else "auto"        # NaN: per block
        out = {"curvature": st.curvature, "damping": damping, "curvature_reason": st.curvature_reason}
    out.update(factors_summary(args))
    return out


def factors_summary(args):
    """{"preconditioner": none|ekfac, "factors": the absolute path of --factors or None}."""
    factors = getattr(args, "factors", None)
    return {"preconditioner": getattr(args, "preconditioner", None) or "none",
            "factors": os.path.abspath(factors) if factors else None}


class NotConverged(Exception):
    """s_test did not reach its tolerance under --strict: the CLI exits with EXIT_NOT_CONVERGED and
    writes nothing."""


def check_converged(args, solutions):
    """Results whose solve ended above its tolerance: with --strict, refused (exit 3, nothing written);
    otherwise a loud NOT CONVERGED line on stderr (also with --quiet) and the text returned, for the
    report. None when every solve converged."""
    bad = [(j, s) for j, s in enumerate(solutions or []) if not s.converged]
    if not bad:
        return None
    worst = max(s.residual for _, s in bad)
    what = ("the inverse-HVP solve did not converge for %d of %d test points (relative residual up to %.3g, "
            "above its tolerance)" % (len(bad), len(solutions), worst))
    if getattr(args, "strict", False):
        raise NotConverged("%s: --strict refuses their scores, so nothing was written; raise --solver-maxiter, "
                           "add --damping, or use --curvature gauss-newton" % what)
    text = ("NOT CONVERGED: %s; the scores are the best iterate's, not what the tolerance promises (pass "
            "--strict to refuse them with exit code 3)" % what)
    print("influence: warning: %s" % text, file=sys.stderr)
    return text
