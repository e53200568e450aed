"""Batched group fits: fits/s and peak memory of ``gradfit.fit_groups`` against a scipy loop.

Cases (synthetic data with known truth, every group its own parameters):

* ``gauss2d`` — Gpufit's benchmark: ``a*exp(-((x-x0)**2+(y-y0)**2)/(2*s**2)) + b`` on a 5×5 grid,
  Poisson noise, starts at truth ±10%, ``tolerance=1e-4, max_iter=10`` (Gpufit's settings);
* ``decay`` — ``a*exp(-k*t) + c``, 20 points, Gaussian noise, starts at truth ±10%, same settings;
* ``linear`` — the thermometer model ``w*t + b``, 11 points (exact linear solve).

Each (case, K, threads) runs in its own subprocess, so that its peak resident memory
(``VmHWM``, reset after the data are built) is the fit's alone; the data frame's size is reported
separately. With ``--source file`` the data are written to a Parquet file first (rows grouped by
key) and ``fit_groups`` streams it, so the frame is never in memory: peak memory is then the
fit's working set (one batch of groups, the key column, the result table). Every run computes
standard errors (they are columns of the result table). In the same subprocess Python loops of
``scipy.optimize.curve_fit`` and ``least_squares`` fit a subset of the same groups (same starts; the
best of three runs, as gradfit's is the best of its repeats), and the ratios of fits/s are printed. Times are wall clock (``perf_counter``) and CPU
(``process_time``); on a shared machine CPU time is the steadier of the two for one thread.

Usage::

    python benchmarks/batched.py                      # K = 10k, 100k, 1M; 1 thread
    python benchmarks/batched.py --max-k 100000 --threads 1,2 --cases gauss2d
    python benchmarks/batched.py --default-settings   # the accurate defaults instead of Gpufit's
    python benchmarks/batched.py --device cuda --scipy 0   # on a GPU (peak GPU memory reported too)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CASES = ("gauss2d", "decay", "linear")
SIZES = (10_000, 100_000, 1_000_000)
FORMULAS = {
    "gauss2d": "a*exp(-((x-x0)**2+(y-y0)**2)/(2*s**2)) + b",
    "decay": "a*exp(-k*t) + c",
    "linear": "w*t + b",
}


# ------------------------------------------------------------------------------------ synthetic data


def make_case(case: str, k: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs ``(k, n)`` by name, ``y (k, n)``, ``truth (k, p)`` and ``start (k, p)``."""
    rng = np.random.default_rng(seed)
    if case == "gauss2d":
        truth = np.column_stack([
            rng.uniform(500, 1000, k), rng.uniform(1.5, 2.5, k), rng.uniform(1.5, 2.5, k),
            rng.uniform(0.8, 1.2, k), rng.uniform(5, 15, k),
        ])
        x = np.broadcast_to(np.tile(np.arange(5.0), 5), (k, 25))
        y = np.broadcast_to(np.repeat(np.arange(5.0), 5), (k, 25))
        mean = truth[:, [0]] * np.exp(-((x - truth[:, [1]]) ** 2 + (y - truth[:, [2]]) ** 2) / (2 * truth[:, [3]] ** 2)) + truth[:, [4]]
        observed = rng.poisson(mean).astype(float)
        inputs = {"x": x, "y": y}
    elif case == "decay":
        truth = np.column_stack([rng.uniform(1, 3, k), rng.uniform(0.3, 1.5, k), rng.uniform(-1, 1, k)])
        t = np.broadcast_to(np.linspace(0.0, 5.0, 20), (k, 20))
        observed = truth[:, [0]] * np.exp(-truth[:, [1]] * t) + truth[:, [2]] + 0.02 * rng.standard_normal((k, 20))
        inputs = {"t": t}
    elif case == "linear":
        truth = np.column_stack([rng.uniform(0.4, 0.6, k), rng.uniform(-20, -15, k)])
        t = rng.uniform(20, 85, (k, 11))
        observed = truth[:, [0]] * t + truth[:, [1]] + rng.normal(0, 1.0, (k, 11))
        inputs = {"t": t}
    else:
        raise SystemExit(f"unknown case {case!r} — choose from {', '.join(CASES)}")
    start = truth * (1.0 + rng.uniform(-0.1, 0.1, truth.shape))
    return {"inputs": inputs, "y": observed, "truth": truth, "start": start}


def param_names(case: str) -> list[str]:
    return {"gauss2d": ["a", "x0", "y0", "s", "b"], "decay": ["a", "k", "c"], "linear": ["w", "b"]}[case]


def frame_of(case: str, data: dict) -> "pl.DataFrame":  # noqa: F821
    """Long table: one row per point, group key ``g``, per-group starts as columns ``<name>_0``."""
    import polars as pl

    k, n = data["y"].shape
    columns = {"g": np.repeat(np.arange(k), n)}
    columns.update({name: np.ascontiguousarray(values).ravel() for name, values in data["inputs"].items()})
    columns["obs"] = data["y"].ravel()
    if case != "linear":
        for j, name in enumerate(param_names(case)):
            columns[f"{name}_0"] = np.repeat(data["start"][:, j], n)
    return pl.DataFrame(columns)


