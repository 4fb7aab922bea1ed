"""The README's verify example, explained (docs/evaluation.md; issue 21 item 5).

README.md trains an MLP (mlp:32, tanh, float64, l2 0.01, d = 2,410) on the first 1,200 digits and runs
``influence verify --test-index 7``: Pearson ≈ 0.47 between the predicted and the measured leave-one-out
changes of the test loss, with some of the most influential points predicted 10–40× too large. This
script measures why. For each removed point (verify's default choice: the 10 largest |I| and 10 at
random, seed 0, plus the points the issue quoted when verify did not pick them) it reports

- the prediction −I/n of ``influence.verify_loo`` (cg s_test at the trained weights, forward scoring),
  and g_testᵀH⁻¹g_i/n from two dense Hessians: H_T at the trained weights (what verify inverts) and H*
  at w*, the trained weights re-tightened to max|∂R/∂w| ~ 5e-10 (where verify's retrainings start);
- the measured leave-one-out change (``verify_loo``: warm L-BFGS to gtol, with its ``noise`` estimate)
  and the same removal solved here by L-BFGS preconditioned with H* (to max|∂R/∂v| 1e-12); where the two
  end in different minima, both objective values;
- the measured change of a DOWN-WEIGHTING, objective R(w) − ε·ℓ_i(w) with ε·n = 1e-4 … 0.1, divided by
  ε·n: the influence function is the derivative at ε = 0, so this must approach the prediction made at
  the weights the retraining starts from;
- where H⁻¹ acts: the share of Σ_k |terms| of g_testᵀH⁻¹g_i = Σ_k (g_test·u_k)(u_k·g_i)/λ_k in the
  directions with λ_k < 10·λ_min and in the bottom 1 % of the spectrum, for H_T and H*;
- the size of the removal step, ‖H*⁻¹g_i‖/n and the Newton decrement sqrt(g_iᵀH*⁻¹g_i)/n, and how far the
  quadratic model holds along it: ρ = ‖∇R_{−i}(w* + H*⁻¹g_i/n)‖ / ‖∇R_{−i}(w*)‖, the gradient left at the
  weights the influence function predicts relative to the one it removes (0 for a quadratic R);
- the flattest eigenvector u of H_T: R and its curvature along u from w*, the steps along u (predicted
  by H_T, by H*, measured), and the Newton step H_T⁻¹∇R the trained weights still miss.

    OMP_NUM_THREADS=1 .venv/bin/python bench/verify_analysis.py --out bench/results/verify_analysis.json

It trains the README's model first with the README's command in a temporary folder (``--model mlp.cntk``
reuses one trained by that command). Nothing is tuned: the numbers are what the run measures. About
6–7 minutes on 2 shared cores (verify's 20 retrainings take half of it, the two dense Hessians 2 × ~1 min).
"""
from __future__ import print_function

import argparse
import collections
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import influence                                                   # noqa: E402
from influence.curvature.hessian import HessianOperator            # noqa: E402
from influence.evaluate.leave_one_out import LOO_GTOL               # noqa: E402
from influence.fitting import minimize_lbfgs                       # noqa: E402
from influence.solvers.dense import dense_matrix                   # noqa: E402

#: The points issue 21 item 5 quoted (predicted, measured at gtol 1e-8).
ISSUE_POINTS = [876, 900, 897, 1118, 1104, 103]
TRAIN_COMMAND = ["train", "--data", "train.npz", "--arch", "mlp:32", "--l2", "0.01", "--dtype", "float64",
                 "--gtol", "1e-7", "--out", "mlp.cntk"]
#: The retrainings here stop at this max |∂R/∂v| in the Hessian-preconditioned coordinates v.
PRECONDITIONED_GTOL = 1e-12
#: Distances along the flattest eigenvector u at which R is probed (‖w*‖ is printed for scale).
PROFILE_T = [1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]
#: Dampings δ of the extra predictions g_testᵀ(H + δI)⁻¹g_i/n (from the same eigen-decomposition).
DAMPINGS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2]


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return None


