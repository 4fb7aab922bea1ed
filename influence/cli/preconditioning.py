"""``--preconditioner auto`` at the command line: the solver option that carries --factors to the
library's choice (:mod:`influence.scoring.preconditioning`), and what says the choice before the solve:
the plan line of ``score --solver auto``, else a line of its own."""
from __future__ import print_function

from ._common import log

__all__ = ["preconditioner_options", "plan_suffix"]


def preconditioner_options(args, preconditioner, plan_line=False):
    """The solver options, {} or {"preconditioner": P}, for what :func:`influence.cli.factors.use_factors`
    returned (None, "ekfac", a loaded EKFAC, or "auto"). P is that value, or with ``--preconditioner
    auto`` an :class:`~influence.scoring.preconditioning.AutoPreconditioner` carrying the loaded factors, kept as
    ``args.auto_preconditioner`` for the records. Its choice is printed on stderr, once per distinct
    line, when there was one to make (cg or lissa); ``plan_line``: the command prints the plan of
    ``--solver auto`` (:func:`plan_suffix` then says it there instead)."""
    if (getattr(args, "preconditioner", None) or "none") != "auto":
        return {} if preconditioner is None else {"preconditioner": preconditioner}
    from ..curvature import EKFAC
    from ..scoring.preconditioning import AutoPreconditioner
    said = set()

    def heard(choice):
        if (plan_line and args.solver == "auto") or not choice.considered:
            return
        line = "influence: %s, for the %s solves" % (choice, args.solver)
        if line not in said:
            said.add(line)
            log(args, line)
    args.auto_preconditioner = AutoPreconditioner(preconditioner if isinstance(preconditioner, EKFAC) else None,
                                                  heard)
    return {"preconditioner": args.auto_preconditioner}


def plan_suffix(args):
    """What the plan line of ``--solver auto`` adds about the preconditioner ("" without one)."""
    auto = getattr(args, "auto_preconditioner", None)
    if auto is not None and auto.choice is not None:
        return "; " + str(auto.choice)
    return ""
