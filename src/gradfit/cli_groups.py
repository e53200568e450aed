"""``gradfit fit --group-by KEY``: batched fits of every group, a table out and a summary printed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from gradfit.cli_render import loss_table
from gradfit.errors import OptionError
from gradfit.report_text import format_number

__all__ = ["run_group_fit", "write_table"]

TABLE_SUFFIXES = (".parquet", ".pq", ".csv", ".ndjson", ".jsonl")


def run_group_fit(command: Any, settings: Any) -> None:
    """Check the options, fit the groups, print the summary and write the per-group table."""
    from gradfit.data import read_table
    from gradfit.groups import fit_groups
    from gradfit.io import ensure_writable
    from gradfit.model import parameter_overrides, parse_assignments, parse_bounds

    unsupported = [flag for flag, value in (("--optimizer", command.optimizer), ("--plot", command.plot), ("--plot-history", command.plot_history), ("--val-data", command.val_data), ("--checkpoint", command.checkpoint), ("--resume", command.resume)) if value]
    if unsupported:
        raise OptionError(f"{unsupported[0]} does not apply to --group-by fits — drop it")
    if command.out is not None:
        ensure_writable(command.out)
        if command.out.suffix.lower() not in TABLE_SUFFIXES:
            raise OptionError(f"--out for group fits must end in {', '.join(TABLE_SUFFIXES)} — e.g. results.parquet")
    overrides = parameter_overrides(parse_assignments(command.init), parse_bounds(command.bounds), parse_assignments(command.fix, "--fix"))
    options = dict(
        group=command.group_by, y=command.y, sigma=command.sigma, params={k: v["init"] for k, v in overrides.items() if "init" in v and not v.get("fixed")},
        bounds={k: (v.get("lower", float("-inf")), v.get("upper", float("inf"))) for k, v in overrides.items() if "lower" in v or "upper" in v},
        fix={k: v["init"] for k, v in overrides.items() if v.get("fixed")},
        solver=settings.solver, loss=settings.loss, max_iter=command.max_iter, tolerance=command.tolerance,
        starts=settings.starts, val=settings.val, seed=settings.seed, chunk=command.chunk, dtype=settings.dtype,
        device=command.device, absolute_sigma=settings.absolute_sigma,
    )
    frame = read_table(command.data)
    result = fit_groups(command.model, frame, **options)
    if command.refit_failed and result.failed().height:
        result = _refit(result, command.model, frame, options)
    if not command.quiet:
        print_summary(result, Console(soft_wrap=True))
    if command.out is not None:
        write_table(result.table, command.out)


def _refit(result: Any, model: str, frame: Any, options: dict[str, Any]) -> Any:
    """Refit the groups that did not converge with more starting points, keep what improved."""
    import polars as pl

    from gradfit.groups import fit_groups

    keys = result.failed().filter(pl.col("status").is_in(["bad_data", "too_few_points"]).not_())[result.group]
    if keys.len() == 0:
        return result
    again = fit_groups(model, frame.filter(pl.col(result.group).is_in(keys.implode())), **{**options, "starts": max(16, options["starts"])})
    improved = again.table.filter(pl.col("success"))
    table = pl.concat([result.table.filter(~pl.col(result.group).is_in(improved[result.group].implode())), improved], how="vertical_relaxed")
    return type(result)(table.sort(result.group), result.model, result.param_names, result.group, result.solver, result.elapsed + again.elapsed, result.settings)


def print_summary(result: Any, console: Console) -> None:
    """Counts by status, distributions of R² and parameters, and the worst groups."""
    summary = result.summary()
    console.print(f"[bold]{summary['groups']}[/] groups of {result.model} — {result.solver}, {summary['fits_per_second']:.0f} fits/s", highlight=False)
    console.print(loss_table("groups by status", [(k, str(v)) for k, v in summary["status"].items()], ("status", "groups")))
    quantiles = ("q0", "q5", "q50", "q95", "q100")
    rows = [(name, *(format_number(spread.get(q), 5) for q in quantiles)) for name, spread in (("R²", summary["r2"]), *summary["parameters"].items())]
    console.print(loss_table("distribution over converged groups", rows, ("", "min", "5%", "median", "95%", "max")))
    worst = result.worst(5)
    rows = [(str(r[result.group]), r["status"], format_number(r["r2"], 4), str(r["n_points"])) for r in worst.iter_rows(named=True)]
    console.print(loss_table("worst groups", rows, (result.group, "status", "R²", "points")))


def write_table(table: Any, path: Path) -> None:
    """Write the per-group table atomically, in the format of the file's extension."""
    from gradfit.io import atomic_path

    with atomic_path(path) as temporary:
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".pq"):
            table.write_parquet(temporary)
        elif suffix == ".csv":
            table.write_csv(temporary)
        else:
            table.write_ndjson(temporary)