def prepare(workdir, model_path):
    """The README's data files and model (trained with the README's command unless given)."""
    x, y = influence.load_digits()
    np.savez(os.path.join(workdir, "train.npz"), x=x[:1200], y=y[:1200])
    np.savez(os.path.join(workdir, "test.npz"), x=x[1200:], y=y[1200:])
    if model_path is None:
        env = dict(os.environ, OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        subprocess.check_call([sys.executable, "-m", "influence"] + TRAIN_COMMAND + ["--quiet"], cwd=workdir, env=env)
        model_path = os.path.join(workdir, "mlp.cntk")
    return model_path


class Downweighted(object):
    """R(w) − ε·ℓ_i(w) (R with 1/n weights and the L2 term) and its gradient at the model's weights;
    ε = 1/n is the leave-one-out objective R_{−i} of verify_loo, ε = 0 is R."""

    def __init__(self, model, train, i, eps):
        self.model, self.train, self.eps = model, train, float(eps)
        self.rows = None if i is None or eps == 0 else train.subset(np.array([i]))
        self.n = len(train)

    def __call__(self):
        m = self.model
        w = m.get_params().astype(np.float64)
        loss, grad = m.loss_and_grad_sum(self.train)
        f, g = loss / self.n + 0.5 * m.l2 * float(w @ w), grad / self.n + m.l2 * w
        if self.rows is not None:
            li, gi = m.loss_and_grad_sum(self.rows)
            f, g = f - self.eps * li, g - self.eps * gi
        return f, g


class Eig(object):
    """The eigen-decomposition H = U·diag(lam)·Uᵀ of a dense Hessian, ascending eigenvalues."""

    def __init__(self, lam, U):
        self.lam, self.U = lam, U
        self.d = lam.size
        self.flat = lam < 10 * lam[0]                                # eigenvalues < 10·λ_min
        self.bottom = np.arange(self.d) < int(np.ceil(0.01 * self.d))  # the bottom 1 %

    def solve(self, g, damping=0.0):
        return self.U @ ((self.U.T @ g) / (self.lam + damping))

    def summary(self, pred, u):
        lam = self.lam
        return {"lambda_min": float(lam[0]), "lambda_max": float(lam[-1]), "lowest": lam[:5].tolist(),
                "n_lt_10_lambda_min": int(self.flat.sum()), "bottom_1pct": int(self.bottom.sum()),
                "bottom_1pct_lambda_max": float(lam[self.bottom][-1]),
                "rayleigh_u": float(np.sum((self.U.T @ u) ** 2 * lam)),
                "flat_share_of_s_test_norm2": float(np.sum(pred.a[self.flat] ** 2 / lam[self.flat] ** 2)
                                                    / float(pred.s @ pred.s))}


def decomposed(model, train):
    """The dense Hessian of R at the model's weights (d products, symmetrised), eigen-decomposed."""
    H, _ = dense_matrix(HessianOperator(model, train))
    lam, U = np.linalg.eigh(H)
    if lam[0] <= 0:
        raise SystemExit("H has %d eigenvalues <= 0 (smallest %.3g): this analysis assumes the README's positive "
                         "definite Hessian" % (int(np.sum(lam <= 0)), lam[0]))
    return Eig(lam, U)


class Predictions(object):
    """g_testᵀH⁻¹g_i/n of the points, term by term over the eigen-directions of H."""

    def __init__(self, eig, g_test, G, n):
        self.eig, self.n = eig, n
        self.s = eig.solve(g_test)
        self.g_test = g_test
        self.a, B = eig.U.T @ g_test, G @ eig.U
        self.B = B
        self.contrib = self.a[None, :] * B / eig.lam[None, :]         # g_test·u_k u_k·g_i / λ_k
        self.steps = (B / eig.lam[None, :]) @ eig.U.T / n            # Δw predicted = H⁻¹g_i / n, rows

    def row(self, j, prefix, dampings, u):
        e, c = self.eig, self.contrib[j]
        absc = np.abs(c)
        out = {"predicted": c.sum() / self.n, "predicted_without_flat": c[~e.flat].sum() / self.n,
               "share_lt_10_lambda_min": absc[e.flat].sum() / absc.sum(),
               "share_bottom_1pct": absc[e.bottom].sum() / absc.sum(),
               "step_norm": np.linalg.norm(self.steps[j]),
               "newton_decrement": np.sqrt(np.sum(self.B[j] ** 2 / e.lam)) / self.n,
               "u_step": float(u @ self.steps[j])}
        for dm in dampings:
            out["predicted_damped_%g" % dm] = float(np.sum(self.a * self.B[j] / (e.lam + dm))) / self.n
        return {prefix + k: float(v) for k, v in out.items()}


def preconditioned_lbfgs(model, fn, eig, w0, gtol=PRECONDITIONED_GTOL, maxiter=3000):
    """Minimise ``fn`` from w0 by scipy's L-BFGS in the coordinates v of w = w0 + U·Λ^(−1/2)·v (U, Λ the
    eigen-decomposition ``eig`` of a dense Hessian): there the curvature is ≈ I, so L-BFGS converges to
    max |∂/∂v| <= gtol in tens of iterations (in w it faces κ(H) ~ 1e7). The test-loss error left is
    s·r = (Λ^(−1/2)Uᵀg_test)·∇_v (s = H⁻¹g_test). Leaves the weights at the result; returns
    (w, gradient ∇_w, scipy result)."""
    from scipy.optimize import minimize
    U, scale = eig.U, 1.0 / np.sqrt(eig.lam)
    w0 = np.asarray(w0, dtype=np.float64)

    def fun(v):
        model.set_params(w0 + U @ (scale * v))
        f, g = fn()
        return f, scale * (U.T @ g)

    res = minimize(fun, np.zeros(w0.size), jac=True, method="L-BFGS-B",
                   options={"gtol": gtol, "ftol": 0.0, "maxiter": maxiter, "maxcor": 30, "maxfun": 2 * maxiter + 20})
    w = w0 + U @ (scale * res.x)
    model.set_params(w)
    return w, fn()[1], res


def profile(model, fn, w, u, ts):
    """R and the force q(t) = uᵀ∇R along w + t·u, t = ±ts: the curvature of R along u over distance t
    (a quadratic R has q(t)/t = uᵀHu for every t)."""
    model.set_params(w)
    f0, g0 = fn()
    q0 = float(u @ g0)
    out = []
    for t in ts:
        fq = []
        for sign in (1.0, -1.0):
            model.set_params(w + sign * t * u)
            f, g = fn()
            fq.append((f - f0, float(u @ g)))
        out.append({"t": t, "dR_plus": fq[0][0], "dR_minus": fq[1][0], "curvature_central": (fq[0][1] - fq[1][1]) / (2 * t),
                    "secant_plus": (fq[0][1] - q0) / t, "secant_minus": (q0 - fq[1][1]) / t})
    model.set_params(w)
    return out


def spearman(a, b):
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).correlation)


