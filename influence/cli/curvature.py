"""The flags every command that uses curvature shares (--curvature, --damping), the plan line that
says which curvature was used and why, and how a solve above its tolerance is reported."""
from __future__ import print_function

import argparse
import os
import sys

from ._common import job_inputs, log

__all__ = ["curvature_flags", "curvature_line", "curvature_summary", "curvature_record", "check_converged",
           "NotConverged", "write_provenance", "PROVENANCE_SUFFIX", "damping_value", "factors_summary"]

#: The file next to a .csv or .npy output that says how it was computed: ``scores.csv`` ->
#: ``scores.csv.meta.json`` (a CSV header and a .npy array have no room for the curvature and damping,
#: and the same numbers mean different things under another curvature).
PROVENANCE_SUFFIX = ".meta.json"


def _multiple(text):
    """The factor of a multiple of the mean eigenvalue ("0.1x" → 0.1); None for other text."""
    from ..evaluate.baselines import eigenvalue_multiple
    try:
        return eigenvalue_multiple(text)
    except ValueError:
        return None


def damping_value(text):
    """--damping: a number >= 0 or "auto"."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        if _multiple(text) is not None:
            raise argparse.ArgumentTypeError("%r: a multiple of the mean eigenvalue works in 'evaluate lds' and "
                                             "'evaluate loo' only; here pass a number >= 0 or auto (e.g. "
                                             "--damping auto)" % text)
        raise argparse.ArgumentTypeError("%r is neither a number nor 'auto' (e.g. --damping 0.01 or "
                                         "--damping auto)" % text)


def _sweep_value(text):
    """--damping of evaluate lds/loo: a number >= 0, "auto" or a multiple of the mean eigenvalue ("0.1x")."""
    factor = _multiple(text)
    if factor is None:
        try:
            return damping_value(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError("%r is not a number, 'auto' or a multiple of the mean eigenvalue "
                                             "such as 0.1x (e.g. --damping 1x 0.1x 10x)" % text)
    if not (factor >= 0 and factor < float("inf")):
        raise argparse.ArgumentTypeError("%r: a multiple of the mean eigenvalue is >= 0 (e.g. --damping 0.1x)" % text)
    return text


def curvature_flags(p, what="the curvature", sweep=False):
    """--curvature and --damping, the same in every command that uses curvature; ``sweep`` (evaluate
    lds/loo): --damping takes several values, multiples of the mean eigenvalue among them."""
    from ..scoring.choice import CURVATURES
    p.add_argument("--curvature", choices=CURVATURES, default="auto",
                   help="the curvature C of (C + damping·I)⁻¹: hessian (exact, at an optimum), gauss-newton "
                   "(positive semi-definite at any weights: networks trained a few epochs), fisher (the "
                   "empirical Fisher, any loss), ekfac (the EK-FAC approximation: no iterations, fitted "
                   "once), or auto (default: the Hessian at an optimum where H + "
                   "damping·I is positive definite, otherwise Gauss-Newton; printed before the work)")
    if sweep:
        p.add_argument("--damping", type=_sweep_value, nargs="+", default=None, metavar="λ",
                       help="λ added to %s: a number >= 0, auto (0.1 × the mean eigenvalue, by 10 Hutchinson "
                       "probes) or a multiple of the mean eigenvalue such as 0.1x; also the λ of --retrain "
                       "proximal. Further values add a damping sweep, one more scored method each "
                       "('influence λ=B'), sharing the retrainings, e.g. --damping 1x 0.01x 0.1x 10x; default: "
                       "0 with the Hessian, auto with gauss-newton and fisher" % what)
        return
    p.add_argument("--damping", type=damping_value, default=None, metavar="λ|auto",
                   help="λ added to %s: a number >= 0, or auto (0.1 × the mean eigenvalue, by 10 Hutchinson "
                   "probes); default: 0 with the Hessian, auto with gauss-newton and fisher" % what)


def curvature_line(args, cur):
    """The plan line that says which curvature and damping a command uses, and why."""
    log(args, "influence: curvature: %s" % cur.reason)


def curvature_summary(args, job):
    """{"curvature", "damping", "curvature_reason", "preconditioner", "factors"} of a job's s_test for
    --json and .json outputs (what was asked for when the solve came from a resumed checkpoint, or
    when ``job`` has no s_test yet);
    EK-FAC's automatic damping, one per block, is "auto"."""
    st = getattr(job, "s_test", None)
    if st is None:
        out = {"curvature": args.curvature, "damping": args.damping, "curvature_reason": "resumed: as asked"}
    else:
        out = {"curvature": st.curvature, "damping": _damping_text(st.damping),
               "curvature_reason": st.curvature_reason}
    out.update(factors_summary(args))
    return out


def _damping_text(total):
    """A damping for the records: the number, or "auto" for NaN (EK-FAC's automatic damping, one per block)."""
    return total if total == total else "auto"


def factors_summary(args):
    """{"preconditioner": none|ekfac, "factors": the absolute path of --factors or None}, and where the
    command has --preconditioner, "preconditioner_reason": "asked for", or with auto the choice's reason
    ("preconditioner" is then what was chosen: "auto" when no solve chose, e.g. resumed)."""
    factors = getattr(args, "factors", None)
    out = {"preconditioner": getattr(args, "preconditioner", None) or "none",
           "factors": os.path.abspath(factors) if factors else None}
    if out["preconditioner"] == "auto":
        choice = getattr(getattr(args, "auto_preconditioner", None), "choice", None)
        out["preconditioner"] = "auto" if choice is None else choice.name
        out["preconditioner_reason"] = "auto: %s" % ("no solve chose one (resumed)" if choice is None
                                                     else choice.reason)
    elif hasattr(args, "preconditioner"):
        out["preconditioner_reason"] = "asked for"
    return out


def curvature_record(cur):
    """{"curvature", "damping", "curvature_reason"} of a chosen :class:`~influence.scoring.choice.Curvature`:
    the damping in effect, whether the solver adds it or the operator holds it (damping="auto"); "auto" for
    EK-FAC's automatic damping, one value per block."""
    from ..scoring.scores import total_damping
    return {"curvature": cur.kind, "damping": _damping_text(total_damping(cur)), "curvature_reason": cur.reason}


def write_provenance(args, path, what, record):
    """Write PATH.meta.json: what the file at ``path`` holds and how it was computed (toolkit version,
    command, inputs with their fingerprints, curvature, damping, convergence). ``record``: the
    command's own fields (curvature_summary, solver, ...)."""
    from .._version import __version__
    from ..common.files import write_json
    body = {"format": "cntk-influence-output/1", "file": os.path.basename(path), "holds": what,
            "influence_version": __version__, "command": args.command,
            "model": os.path.abspath(args.model), "inputs": job_inputs(args, {})}
    for flag in ("train", "test", "data"):
        value = getattr(args, flag, None)
        if isinstance(value, str):
            body[flag] = os.path.abspath(value)
    body.update(record)
    write_json(path + PROVENANCE_SUFFIX, body)


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
