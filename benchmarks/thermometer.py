"""Thermometer benchmark: time to reach the least-squares optimum, gradfit vs its references.

Runs in one process:
  * gradfit's default fit (``gradfit.fit("w*t_u + b", ...)``: exact least squares, with the whole
    result: standard errors, intervals, R², AIC/BIC, condition numbers, warnings, data summary),
  * gradfit's exact solve alone, to what ``curve_fit`` returns (parameters and covariance:
    ``linear_least_squares`` on the design and its ``covariance()``),
  * the book's plain PyTorch loop (SGD lr 1e-2 on 0.1-scaled input, 5000 epochs, float32) and the
    same loop in float64 run until its parameters are within 1e-6 of the optimum,
  * ``scipy.optimize.curve_fit``,
and the CLI's wall time for the same fit, and one fit in a fresh interpreter (imports included) by
gradfit and by ``curve_fit``. Prints each time and the ratios.

Usage: ``python benchmarks/thermometer.py [--repeats N]``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import curve_fit

import gradfit

T_C = np.array([0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0])
T_U = np.array([35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4])
OPTIMUM = np.polyfit(T_U, T_C, 1)
TOLERANCE = 1e-6


def median_time(action, repeats: int) -> float:
    """Median wall time of ``action()`` over ``repeats`` runs (after one warm-up)."""
    action()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def relative_error(params: np.ndarray) -> float:
    """Largest relative distance of (w, b) per unit t_u from the least-squares optimum."""
    return float(np.max(np.abs(np.asarray(params) - OPTIMUM) / np.abs(OPTIMUM)))


def gradfit_default() -> np.ndarray:
    return gradfit.fit("w*t_u + b", {"t_u": T_U}, T_C).values


def gradfit_solve() -> np.ndarray:
    """Parameters and covariance, as curve_fit gives them, from gradfit's exact solver."""
    from gradfit.solvers.least_squares import linear_least_squares

    solution = linear_least_squares(np.column_stack([T_U, np.ones_like(T_U)]), T_C)
    solution.covariance()
    return solution.theta[0]


def book_loop(dtype: torch.dtype = torch.float32, epochs: int = 5000, until: float | None = None) -> tuple[np.ndarray, int]:
    """The chapter's training loop, verbatim in spirit: returns (w, b) per unit t_u and epochs run."""
    t_u = torch.tensor(T_U, dtype=dtype) * 0.1
    t_c = torch.tensor(T_C, dtype=dtype)
    params = torch.tensor([1.0, 0.0], dtype=dtype, requires_grad=True)
    optimizer = torch.optim.SGD([params], lr=1e-2)
    scale = torch.tensor([0.1, 1.0], dtype=torch.float64)
    optimum = torch.tensor(OPTIMUM)
    for epoch in range(1, epochs + 1):
        t_p = params[0] * t_u + params[1]
        loss = ((t_p - t_c) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if until is not None and epoch % 10 == 0:
            current = params.detach().double() * scale
            if torch.max(torch.abs(current - optimum) / torch.abs(optimum)) < until:
                break
    return (params.detach().double() * scale).numpy(), epoch


def scipy_curve_fit() -> np.ndarray:
    popt, _ = curve_fit(lambda t, w, b: w * t + b, T_U, T_C, p0=[1.0, 0.0])
    return popt


def cli_wall_time(repeats: int) -> float:
    """Median wall time of ``gradfit fit`` on the bundled data, as a user runs it."""
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "thermometer.csv"
        data.write_text("t_c,t_u\n" + "\n".join(f"{c},{u}" for c, u in zip(T_C, T_U)) + "\n")
        command = [sys.executable, "-m", "gradfit.cli", "fit", str(data), "--model", "w*t_u + b", "--y", "t_c", "--quiet"]
        return median_time(lambda: subprocess.run(command, check=True), repeats)


#: one fit in a fresh interpreter, as a script that fits once runs it (imports included)
FRESH_SCRIPTS = {
    "gradfit": "import gradfit\nr = gradfit.fit('w*t_u + b', {{'t_u': {t_u}}}, {t_c})\nr.values, r.covariance",
    "curve_fit": "import numpy as np\nfrom scipy.optimize import curve_fit\n"
    "curve_fit(lambda t, w, b: w * t + b, np.array({t_u}), np.array({t_c}), p0=[1.0, 0.0])",
    "python alone": "pass",
}


def fresh_process_times(repeats: int) -> dict[str, float]:
    """Median wall time of each of :data:`FRESH_SCRIPTS` in a new interpreter, run in turns."""
    scripts = {name: text.format(t_u=T_U.tolist(), t_c=T_C.tolist()) for name, text in FRESH_SCRIPTS.items()}
    times: dict[str, list[float]] = {name: [] for name in scripts}
    for _ in range(repeats):
        for name, script in scripts.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", script], check=True)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()} (the book's loops; gradfit's exact solve runs on numpy)")
    rows = []
    t_gradfit = median_time(gradfit_default, args.repeats)
    rows.append(("gradfit.fit default (exact least squares)", t_gradfit, relative_error(gradfit_default())))
    t_solve = median_time(gradfit_solve, args.repeats)
    rows.append(("gradfit exact solve: parameters + covariance", t_solve, relative_error(gradfit_solve())))
    t_book = median_time(book_loop, max(3, args.repeats // 10))
    rows.append(("book loop, 5000 epochs, float32", t_book, relative_error(book_loop()[0])))
    params64, epochs64 = book_loop(torch.float64, epochs=200_000, until=TOLERANCE)
    t_book64 = median_time(lambda: book_loop(torch.float64, epochs=200_000, until=TOLERANCE), 3)
    rows.append((f"book loop, float64, until 1e-6 ({epochs64} epochs)", t_book64, relative_error(params64)))
    t_scipy = median_time(scipy_curve_fit, args.repeats)
    rows.append(("scipy curve_fit", t_scipy, relative_error(scipy_curve_fit())))
    print(f"{'method':<48}{'time':>12}{'rel. error':>14}")
    for name, seconds, error in rows:
        print(f"{name:<48}{seconds * 1e3:>10.3f}ms{error:>14.1e}")
    print(f"\nbook loop (5000 epochs) / gradfit default: {t_book / t_gradfit:8.1f}x")
    print(f"book loop (to 1e-6)     / gradfit default: {t_book64 / t_gradfit:8.1f}x")
    print(f"curve_fit               / gradfit.fit    : {t_scipy / t_gradfit:8.2f}x  (>1 means gradfit is faster)")
    print(f"curve_fit               / gradfit solve  : {t_scipy / t_solve:8.2f}x  (the same quantities curve_fit returns)")
    print(f"CLI 'gradfit fit' wall time (process start to exit): {cli_wall_time(5):.2f} s")
    fresh = fresh_process_times(7)
    print("one fit in a fresh process (interpreter start, imports, fit): " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in fresh.items()))
    print(f"curve_fit               / gradfit, fresh : {fresh['curve_fit'] / fresh['gradfit']:8.2f}x")


if __name__ == "__main__":
    main()