def pearson(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def run(args):
    stamp = {"time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.machine(),
             "cores": os.cpu_count(), "python": platform.python_version(), "influence": influence.__version__,
             "load_before": loadavg(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    times = {}
    workdir = args.workdir or tempfile.mkdtemp(prefix="verify_analysis_")
    os.makedirs(workdir, exist_ok=True)
    try:
        t = time.time()
        model_path = prepare(workdir, args.model)
        times["train (README command)"] = time.time() - t
        model = influence.CNTKModel.load(model_path)         # loss and l2 from mlp.cntk.json, as the CLI
        train = influence.load_npz(os.path.join(workdir, "train.npz"))
        test = influence.load_npz(os.path.join(workdir, "test.npz")).subset(np.array([args.test_index]))
        train, test = model.validate(train, "train.npz"), model.validate(test, "test.npz")
        n, d = len(train), model.n_params
        print("model %s: d = %d, l2 = %g, n = %d, test point %d; load %s" % (model_path, d, model.l2, n,
                                                                         args.test_index, loadavg()))

        # 1. verify_loo as `influence verify` runs it (cg, damping/curvature auto, seed 0)
        t = time.time()
        res = influence.verify_loo(model, train, test, k=args.retrainings, random_state=0, gtol=args.gtol)
        extra = [i for i in args.extra if i not in set(res.indices.tolist())]
        res2 = influence.verify_loo(model, train, test, indices=extra, gtol=args.gtol) if extra else None
        times["verify_loo (%d + %d retrainings)" % (len(res.indices), len(extra))] = time.time() - t
        idx = np.concatenate([res.indices, extra]).astype(np.int64)
        kind = ["top"] * (args.retrainings // 2) + ["random"] * (len(res.indices) - args.retrainings // 2) + \
            ["issue"] * len(extra)
        v_pred = np.concatenate([res.predicted] + ([res2.predicted] if res2 else []))
        v_act = np.concatenate([res.actual] + ([res2.actual] if res2 else []))
        v_noise = np.concatenate([res.noise] + ([res2.noise] if res2 else []))
        print("verify_loo: Pearson %.3f, Spearman %.3f on its %d points (retrain %s, gtol %g); load %s"
              % (res.pearson, res.spearman, len(res.indices), res.retrain, args.gtol, loadavg()))

        with model.preserving_params():
            # 2. s_test as verify computes it (cg with its defaults), to compare with the dense solve
            t = time.time()
            st = influence.s_test(model, train, test)
            s_cg, sol = st.vectors[0], st.solutions[0]
            times["s_test (cg, as verify)"] = time.time() - t

            # 3. the dense Hessian at the trained weights (what verify's s_test inverts, there by cg)
            t = time.time()
            T = decomposed(model, train)
            times["dense Hessian + eigh (trained weights)"] = time.time() - t
            w_trained = model.get_params().astype(np.float64)
            loss_trained = float(model.per_example_losses(test)[0])
            at_trained = Predictions(T, model.per_example_grads(test)[0], model.per_example_grads(train)[idx], n)
            u = T.U[:, 0]                                            # the flattest direction at the trained weights

            # 4. w*: the trained weights re-tightened (as verify_loo re-tightens its reference), its Hessian
            t = time.time()
            base_fn = Downweighted(model, train, None, 0.0)
            model.set_params(w_trained)
            r_trained = base_fn()[1]
            newton_trained = T.solve(r_trained)                      # the Newton step the trained weights still miss
            w_star, r0, res0 = preconditioned_lbfgs(model, base_fn, T, w_trained)
            base = float(model.per_example_losses(test)[0])
            S = decomposed(model, train)
            times["re-tighten w*, dense Hessian + eigh at w*"] = time.time() - t
            model.set_params(w_star)
            g_t = model.per_example_grads(test)[0]
            at_star = Predictions(S, g_t, model.per_example_grads(train)[idx], n)
            prof = profile(model, base_fn, w_star, u, PROFILE_T)
            print("w*: max|∂R/∂w| %.2e after %d preconditioned L-BFGS iterations (‖w* − trained‖ = %.3g, along u "
                  "%.3g); load %s" % (np.max(np.abs(r0)), res0.nit, np.linalg.norm(w_star - w_trained),
                                      u @ (w_star - w_trained), loadavg()))

            # 5. retrain R − ε·ℓ_i for ε·n in the fractions (1 = leave-one-out) from w*
            t = time.time()
            rows = []
            for j, i in enumerate(idx):
                row = {"index": int(i), "kind": kind[j], "predicted_verify": float(v_pred[j]),
                       "loo_verify": float(v_act[j]), "loo_verify_noise": float(v_noise[j])}
                row.update(at_trained.row(j, "trained_", DAMPINGS, u))
                row.update(at_star.row(j, "star_", (), u))
                for frac in [1.0] + sorted(args.fractions):
                    fn = Downweighted(model, train, i, frac / n)
                    model.set_params(w_star)
                    g0 = fn()[1]
                    # the quadratic model along the predicted step: gradient left at w* + frac·H*⁻¹g_i/n
                    model.set_params(w_star + frac * at_star.steps[j])
                    rho = float(np.linalg.norm(fn()[1]) / np.linalg.norm(g0))
                    w, r, res_ = preconditioned_lbfgs(model, fn, S, w_star)
                    change = float(model.per_example_losses(test)[0]) - base
                    key = "loo" if frac == 1.0 else "down_%g" % frac
                    row[key] = change / frac
                    row[key + "_noise"] = (abs(float(at_star.s @ r)) + abs(float(at_star.s @ r0))) / frac
                    row[key + "_rho"] = rho
                    row[key + "_iterations"] = int(res_.nit)
                    row[key + "_u_step"] = float(u @ (w - w_star)) / frac
                    if frac == 1.0:
                        dw = w - w_star
                        step = at_star.steps[j]
                        row["loo_linear"] = float(g_t @ dw)            # the test loss linear in the actual Δw
                        row["loo_linear_u"] = float((g_t @ u) * (u @ dw))    # ... its part along u
                        row["loo_step_ratio"] = float(np.linalg.norm(dw) / np.linalg.norm(step))
                        row["loo_step_cosine"] = float(dw @ step / (np.linalg.norm(dw) * np.linalg.norm(step)))
                        row["loo_objective"] = float(fn()[0])
                if abs(row["loo"] - row["loo_verify"]) > 10 * (row["loo_noise"] + row["loo_verify_noise"]):
                    # the two retrainings disagree: redo verify's (warm L-BFGS in w from w*) and compare minima
                    fn = Downweighted(model, train, i, 1.0 / n)
                    model.set_params(w_star)
                    minimize_lbfgs(model, train.subset(np.delete(np.arange(n), i)), n, args.gtol, 5000, 30)
                    row["loo_wlbfgs"] = float(model.per_example_losses(test)[0]) - base
                    row["loo_wlbfgs_objective"] = float(fn()[0])
                    row["loo_wlbfgs_u_step"] = float(u @ (model.get_params() - w_star))
                rows.append(row)
                print("  point %4d done (%d/%d), load %s" % (i, j + 1, len(idx), loadavg()))
            times["retrainings here"] = time.time() - t
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    cg = {"converged": bool(sol.converged), "n_iter": int(sol.n_iter), "residual": float(sol.residual),
          "u_component_ratio": float((u @ s_cg) / (u @ at_trained.s)),
          "rel_diff_without_u": float(np.linalg.norm((s_cg - at_trained.s) - u * (u @ (s_cg - at_trained.s)))
                                      / np.linalg.norm(at_trained.s - u * (u @ at_trained.s)))}
    reference = {"max_grad": float(np.max(np.abs(r0))), "grad_norm": float(np.linalg.norm(r0)),
                 "iterations": int(res0.nit), "distance_from_trained": float(np.linalg.norm(w_star - w_trained)),
                 "distance_along_u": float(u @ (w_star - w_trained)), "norm_w_star": float(np.linalg.norm(w_star)),
                 "test_loss_trained": loss_trained, "test_loss_star": base,
                 "trained_max_grad": float(np.max(np.abs(r_trained))), "trained_grad_norm": float(np.linalg.norm(r_trained)),
                 "trained_grad_along_u": float(u @ r_trained),
                 "trained_newton_step_norm": float(np.linalg.norm(newton_trained)),
                 "trained_newton_step_along_u": float(u @ newton_trained),
                 "trained_newton_test_change": float(-at_trained.g_test @ newton_trained)}
    return {"stamp": dict(stamp, load_after=loadavg()), "seconds": times, "rows": rows,
            "spectrum_trained": T.summary(at_trained, u), "spectrum_star": S.summary(at_star, u),
            "reference": reference, "s_test_cg": cg, "profile_u": prof, "dampings": DAMPINGS,
            "verify": {"pearson": res.pearson, "spearman": res.spearman, "indices": res.indices.tolist(),
                       "note": res.note, "gtol": args.gtol, "retrain": res.retrain},
            "train_command": " ".join(["influence"] + TRAIN_COMMAND), "test_index": args.test_index,
            "fractions": sorted(args.fractions)}


def summarise(out):
    rows, fr = out["rows"], out["fractions"]
    ref, cg = out["reference"], out["s_test_cg"]
    for name, sp in (("trained weights", out["spectrum_trained"]), ("w*", out["spectrum_star"])):
        print("\nHessian at the %s: λ_min %.3g (next %.3g), λ_max %.3g; %d eigenvalue(s) < 10·λ_min; bottom 1 %% = "
              "%d directions (λ <= %.3g); uᵀHu = %.3g; the directions < 10·λ_min carry %.1f %% of ‖s_test‖²"
              % (name, sp["lambda_min"], sp["lowest"][1], sp["lambda_max"], sp["n_lt_10_lambda_min"], sp["bottom_1pct"],
                 sp["bottom_1pct_lambda_max"], sp["rayleigh_u"], 100 * sp["flat_share_of_s_test_norm2"]))
    print("u = the flattest eigenvector at the trained weights. w* (max|∂R/∂w| %.1e, ‖∇R‖ %.1e) is %.3g from the "
          "trained weights, %.3g of it along u (‖w*‖ = %.3g)" % (ref["max_grad"], ref["grad_norm"],
                                                                 ref["distance_from_trained"], ref["distance_along_u"],
                                                                 ref["norm_w_star"]))
    print("at the trained weights max|∂R/∂w| = %.2g, ‖∇R‖ = %.2g, uᵀ∇R = %.2g: the Newton step H_T⁻¹∇R there has norm "
          "%.3g (%.3g along u) and changes the test loss by %.3g to first order; the test loss measured at the trained "
          "weights %.7g, at w* %.7g" % (ref["trained_max_grad"], ref["trained_grad_norm"], ref["trained_grad_along_u"],
                                       ref["trained_newton_step_norm"], ref["trained_newton_step_along_u"],
                                       ref["trained_newton_test_change"], ref["test_loss_trained"], ref["test_loss_star"]))
    print("cg's s_test (as verify: converged %s, %d iterations, residual %.1e) has %.3g× the dense s_test's component "
          "along u and differs from it by %.1e (relative) elsewhere" % (cg["converged"], cg["n_iter"], cg["residual"],
                                                                        cg["u_component_ratio"], cg["rel_diff_without_u"]))
    print("\nR along u from w*: curvature (uᵀ∇R(w*+t·u) − uᵀ∇R(w*−t·u))/2t, and R(w* ± t·u) − R(w*)")
    print("%8s %12s %12s %12s %12s" % ("t", "curvature", "secant +", "ΔR(+t)", "ΔR(−t)"))
    for p in out["profile_u"]:
        print("%8g %12.3e %12.3e %12.3e %12.3e" % (p["t"], p["curvature_central"], p["secant_plus"], p["dR_plus"],
                                                  p["dR_minus"]))
    print("\nchanges of the test loss (the down-weightings' divided by ε·n); pred = verify's; H_T, H* = dense "
          "Hessians at the trained weights and at w*")
    print("%5s %6s %10s %10s %10s %10s %10s %8s" % ("point", "kind", "pred", "pred(H_T)", "pred(H*)",
                                                 "LOO verify", "LOO here", "noise")
          + "".join(" %10s" % ("ε·n=%g" % f) for f in fr))
    for r in rows:
        print("%5d %6s %+10.3e %+10.3e %+10.3e %+10.3e %+10.3e %8.1e" % (
            r["index"], r["kind"], r["predicted_verify"], r["trained_predicted"], r["star_predicted"],
            r["loo_verify"], r["loo"], r["loo_noise"])
            + "".join(" %+10.3e" % r["down_%g" % f] for f in fr))
    print("\nwhere the predictions come from and how far they reach (shares of Σ|terms| of g_testᵀH⁻¹g_i; u-steps "
          "along u: p(H_T), p(H*) predicted, m measured in the leave-one-out retraining)")
    print("%5s %8s %7s %7s %7s %7s %9s %9s %9s %9s %9s %9s %10s %10s" % (
        "point", "pred/LOO", "T<10λm", "T bot1%", "*<10λm", "* bot1%", "‖H*⁻¹g‖/n", "decr(H*)", "ρ(LOO)",
        "u p(H_T)", "u p(H*)", "u m", "lin Δw", "test-curv"))
    for r in rows:
        print("%5d %8.2f %7.3f %7.3f %7.3f %7.3f %9.2e %9.2e %9.3g %+9.2e %+9.2e %+9.2e %+10.2e %+10.2e" % (
            r["index"], r["predicted_verify"] / r["loo"], r["trained_share_lt_10_lambda_min"],
            r["trained_share_bottom_1pct"], r["star_share_lt_10_lambda_min"], r["star_share_bottom_1pct"],
            r["star_step_norm"], r["star_newton_decrement"], r["loo_rho"], r["trained_u_step"], r["star_u_step"],
            r["loo_u_step"], r["loo_linear"], r["loo"] - r["loo_linear"]))
    for r in rows:
        if "loo_wlbfgs" in r:
            print("point %d: the retraining here and verify's disagree; verify's L-BFGS in w from w* again: change %+.3e "
                  "(verify %+.3e), u-step %+.3g, R_−i %.12g; here: change %+.3e, u-step %+.3g, R_−i %.12g"
                  % (r["index"], r["loo_wlbfgs"], r["loo_verify"], r["loo_wlbfgs_u_step"], r["loo_wlbfgs_objective"],
                     r["loo"], r["loo_u_step"], r["loo_objective"]))
    loo = np.array([r["loo"] for r in rows])
    preds = {"verify (cg, H_T)": [r["predicted_verify"] for r in rows],
             "dense H_T": [r["trained_predicted"] for r in rows],
             "dense H_T without u": [r["trained_predicted_without_flat"] for r in rows]}
    for dm in out["dampings"]:
        preds["dense H_T + %g·I" % dm] = [r["trained_predicted_damped_%g" % dm] for r in rows]
    preds["dense H*"] = [r["star_predicted"] for r in rows]
    corr = collections.OrderedDict()
    for name, p in preds.items():
        corr["LOO vs %s" % name] = (pearson(p, loo), spearman(p, loo))
    loo_v = [r["loo_verify"] for r in rows]
    for name in ["dense H_T without u", "dense H*"]:
        corr["LOO of verify vs %s" % name] = (pearson(preds[name], loo_v), spearman(preds[name], loo_v))
    for f in fr:
        m = [r["down_%g" % f] for r in rows]
        corr["ε·n=%g vs dense H*" % f] = (pearson(preds["dense H*"], m), spearman(preds["dense H*"], m))
        corr["ε·n=%g vs dense H_T" % f] = (pearson(preds["dense H_T"], m), spearman(preds["dense H_T"], m))
    over = np.log(np.abs(np.array(preds["verify (cg, H_T)"]) / loo))
    for key in ["trained_share_lt_10_lambda_min", "trained_share_bottom_1pct", "star_share_lt_10_lambda_min",
                "star_share_bottom_1pct", "star_step_norm", "star_newton_decrement", "loo_rho"]:
        corr["log|pred/LOO| vs %s" % key] = (float("nan"), spearman(over, [r[key] for r in rows]))
    rel = collections.OrderedDict()
    for f in fr + [1.0]:
        key = "loo" if f == 1.0 else "down_%g" % f
        rel[key] = float(np.median([abs(r[key] / r["star_predicted"] - 1) for r in rows]))
    out["correlations"] = collections.OrderedDict((k, {"pearson": v[0], "spearman": v[1]}) for k, v in corr.items())
    out["median_rel_err_vs_star"] = rel
    print("\n%-50s %8s %8s" % ("correlation over the points", "Pearson", "Spearman"))
    for k, v in corr.items():
        print("%-50s %+8.3f %+8.3f" % (k, v[0], v[1]))
    print("median |measured/εn ÷ pred(H*) − 1|: " + ", ".join("%s %.3g" % kv for kv in rel.items()))
    print("seconds: %s; load %s → %s" % (", ".join("%s %.0f" % kv for kv in out["seconds"].items()),
                                        out["stamp"]["load_before"], out["stamp"]["load_after"]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="an mlp.cntk trained by the README's command (default: train one)")
    p.add_argument("--workdir", help="keep train.npz, test.npz, mlp.cntk here (default: a temporary folder)")
    p.add_argument("--test-index", type=int, default=7)
    p.add_argument("--retrainings", type=int, default=20, help="verify's k (default 20, its default)")
    p.add_argument("--gtol", type=float, default=LOO_GTOL, help="verify_loo's retraining gtol (its default)")
    p.add_argument("--fractions", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 0.1],
                   help="down-weightings ε·n (default 1e-4 1e-3 0.01 0.1)")
    p.add_argument("--extra", type=int, nargs="*", default=ISSUE_POINTS,
                   help="training points measured besides verify's choice (default: the issue's %s)"
                   % " ".join(map(str, ISSUE_POINTS)))
    p.add_argument("--out", help="write the results here (.json)")
    args = p.parse_args(argv)
    if args.model:
        args.model = os.path.abspath(args.model)
    out = run(args)
    summarise(out)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1, sort_keys=True)
        print("wrote %s" % args.out)


if __name__ == "__main__":
    main()
