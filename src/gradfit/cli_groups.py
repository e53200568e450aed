"""``gradfit fit --group-by KEY``: batched fits of every group, a table out and a summary printed.

Results are written chunk by chunk as they are computed (each chunk to a part file beside the output,
joined into the output at the end), with a progress bar on a terminal; with a Parquet input whose rows
are grouped by the key, the input is streamed too, so neither has to fit in memory. SIGINT or SIGTERM
stops the fit after the chunks in progress: the output then holds every group fitted so far, and the
command exits 130 or 143.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from gradfit.cli_render import loss_table, print_table
from gradfit.errors import FitError, OptionError, OutputError
from gradfit.report_text import format_number

__all__ = ["run_group_fit", "write_tables", "print_summary"]


def run_group_fit(command: Any, settings: Any) -> None:
    """Check the options, fit the groups chunk by chunk, write the table and print the summary."""
    from gradfit.cli_fit import InterruptedFit, check_optimizer, interruptible
    from gradfit.groups import GroupSummary, iter_group_fits
    from gradfit.io import TABLE_OUTPUT_SUFFIXES, ensure_writable

    _check_flags(command)
    if command.out is not None:
        ensure_writable(command.out)
        if command.out.suffix.lower() not in TABLE_OUTPUT_SUFFIXES:
            raise OptionError(f"--out for group fits must end in {', '.join(TABLE_OUTPUT_SUFFIXES)} — e.g. results.parquet")
    if settings.uses_optimizer:
        check_optimizer(settings.optimizer or "adam", settings.optimizer_options)
    fits = iter_group_fits(command.model, command.data, **_options(command, settings), refit_failed=command.refit_failed)
    summary = GroupSummary(fits.param_names)
    with interruptible() as signals, _Progress(fits.n_groups, command.quiet) as progress:
        tables = _watched(fits, summary, progress)
        written = write_tables(tables, command.out, fits.schema) if command.out is not None else _consume(tables)
    interrupted = written is not None
    if not command.quiet:
        console = Console(soft_wrap=True)
        print_summary(summary, fits, console, interrupted)
        if not interrupted:
            kept = f"written: {command.out}" if command.out is not None else "no --out: the table of groups was not written (add e.g. --out fits.parquet)"
            console.print(kept, highlight=False, markup=False)
    if interrupted:
        raise InterruptedFit(signals.exit_code, _interrupted_message(written, command.out))
    if summary.groups and not summary.fitted:
        raise FitError(_nothing_fitted_message(summary, command.out))


def _nothing_fitted_message(summary: Any, out: Path | None) -> str:
    """Every group failed: the statuses, and where each group's message is."""
    counts = ", ".join(f"{status} {count}" for status, count in summary.status_counts().items())
    worst = summary.worst()
    first = f"; the first: {worst['message'][0]}" if worst is not None and "message" in worst.columns and worst["message"][0] else ""
    where = f"every group's status and message are in {out}" if out is not None else "add --out fits.csv for every group's message"
    return f"no group could be fitted ({counts}){first} — {where}"


def _interrupted_message(groups: int | None, out: Path | None) -> str:
    if out is None:
        return "interrupted: the groups fitted so far are summarised above (no --out: nothing was written)"
    if not groups:
        state = "is unchanged" if out.exists() else "was not created"
        return f"interrupted before any group was fitted: nothing was written ({out} {state})"
    return f"interrupted: the {groups} groups fitted so far were written to {out}"


def _check_flags(command: Any) -> None:
    flags = (("--plot", command.plot), ("--plot-history", command.plot_history), ("--val-data", command.val_data),
             ("--checkpoint", command.checkpoint), ("--resume", command.resume), ("--batch-size", command.batch_size),
             ("--target", command.target), ("--plateau", command.plateau), ("--report-html", command.report_html))
    unsupported = [flag for flag, value in flags if value]
    if unsupported:
        raise OptionError(f"{unsupported[0]} does not apply to --group-by fits — drop it")
    if command.report:
        raise OptionError("--report does not apply to --group-by fits (they print a summary of the groups) — drop it")


