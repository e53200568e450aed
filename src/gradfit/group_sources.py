"""Where group fits read their rows: a table in memory, or a Parquet file streamed group by group.

A :class:`GroupSource` names its columns and hands out *batches*: data frames that each hold whole
groups, so that every group is fitted from one batch. A frame in memory is one batch. A Parquet
file whose rows are grouped by the key (every group's rows together, the usual layout of exported
measurements) is read in batches of about a given number of groups, with only the columns the fit
uses: memory stays bounded whatever the file's size, and the first results are ready before the
file is read to the end. A Parquet file whose groups are scattered, and every other format, is read
whole (:func:`gradfit.data.read_table`, with its checks) and fitted as a frame.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradfit.errors import DataError, first_line

if TYPE_CHECKING:
    import polars as pl

__all__ = ["GroupSource", "open_groups"]

_PARQUET = (".parquet", ".pq")


@dataclass
class GroupSource:
    """Rows of groups, in batches of whole groups.

    Attributes
    ----------
    columns
        The column names of the data.
    n_groups
        Number of distinct keys.
    streamed
        Whether batches are read from the file as they are needed (else one frame in memory).
    """

    columns: list[str]
    n_groups: int
    streamed: bool
    _frame: pl.DataFrame | None = None
    _path: Path | None = None
    _group: str = ""
    _rows_per_group: float = 1.0
    _rows: int = 0

    @property
    def label(self) -> str | None:
        """The file the rows come from (for messages), or None for a frame."""
        return None if self._path is None else str(self._path)

    def column_dtype(self, name: str) -> Any:
        """The polars type of a column."""
        if self._frame is not None:
            return self._frame.schema[name]
        return _scan(self._path).collect_schema()[name]

    def batches(self, columns: Sequence[str], groups_per_batch: int) -> Iterator[pl.DataFrame]:
        """Frames of whole groups with the given columns (the key first), in file order."""
        wanted = list(dict.fromkeys([self._group, *columns]))
        if self._frame is not None:
            yield self._frame.select(wanted)
            return
        yield from _grouped_batches(self._path, self._group, wanted, max(1, int(groups_per_batch * self._rows_per_group)), self._rows)

    def filter(self, keys: Sequence[Any], columns: Sequence[str]) -> pl.DataFrame:
        """The rows of the groups ``keys`` (for refits), read from the frame or the file."""
        import polars as pl

        wanted = list(dict.fromkeys([self._group, *columns]))
        selected = pl.col(self._group).is_in(pl.Series(list(keys)).implode())
        if self._frame is not None:
            return self._frame.select(wanted).filter(selected)
        return _collect(_scan(self._path).select(wanted).filter(selected), self._path)


def open_groups(data: Any, group: str) -> GroupSource:
    """A :class:`GroupSource` for a frame, a mapping of columns or a data file.

    Raises
    ------
    DataError
        If the data cannot be read or have no column ``group``.
    """
    if isinstance(data, (str, os.PathLike)) and Path(data).suffix.lower() in _PARQUET:
        source = _parquet_source(Path(data), group)
        if source is not None:
            return source
    frame = _frame(data, group)
    _check_columns(frame.columns, [group])
    key = frame[group]
    _check_key_type(group, key.dtype)
    _check_keys(group, key.null_count() + (int(key.is_nan().sum()) if key.dtype.is_float() else 0))
    n_groups = int(key.n_unique()) if frame.height else 0
    path = Path(data) if isinstance(data, (str, os.PathLike)) else None
    return GroupSource(list(frame.columns), n_groups, False, _frame=frame, _path=path, _group=group)


def _check_key_type(group: str, dtype: Any) -> None:
    """Keys must be plain values: numbers, text, booleans, dates or times."""
    import polars as pl

    plain = (dtype.is_numeric() and not dtype.is_decimal()) or dtype.is_temporal() or dtype in (pl.String, pl.Boolean) or isinstance(dtype, (pl.Categorical, pl.Enum))
    if not plain:
        raise DataError(f"the group column '{group}' holds {dtype} values — group keys must be numbers, text or dates: cast the column")


def _check_keys(group: str, missing: int) -> None:
    """Every row must name its group."""
    if missing:
        raise DataError(
            f"the group column '{group}' has {missing} missing keys (null or NaN) — fill them or drop those rows "
            "(nan_policy 'omit' does not: a row without a key belongs to no group)"
        )


def check_columns(columns: Sequence[str], names: Sequence[str]) -> None:
    """Raise :class:`DataError` naming the first of ``names`` that is not a column, with a hint."""
    _check_columns(columns, names)


def _check_columns(columns: Sequence[str], names: Sequence[str]) -> None:
    from gradfit.data import unknown_column_message

    for name in names:
        if name not in columns:
            raise DataError(unknown_column_message(name, list(columns)))


def _frame(data: Any, group: str) -> pl.DataFrame:
    import polars as pl

    from gradfit.data import read_table

    if isinstance(data, pl.DataFrame):
        return data
    if isinstance(data, pl.LazyFrame):
        return data.collect()
    if isinstance(data, (str, os.PathLike)):
        return _integer_keys_where_exact(read_table(data, text_columns=(group,)), group)
    if isinstance(data, Mapping):
        return pl.DataFrame({k: np.asarray(v) for k, v in data.items()})
    if hasattr(data, "columns") and hasattr(data, "to_numpy"):
        return pl.DataFrame({str(c): data[c].to_numpy() for c in data.columns})
    raise DataError(f"cannot read groups from {type(data).__name__} — give a data frame, a mapping or a file path")


def _integer_keys_where_exact(frame: pl.DataFrame, group: str) -> pl.DataFrame:
    """A text key column (as read from a CSV file) as integers when every key is one, written the
    way an integer prints (``7``, ``-12``), else as text: ``007`` and ``7`` stay two groups, and
    20-digit identifiers stay exact."""
    import polars as pl

    if group not in frame.columns or frame[group].dtype != pl.String:
        return frame
    text = frame[group]
    numbers = text.cast(pl.Int64, strict=False)
    if numbers.null_count() == text.null_count() and (numbers.cast(pl.String) == text).fill_null(True).all():
        return frame.with_columns(numbers.alias(group))
    return frame


# ------------------------------------------------------------------------------ Parquet, streamed


def _scan(path: Path | None) -> pl.LazyFrame:
    import polars as pl

    return pl.scan_parquet(path)


def _collect(lazy: pl.LazyFrame, path: Path | None) -> pl.DataFrame:
    try:
        return lazy.collect()
    except Exception as exc:  # noqa: BLE001 - polars raises many types (and PanicException) for bad files
        raise DataError(f"cannot read {path}: {first_line(exc, 120)} — check that it is a Parquet file") from None


def _parquet_source(path: Path, group: str) -> GroupSource | None:
    """A streamed source when the file's rows are grouped by ``group``; None to read it whole."""
    import polars as pl

    if not path.is_file():
        return None  # read_table says what is wrong
    try:
        schema = _scan(path).collect_schema()
    except Exception:  # noqa: BLE001 - not a readable Parquet file: read_table explains
        return None
    columns = list(schema.names())
    _check_columns(columns, [group])
    _check_key_type(group, schema[group])
    key = pl.col(group)
    missing = key.null_count() + (key.is_nan().sum() if schema[group].is_float() else 0)
    counts = _collect(_scan(path).select(rows=pl.len(), groups=key.n_unique(), runs=key.rle_id().max(), missing=missing), path)
    rows, n_groups, runs, n_missing = counts.row(0)
    _check_keys(group, int(n_missing))
    if rows == 0 or runs is None or runs + 1 != n_groups:  # empty, or some group's rows are apart
        return None
    return GroupSource(columns, int(n_groups), True, _path=path, _group=group, _rows_per_group=rows / n_groups, _rows=int(rows))


