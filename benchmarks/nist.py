"""Time per NIST StRD fit: gradfit's batched LM against scipy's curve_fit, interleaved.

For each of the 27 nonlinear problems and both starting points it times, alternately:

* ``curve_fit``: scipy's default (MINPACK lmdif, finite-difference Jacobian), numpy model;
* ``gradfit-symbolic``: :func:`gradfit.solvers.least_squares.solve_least_squares` with the model's
  symbolic Jacobian (``gradfit.symbolic.gradient`` compiled by ``gradfit.evaluate.compile_torch``) —
  the route formula fits take;
* ``gradfit-autograd``: the same solver with its default autograd Jacobian.

Times are the calling thread's CPU time (``time.thread_time``): the machine this runs on is shared,
and wall time there measures the neighbours. Medians over repeats per fit, then the median over the
54 fits. Torch runs single-threaded (small problems; see docs). Accuracy is not the point here (see ``benchmarks/nist_accuracy.py``), but the
LRE of each fit is printed so that a fast wrong answer shows.

Run: ``.venv/bin/python benchmarks/nist.py [--repeats 15] [--threads 1] [--only NAME ...]``
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from nist_problems import NONLINEAR, NistProblem, compile_formula_numpy, load, lre  # noqa: E402

from gradfit.solvers.least_squares import solve_least_squares  # noqa: E402


def symbolic_functions(problem: NistProblem) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``theta -> (residuals, Jacobian)`` from one compiled program of the formula and its symbolic
    derivatives (shared sub-expressions computed once) — what formula fits use."""
    from gradfit.evaluate import compile_torch
    from gradfit.formula import parse
    from gradfit.symbolic import gradient

    tree = parse(problem.formula).tree
    names = problem.param_names
    program = compile_torch([tree, *gradient(tree, names)])
    x, target = problem.tensors()
    shape = (1, problem.n)

    def residual_and_jacobian(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values = dict(x)
        values.update(zip(names, torch.split(theta, 1, dim=1)))
        model, *columns = program(values)
        k = theta.shape[0]
        if k != shape[0]:
            columns = [torch.broadcast_to(c, (k, problem.n)) for c in columns]
        return model - target, torch.stack(columns, -1)

    return residual_and_jacobian


def time_call(fn: Callable[[], object]) -> float:
    """CPU time of one call (the thread's, so that other processes on a busy machine do not count)."""
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from scipy.optimize import curve_fit

    warnings.simplefilter("ignore")
    names = args.only or list(NONLINEAR)
    rows = []
    for name in names:
        problem = load(name)
        numpy_model = compile_formula_numpy(problem.formula, problem.param_names)
        combined = symbolic_functions(problem)
        autograd_residual = problem.residual_fn()
        for k, start in enumerate(problem.starts(), 1):
            theta0 = torch.tensor(start)[None]

            def scipy_fit() -> np.ndarray:
                try:
                    return curve_fit(numpy_model, problem.x, problem.target, p0=start)[0]
                except RuntimeError:
                    return np.full(problem.p, np.nan)

            runs = {
                "curve_fit": scipy_fit,
                "symbolic": lambda: solve_least_squares(None, theta0, residual_and_jacobian_fn=combined),
                "autograd": lambda: solve_least_squares(autograd_residual, theta0),
            }
            results = {key: fn() for key, fn in runs.items()}  # warm-up, and the answers
            times: dict[str, list[float]] = {key: [] for key in runs}
            for _ in range(args.repeats):
                for key, fn in runs.items():
                    times[key].append(time_call(fn))
            med = {key: statistics.median(v) for key, v in times.items()}
            lres = {
                "curve_fit": float(lre(results["curve_fit"], problem.certified).min()),
                "symbolic": float(lre(results["symbolic"].theta[0].numpy(), problem.certified).min()),
                "autograd": float(lre(results["autograd"].theta[0].numpy(), problem.certified).min()),
            }
            iters = int(results["symbolic"].n_iter[0])
            rows.append((name, k, med, lres, iters))
            print(
                f"{name:9s} s{k}  curve_fit {med['curve_fit'] * 1e3:7.2f} ms (LRE {lres['curve_fit']:4.1f})"
                f"  symbolic {med['symbolic'] * 1e3:7.2f} ms (LRE {lres['symbolic']:4.1f}, {iters} it)"
                f"  autograd {med['autograd'] * 1e3:7.2f} ms (LRE {lres['autograd']:4.1f})",
                flush=True,
            )
    for key in ("curve_fit", "symbolic", "autograd"):
        median = statistics.median(r[2][key] for r in rows)
        print(f"median per fit {key:10s}: {median * 1e3:.2f} ms")
    for key in ("symbolic", "autograd"):
        ratio = statistics.median(r[2][key] / r[2]["curve_fit"] for r in rows)
        overall = statistics.median(r[2][key] for r in rows) / statistics.median(r[2]["curve_fit"] for r in rows)
        print(f"{key}: median of per-fit ratios to curve_fit {ratio:.2f}x; ratio of medians {overall:.2f}x")
    print(f"torch threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