def _options(command: Any, settings: Any) -> dict[str, Any]:
    from gradfit.model import check_fixed_not_started, parameter_overrides, parse_assignments, parse_bounds

    starts = parse_assignments(command.init, columns=True)  # k=k_guess: each group's start from that column
    fix = parse_assignments(command.fix, "--fix")
    check_fixed_not_started(starts, fix)
    columns = {k: v for k, v in starts.items() if isinstance(v, str)}
    numbers = {k: v for k, v in starts.items() if not isinstance(v, str)}
    overrides = parameter_overrides(numbers, parse_bounds(command.bounds), fix)
    return dict(
        group=command.group_by, y=command.y, sigma=command.sigma,
        params={**{k: v["init"] for k, v in overrides.items() if "init" in v and not v.get("fixed")}, **columns},
        bounds={k: (v.get("lower", float("-inf")), v.get("upper", float("inf"))) for k, v in overrides.items() if "lower" in v or "upper" in v},
        fix={k: v["init"] for k, v in overrides.items() if v.get("fixed")},
        solver=settings.solver, loss=settings.loss, loss_scale=settings.loss_scale, optimizer=settings.optimizer,
        optimizer_options=settings.optimizer_options, epochs=settings.epochs, patience=settings.patience, scale=settings.scale,
        max_iter=command.max_iter, tolerance=command.tolerance, starts=settings.starts, val=settings.val, seed=settings.seed,
        chunk=command.chunk, dtype=settings.dtype, device=command.device, absolute_sigma=settings.absolute_sigma,
        as_parameters=[name.strip() for name in command.params.split(",") if name.strip()], nan_policy=command.nan,
    )


def _watched(tables: Iterable[Any], summary: Any, progress: _Progress) -> Iterator[Any]:
    for table in tables:
        summary.add(table)
        progress.advance(table.height)
        yield table


def _consume(tables: Iterable[Any]) -> int | None:
    """Run the fits without writing; the number of groups done if interrupted, else None."""
    done = 0
    try:
        for table in tables:
            done += table.height
    except KeyboardInterrupt:
        return done
    return None


def write_tables(tables: Iterable[Any], path: Path, schema: dict[str, Any]) -> int | None:
    """Write the chunks' tables to ``path`` (its extension chooses the format) as they come.

    Each table goes to a Parquet part file in a hidden folder beside ``path``; at the end (or at a
    ``KeyboardInterrupt``, with the tables done so far) the parts are streamed into one file,
    written atomically. An interruption before the first table leaves ``path`` as it was.
    Returns None when every table was written, else (interrupted) the number of groups written.
    """
    import polars as pl

    from gradfit.io import write_table

    try:
        holder = tempfile.TemporaryDirectory(dir=path.parent, prefix=".gradfit-parts-")
    except OSError as exc:  # a directory that access() passes but that takes no files (/proc, a full disk)
        raise OutputError(f"cannot write in directory {path.parent} (for {path}): {exc.strerror or exc} — choose another output directory") from None
    with holder as folder:
        parts, groups, interrupted = _write_parts(tables, Path(folder))
        if interrupted and not parts:
            return 0
        write_table(pl.scan_parquet(parts) if parts else pl.LazyFrame(schema=schema), path)
    return groups if interrupted else None


def _write_parts(tables: Iterable[Any], folder: Path) -> tuple[list[Path], int, bool]:
    """Each table as a Parquet part file in ``folder``: ``(parts, groups, interrupted)``."""
    parts: list[Path] = []
    groups = 0
    try:
        for table in tables:
            part = folder / f"part-{len(parts):06d}.parquet"
            table.write_parquet(part)
            parts.append(part)
            groups += table.height
    except KeyboardInterrupt:
        return parts, groups, True
    return parts, groups, False


class _Progress:
    """A rich progress bar over the groups, on a terminal only."""

    def __init__(self, total: int, quiet: bool) -> None:
        import sys

        self.total = total
        self.enabled = not quiet and sys.stderr.isatty()
        self.bar: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("fitting groups"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("groups", total=self.total)
        return self

    def advance(self, count: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, count)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_summary(summary: Any, fits: Any, console: Console, interrupted: bool = False) -> None:
    """Counts by status, distributions of R² and parameters, and the worst groups."""
    numbers = summary.result(fits.elapsed)
    done = f" (interrupted: {numbers['groups']} of {fits.n_groups} groups fitted)" if interrupted else ""
    groups = "group" if numbers["groups"] == 1 else "groups"
    console.print(f"[bold]{numbers['groups']}[/] {groups} of {fits.model_description} — {fits.solver}, {numbers['fits_per_second']:.0f} fits/s{done}", highlight=False)
    print_table(console, loss_table("groups by status", [(k, str(v)) for k, v in numbers["status"].items()], ("status", "groups")))
    quantiles = ("q0", "q5", "q50", "q95", "q100")
    rows = [(name, *(format_number(spread.get(q), 5) for q in quantiles)) for name, spread in (("R²", numbers["r2"]), *numbers["parameters"].items())]
    over = ", ".join(numbers["summarised"]) or "none"
    print_table(console, loss_table(f"distribution over successful groups ({over})", rows, ("", "min", "5%", "median", "95%", "max")))
    worst = summary.worst()
    if worst is not None:
        rows = [(str(r[fits.group]), r["status"], format_number(r["r2"], 6), str(r["n_points"])) for r in worst.iter_rows(named=True)]
        print_table(console, loss_table("worst groups", rows, (fits.group, "status", "R²", "points")))