def _grouped_batches(path: Path | None, group: str, columns: list[str], rows: int, total: int) -> Iterator[pl.DataFrame]:
    """Batches of about ``rows`` rows holding whole groups: a batch's last group, which may go on
    in the next batch, is held back and put in front of the next one — but not in the batch that
    reaches the file's ``total`` rows, whose last group is complete: it is not left to make a
    batch (a chunk, a fit) of its own."""
    import polars as pl

    held: pl.DataFrame | None = None
    read = 0
    try:
        batches = _scan(path).select(columns).collect_batches(chunk_size=rows)
        for batch in batches:
            read += batch.height
            if held is not None:
                batch = pl.concat([held, batch])
            last = read >= total
            tail_start = batch.height if last else batch.height - _run_length_at_end(batch[group])
            held = batch.slice(tail_start)
            if tail_start:
                yield batch.slice(0, tail_start)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read {path}: {first_line(exc, 120)} — check that it is a Parquet file") from None
    if held is not None and held.height:
        yield held


def _run_length_at_end(keys: pl.Series) -> int:
    """How many rows at the end of ``keys`` equal the last (compared by polars, in the key's own type:
    time-zone-aware timestamps, categories and NaN included)."""
    runs = keys.rle_id()
    return int((runs == runs[-1]).sum())