# ------------------------------------------------------------------------------------------ one run


def _rss(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in bytes (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


SCIPY_VARIANTS = ("curve_fit", "curve_fit_tol", "least_squares")


def scipy_loop(case: str, data: dict, count: int, variant: str = "curve_fit", repeats: int = 3) -> dict:
    """The fastest of ``repeats`` runs of :func:`scipy_run` (the machine is shared: the best run is the
    least disturbed one, as for gradfit's own best of repeats)."""
    runs = [scipy_run(case, data, count, variant) for _ in range(repeats)]
    return max(runs, key=lambda run: run["fits_per_s_wall"])


def scipy_run(case: str, data: dict, count: int, variant: str = "curve_fit") -> dict:
    """Fit the first ``count`` groups one by one with scipy, standard errors included.

    ``curve_fit``: MINPACK's LM with its default tolerances (the usual loop); ``curve_fit_tol``: the
    same with ``ftol = xtol = 1e-4`` (the tolerance the batched run uses); ``least_squares``: scipy's
    default trust-region reflective solver, standard errors from its Jacobian. Jacobians by finite
    differences, as such loops are usually written.
    """
    import warnings

    from scipy.optimize import curve_fit, least_squares

    def gauss(xy, a, x0, y0, s, b):
        return a * np.exp(-((xy[0] - x0) ** 2 + (xy[1] - y0) ** 2) / (2 * s**2)) + b

    def decay(t, a, k, c):
        return a * np.exp(-k * t) + c

    def line(t, w, b):
        return w * t + b

    function = {"gauss2d": gauss, "decay": decay, "linear": line}[case]
    inputs = data["inputs"]
    count = min(count, data["y"].shape[0])
    ok, errors = 0, []
    started, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(count):
            xdata = np.vstack([inputs["x"][i], inputs["y"][i]]) if case == "gauss2d" else inputs["t"][i]
            ydata = data["y"][i]
            try:
                if variant == "least_squares":
                    fit = least_squares(lambda theta: function(xdata, *theta) - ydata, data["start"][i])
                    values, jac = fit.x, fit.jac
                    s2 = 2 * fit.cost / (ydata.size - values.size)
                    cov = np.linalg.inv(jac.T @ jac) * s2
                else:
                    tolerance = {"ftol": 1e-4, "xtol": 1e-4} if variant == "curve_fit_tol" and case != "linear" else {}
                    values, cov = curve_fit(function, xdata, ydata, p0=data["start"][i], **tolerance)
            except (RuntimeError, np.linalg.LinAlgError):
                continue
            ok += 1
            errors.append(np.abs(values / data["truth"][i] - 1.0))
            np.sqrt(np.diag(cov))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"variant": variant, "fits": count, "converged": ok, "wall_s": wall, "cpu_s": cpu,
            "fits_per_s_wall": count / wall, "fits_per_s_cpu": count / cpu if cpu > 0 else math.inf,
            "median_rel_error": np.median(np.array(errors), axis=0).tolist() if errors else None}


def run_one(case: str, k: int, threads: int, scipy_count: int, default_settings: bool, dtype: str, repeats: int, source: str = "frame", device: str = "cpu") -> dict:
    """Build the data, fit every group with ``fit_groups``, fit a subset with scipy; measures."""
    import tempfile

    import torch

    torch.set_num_threads(threads)
    import polars as pl

    from gradfit.groups import fit_groups

    data = make_case(case, k)
    frame = frame_of(case, data)
    frame_bytes = int(frame.estimated_size())
    folder = tempfile.TemporaryDirectory()
    if source == "file":  # stream it: the frame leaves memory
        path = Path(folder.name) / f"{case}.parquet"
        frame.write_parquet(path)
        frame = pl.read_parquet(path, n_rows=2000 * data["y"].shape[1])  # the warm-up's part only
        target: object = path
    else:
        target = frame
    names = param_names(case)
    options: dict = {"group": "g", "y": "obs", "dtype": dtype, "device": device}
    if case != "linear":
        options["params"] = {name: f"{name}_0" for name in names}
        if not default_settings:
            options.update(max_iter=10, tolerance=1e-4)
    fit_groups(FORMULAS[case], frame.head(min(frame.height, 2000 * data["y"].shape[1])), **options)  # warm-up
    del frame
    baseline = _rss("VmRSS")
    peak_reset = _reset_peak()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    best = None
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        result = fit_groups(FORMULAS[case], target, **options)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        if best is None or wall < best[0]:
            best = (wall, cpu, result)
    peak = _rss("VmHWM")
    wall, cpu, result = best
    table = result.table
    values = np.column_stack([table[name].to_numpy() for name in names])
    stderr = np.column_stack([table[f"{name}_stderr"].to_numpy() for name in names])
    converged = table["success"].to_numpy()
    error = np.abs(values[converged] / data["truth"][converged] - 1.0)
    out = {
        "case": case, "k": k, "threads": threads, "dtype": dtype, "solver": result.solver, "source": source, "device": device,
        "peak_device_memory": torch.cuda.max_memory_allocated() if device == "cuda" else None,
        "settings": "default" if default_settings or case == "linear" else "max_iter=10, tolerance=1e-4",
        "wall_s": wall, "cpu_s": cpu, "fits_per_s_wall": k / wall, "fits_per_s_cpu": k / cpu,
        "solve_loop_s": result.elapsed, "status": result.status_counts(),
        "stderr_finite": float(np.isfinite(stderr[converged]).all(axis=1).mean()) if converged.any() else 0.0,
        "median_rel_error": np.median(error, axis=0).tolist() if error.size else None,
        "frame_bytes": frame_bytes, "rss_before_fit": baseline,
        "peak_rss_during_fit": peak if peak_reset else None, "peak_rss_process": _rss("VmHWM"),
    }
    del target, table, result
    folder.cleanup()
    out["scipy"] = {variant: scipy_loop(case, data, scipy_count, variant) for variant in SCIPY_VARIANTS} if scipy_count else {}
    return out


# ------------------------------------------------------------------------------------------ driver


def _format(row: dict) -> str:
    peak = row["peak_rss_during_fit"] or row["peak_rss_process"]
    statuses = ", ".join(f"{k}={v}" for k, v in row["status"].items())
    device_memory = "" if row["peak_device_memory"] is None else f", peak GPU memory {row['peak_device_memory'] / 2**20:,.0f} MiB"
    lines = [
        f"{row['case']:8s} K={row['k']:>9,d} threads={row['threads']} {row['dtype']} {row['source']} {row['device']}: "
        f"{row['fits_per_s_wall']:>9,.0f} fits/s wall, {row['fits_per_s_cpu']:>9,.0f} fits/s CPU | "
        f"peak RSS {peak / 2**20:,.0f} MiB (data frame {row['frame_bytes'] / 2**20:,.0f} MiB{' in memory' if row['source'] == 'frame' else ', streamed from Parquet'}, process before the fit "
        f"{row['rss_before_fit'] / 2**20:,.0f} MiB){device_memory} | stderr finite {row['stderr_finite']:.4f} | {statuses}"
    ]
    for variant, scipy in (row.get("scipy") or {}).items():
        lines.append(
            f"{'':8s}   vs scipy {variant:14s} {scipy['fits_per_s_wall']:>7,.0f} fits/s wall {scipy['fits_per_s_cpu']:>7,.0f} CPU: "
            f"x{row['fits_per_s_wall'] / scipy['fits_per_s_wall']:,.0f} wall, x{row['fits_per_s_cpu'] / scipy['fits_per_s_cpu']:,.0f} CPU"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--max-k", type=int, default=max(SIZES))
    parser.add_argument("--threads", default="1", help="comma-separated torch thread counts")
    parser.add_argument("--scipy", type=int, default=300, help="groups fitted by the scipy loop")
    parser.add_argument("--repeats", type=int, default=3, help="fit_groups runs per size below 1M (best kept)")
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    parser.add_argument("--default-settings", action="store_true", help="accurate defaults instead of Gpufit's settings")
    parser.add_argument("--source", default="frame", choices=("frame", "file"), help="fit a frame in memory, or stream a Parquet file")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where gradfit fits (the scipy loop runs on the CPU)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args(argv)
    if args.one:
        case, k, threads = args.one.split(":")
        row = run_one(case, int(k), int(threads), args.scipy, args.default_settings, args.dtype,
                      args.repeats if int(k) < 1_000_000 else 1, args.source, args.device)
        print("RESULT " + json.dumps(row))
        return 0
    rows = []
    print(f"# gradfit batched benchmark — {os.cpu_count()} CPUs; torch threads as listed; "
          f"{'default (accurate) settings' if args.default_settings else 'max_iter=10, tolerance=1e-4'} for nonlinear cases")
    for case in args.cases.split(","):
        for k in (int(s) for s in args.sizes.split(",")):
            if k > args.max_k:
                continue
            for threads in (int(t) for t in args.threads.split(",")):
                command = [sys.executable, __file__, "--one", f"{case}:{k}:{threads}", "--scipy", str(args.scipy),
                           "--repeats", str(args.repeats), "--dtype", args.dtype, "--source", args.source, "--device", args.device]
                if args.default_settings:
                    command.append("--default-settings")
                done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode or not lines:
                    print(f"{case} K={k} threads={threads}: failed\n{done.stderr[-2000:]}")
                    continue
                row = json.loads(lines[-1][len("RESULT "):])
                rows.append(row)
                print(_format(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
