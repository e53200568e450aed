"""Time and accuracy per NIST StRD fit: ``gradfit.fit`` against scipy, side by side, interleaved.

For each of the 27 nonlinear problems and both starting points it runs, alternately:

* ``gradfit``: ``gradfit.fit(formula, data, y, params=start)`` with default settings — the whole
  call a user makes (model from the formula, Levenberg-Marquardt with the symbolic Jacobian,
  standard errors, confidence intervals, R², AIC/BIC, condition numbers, the result object);
* ``curve_fit``: ``scipy.optimize.curve_fit`` with its defaults (MINPACK lmdif, finite-difference
  Jacobian) on a numpy model, returning parameters and covariance;
* ``least_squares``: ``scipy.optimize.least_squares(method="lm")`` with its defaults (parameters only).

Each line shows the wall time (the calling thread's CPU time, ``time.thread_time``: the machine is
shared, and wall time there measures the neighbours), the smallest LRE (digits) over the certified
parameters and, for gradfit and curve_fit, over the certified standard deviations. The summary gives
the median time per fit of each method and gradfit's time ratios to scipy (median of the per-fit
ratios, and the ratio of the medians).

Run: ``.venv/bin/python benchmarks/nist.py [--repeats 15] [--only NAME ...]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from nist_problems import NONLINEAR, NistProblem, compile_formula_numpy, load, lre  # noqa: E402

import gradfit  # noqa: E402

METHODS = ("gradfit", "curve_fit", "least_squares")


def cpu_time(fn: Callable[[], object]) -> float:
    """CPU time of one call (the thread's, so that other processes on a busy machine do not count)."""
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def runners(problem: NistProblem, start: np.ndarray) -> dict[str, Callable[[], tuple[np.ndarray, np.ndarray | None]]]:
    """``method -> fit()`` returning (parameters, standard errors or None) in certified order."""
    from scipy.optimize import curve_fit, least_squares

    model = compile_formula_numpy(problem.formula, problem.param_names)
    x, y, names = dict(problem.x), problem.target, problem.param_names
    params = dict(zip(names, start))
    failed = (np.full(problem.p, np.nan), np.full(problem.p, np.nan))

    def with_gradfit() -> tuple[np.ndarray, np.ndarray]:
        result = gradfit.fit(problem.formula, x, y, params=params)
        return np.array([result.params[n] for n in names]), np.array([result.stderr[n] for n in names])

    def with_curve_fit() -> tuple[np.ndarray, np.ndarray]:
        try:
            popt, pcov = curve_fit(model, problem.x, y, p0=start)
        except RuntimeError:
            return failed
        return popt, np.sqrt(np.diag(pcov))

    def with_least_squares() -> tuple[np.ndarray, None]:
        try:
            return least_squares(lambda p: model(problem.x, *p) - y, start, method="lm").x, None
        except (RuntimeError, ValueError):
            return failed[0], None

    return {"gradfit": with_gradfit, "curve_fit": with_curve_fit, "least_squares": with_least_squares}


def digits(values: np.ndarray | None, certified: np.ndarray) -> float:
    if values is None:
        return float("nan")
    with np.errstate(all="ignore"):
        return float(np.nan_to_num(lre(values, certified), nan=0.0).min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rows = []
    print(f"{'problem':10s}{'':4s}" + "".join(f"{m:>30s}" for m in METHODS))
    for name in args.only or list(NONLINEAR):
        problem = load(name)
        for k, start in enumerate(problem.starts(), 1):
            fits = runners(problem, start)
            answers = {m: fn() for m, fn in fits.items()}  # warm-up, and the answers
            times: dict[str, list[float]] = {m: [] for m in METHODS}
            for _ in range(args.repeats):
                for m, fn in fits.items():
                    times[m].append(cpu_time(fn))
            med = {m: statistics.median(t) for m, t in times.items()}
            cells = []
            for m in METHODS:
                values, errors = answers[m]
                sd = "" if errors is None else f" sd {digits(errors, problem.certified_sd):4.1f}"
                cells.append(f"{med[m] * 1e3:8.2f} ms  LRE {digits(values, problem.certified):4.1f}{sd:>8s}")
            print(f"{name:10s}s{k}  " + "".join(f"{c:>30s}" for c in cells), flush=True)
            rows.append(med)
    print()
    for m in METHODS:
        print(f"median time per fit, {m:14s}: {statistics.median(r[m] for r in rows) * 1e3:7.3f} ms")
    for ref in ("curve_fit", "least_squares"):
        per_fit = statistics.median(r["gradfit"] / r[ref] for r in rows)
        of_medians = statistics.median(r["gradfit"] for r in rows) / statistics.median(r[ref] for r in rows)
        print(f"gradfit / {ref:13s}: median of per-fit ratios {per_fit:5.2f}x, ratio of medians {of_medians:5.2f}x")
    print(f"{len(rows)} fits")


if __name__ == "__main__":
    main()
