"""Reading tables and turning them into float64 datasets.

This module only needs numpy and polars; torch tensors are accepted duck-typed (anything with
``.detach().cpu().numpy()``) and pandas objects duck-typed (anything with ``.columns`` and
``.to_numpy``), so neither library is imported here.

Row numbers in error messages are 1-based and count data rows only (the header is not a row).
"""

from __future__ import annotations

import csv
import decimal
import difflib
import io
import json
import math
import numbers
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from gradfit.errors import DataError, first_line
from gradfit.limits import check_table_fits

__all__ = [
    "Dataset",
    "read_table",
    "make_dataset",
    "as_dataset",
    "holdout_split",
    "kfold_indices",
    "check_enough_rows",
    "check_squares_representable",
    "numeric_column",
    "TABLE_SUFFIXES",
]

NanPolicy = Literal["raise", "omit"]

_CSV_SUFFIXES = (".csv", ".tsv", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_NDJSON_SUFFIXES = (".ndjson", ".jsonl")
TABLE_SUFFIXES: tuple[str, ...] = _CSV_SUFFIXES + _PARQUET_SUFFIXES + _NDJSON_SUFFIXES
"""File extensions :func:`read_table` understands (compared case-insensitively)."""

_DELIMITERS = (",", ";", "\t", "|")
_SNIFF_BYTES = 64 * 1024
_SNIFF_ROWS = 50
_BOM = b"\xef\xbb\xbf"
_PARQUET_MAGIC = b"PAR1"
_QUOTE_OR_LINE_BREAK = re.compile(rb'"|\r\n?|\n')
#: What polars raises on a file it cannot read: its own errors, and a Rust panic (e.g. on some
#: corrupt Parquet files), which reaches Python as a BaseException, not an Exception.
_POLARS_FAILURES: tuple[type[BaseException], ...] = (Exception, pl.exceptions.PanicException)

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_SPECIAL = {"nan": math.nan, "inf": math.inf, "infinity": math.inf}
_MISSING = frozenset({"", "na", "n/a", "nan", "null", "none"})
_NA_TYPES = frozenset({"NAType", "NaTType"})
_MAX_SHOWN_COLUMNS = 20


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Dataset:
    """Columns ready for fitting: float64 inputs, target and optional uncertainties.

    Parameters
    ----------
    inputs
        Input columns by name, each a float64 array of shape ``(n,)``; may be empty.
    y
        Target values, float64, shape ``(n,)``.
    sigma
        Standard deviations of ``y`` (positive, float64, shape ``(n,)``) or ``None``.
    y_name
        Name of the target column.
    n_dropped
        Number of rows removed by ``nan_policy="omit"`` when the dataset was built.
    sigma_name
        Name of the uncertainty column, or ``None``.
    """

    inputs: dict[str, np.ndarray]
    y: np.ndarray
    sigma: np.ndarray | None = None
    y_name: str = "y"
    n_dropped: int = 0
    sigma_name: str | None = None

    def __post_init__(self) -> None:
        inputs = {str(k): _as_1d_float(v, str(k)) for k, v in self.inputs.items()}
        y = _as_1d_float(self.y, self.y_name)
        sigma = None if self.sigma is None else _as_1d_float(self.sigma, "sigma")
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "sigma", sigma)
        named = [*inputs.items(), (self.y_name, y)]
        if sigma is not None:
            named.append((self.sigma_name or "sigma", sigma))
        _check_lengths(named)

    @property
    def n_rows(self) -> int:
        """Number of rows (data points)."""
        return int(self.y.shape[0])

    @property
    def input_names(self) -> tuple[str, ...]:
        """Names of the input columns, in order."""
        return tuple(self.inputs)

    def column(self, name: str) -> np.ndarray:
        """Return an input, the target or the uncertainty column by name.

        Parameters
        ----------
        name
            Column name.

        Returns
        -------
        numpy.ndarray
            The float64 column.

        Raises
        ------
        DataError
            If no column has that name.
        """
        columns = self.to_columns()
        if name not in columns:
            raise DataError(unknown_column_message(name, list(columns)))
        return columns[name]

    def to_columns(self) -> dict[str, np.ndarray]:
        """Return all columns (inputs, then target, then uncertainties) as a name -> array dict.

        Returns
        -------
        dict of str to numpy.ndarray
            The dataset's columns; the arrays are shared, not copied.
        """
        columns = dict(self.inputs)
        columns[self.y_name] = self.y
        if self.sigma is not None:
            columns[self.sigma_name or "sigma"] = self.sigma
        return columns

    def subset(self, idx: Any) -> Dataset:
        """Return the rows selected by an index array or boolean mask.

        Parameters
        ----------
        idx
            Integer indices or a boolean mask of length ``n_rows``.

        Returns
        -------
        Dataset
            A new dataset with copies of the selected rows.
        """
        index = np.asarray(idx)
        if index.dtype == bool and index.shape != (self.n_rows,):
            raise DataError(
                f"boolean mask has shape {index.shape} but the dataset has {self.n_rows} rows "
                "— give one flag per row"
            )
        return Dataset(
            inputs={k: v[index] for k, v in self.inputs.items()},
            y=self.y[index],
            sigma=None if self.sigma is None else self.sigma[index],
            y_name=self.y_name,
            n_dropped=self.n_dropped,
            sigma_name=self.sigma_name,
        )


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------


def read_table(path: str | os.PathLike[str], text_columns: Sequence[str] = ()) -> pl.DataFrame:
    """Read a CSV, Parquet or NDJSON file into a polars DataFrame.

    CSV-like files (``.csv``, ``.tsv``, ``.txt``) must be UTF-8; a byte-order mark is removed, the
    delimiter is detected among ``,`` ``;`` tab and ``|``, lines may end in LF, CRLF or CR, quoted
    fields may contain newlines, empty lines are skipped and whitespace around header names is
    removed. Column types are inferred from the whole file (where inference fails, columns are
    read as text and converted when a dataset is made).

    Parameters
    ----------
    path
        File to read; the extension chooses the format (case-insensitive): ``.csv``, ``.tsv``,
        ``.txt``, ``.parquet``, ``.pq``, ``.ndjson``, ``.jsonl``.
    text_columns
        Columns of a CSV-like file to read as text, uninterpreted (group keys: ``007`` and ``7``
        are different sensors).

    Returns
    -------
    polars.DataFrame
        The table, unchanged apart from header whitespace.

    Raises
    ------
    DataError
        If the file is missing, is a directory, has an unknown extension, is empty, binary or
        corrupt, or has empty or duplicate header names.
    """
    p = Path(path)
    name = str(path)
    _check_is_file(p, name)
    suffix = p.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        shown = suffix or "(no extension)"
        raise DataError(
            f"unsupported file type {shown!r} for {name} — use one of "
            f"{', '.join(TABLE_SUFFIXES)}"
        )
    check_table_fits(p)
    raw = _read_bytes(p, name)
    if not raw.strip() or raw.strip() == _BOM:
        raise DataError(f"file is empty: {name} — give a file with a header row and data rows")
    if suffix in _PARQUET_SUFFIXES:
        return _read_parquet(raw, name)
    raw = raw.removeprefix(_BOM)
    if suffix in _NDJSON_SUFFIXES:
        return _read_ndjson(raw, name)
    return _read_csv(raw, name, suffix, text_columns)


def _check_is_file(p: Path, name: str) -> None:
    if p.is_dir():
        raise DataError(f"{name} is a directory, not a file — give the path of a data file")
    if not p.exists():
        raise DataError(f"file not found: {name} — check the path")


def _read_bytes(p: Path, name: str) -> bytes:
    try:
        return p.read_bytes()
    except PermissionError:
        raise DataError(f"cannot read {name}: permission denied — check the file's permissions")
    except OSError as exc:
        raise DataError(f"cannot read {name}: {exc.strerror or exc} — check the file") from None


def _read_parquet(raw: bytes, name: str) -> pl.DataFrame:
    if len(raw) < 12 or not (raw.startswith(_PARQUET_MAGIC) and raw.endswith(_PARQUET_MAGIC)):
        raise DataError(
            f"{name} is not a complete Parquet file (truncated or another format) "
            "— re-export the file"
        )
    try:
        return pl.read_parquet(io.BytesIO(raw))
    except _POLARS_FAILURES as exc:  # polars raises several types for corrupt files
        raise DataError(
            f"cannot read {name} as Parquet ({first_line(exc, 120)}) — re-export the file"
        ) from None


def _read_ndjson(raw: bytes, name: str) -> pl.DataFrame:
    _check_text(raw[:_SNIFF_BYTES], name)
    try:
        frame = pl.read_ndjson(io.BytesIO(raw), infer_schema_length=None)
    except _POLARS_FAILURES as exc:  # polars raises several types for malformed JSON
        raise DataError(_ndjson_problem(raw, name) or _generic_parse_message(exc, name, "NDJSON"))
    return frame


def _ndjson_problem(raw: bytes, name: str) -> str | None:
    """Find the first line that is not a JSON object, to name it in the error message."""
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            return f"line {number} of {name} is not valid JSON — fix that line"
        if not isinstance(value, dict):
            return f"line {number} of {name} is not a JSON object — write one {{...}} per line"
    return None


def _generic_parse_message(exc: BaseException, name: str, kind: str) -> str:
    return f"cannot read {name} as {kind} ({first_line(exc, 120)}) — check the file's format"


def _check_text(sample: bytes, name: str) -> str:
    """Decode the start of a text file, rejecting binary and non-UTF-8 content."""
    if b"\x00" in sample:
        raise DataError(
            f"{name} is not a text table (it contains binary data) — give a CSV, Parquet or "
            "NDJSON file"
        )
    try:
        return sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 3:  # not just a character cut at the end of the sample
            raise DataError(
                f"{name} is not UTF-8 text (bad byte at offset {exc.start}) — save it as UTF-8"
            ) from None
        return sample[: exc.start].decode("utf-8")


def _read_csv(raw: bytes, name: str, suffix: str, text_columns: Sequence[str] = ()) -> pl.DataFrame:
    raw = _lf_if_cr_lines(raw)
    truncated = len(raw) > _SNIFF_BYTES
    sample = _check_text(raw[:_SNIFF_BYTES], name)
    rows = _sample_rows(sample, truncated)
    delimiter = _sniff_delimiter(rows, default="\t" if suffix == ".tsv" else ",")
    _check_first_line(sample, delimiter, name)
    header = _header_row(sample, delimiter, name)
    names = _clean_header(header, name)
    as_text = {raw_name: pl.String for raw_name, clean in zip(header, names) if clean in text_columns}
    try:
        frame = _polars_csv(raw, delimiter, as_text)
    except _POLARS_FAILURES as exc:  # polars raises ComputeError and others for malformed CSV
        if "utf-8" in str(exc).lower():
            raise DataError(f"{name} is not UTF-8 text — save it as UTF-8") from None
        problem = _ragged_row(raw, delimiter, len(names), name)
        raise DataError(problem or _generic_parse_message(exc, name, "CSV")) from None
    if frame.width != len(names):
        raise DataError(
            f"{name}: the header has {len(names)} columns but {frame.width} were read "
            "— check the header row and quoting"
        )
    frame.columns = names
    return _drop_blank_lines(frame, raw, delimiter)


def _lf_if_cr_lines(raw: bytes) -> bytes:
    """Turn classic Mac line endings (a bare CR, which polars does not split on) into LF.

    The end of the header row decides. Only line breaks outside quotes change (a CRLF becomes LF
    too); quoted text keeps its characters.
    """
    if _first_line_break(raw) != b"\r":
        return raw
    in_quotes = False

    def line_feed(token: re.Match[bytes]) -> bytes:
        nonlocal in_quotes
        if token.group() == b'"':
            in_quotes = not in_quotes
            return b'"'
        return token.group() if in_quotes else b"\n"

    return _QUOTE_OR_LINE_BREAK.sub(line_feed, raw)


def _first_line_break(raw: bytes) -> bytes | None:
    """The first line break outside quotes (CR, LF or CRLF), or None."""
    in_quotes = False
    for token in _QUOTE_OR_LINE_BREAK.finditer(raw):
        if token.group() == b'"':
            in_quotes = not in_quotes
        elif not in_quotes:
            return token.group()
    return None


def _polars_csv(raw: bytes, delimiter: str, as_text: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """Read CSV bytes with polars, the column types inferred from the first :data:`CSV_INFER_ROWS`
    rows, then (a later row that does not parse as the type inferred) from the whole file — ten
    times slower on a million rows (but ``as_text``).

    Inference can fail on valid text (an integer too long for Int128, digits polars takes for an
    integer but cannot parse); then every column is read as text and converted later, strictly,
    by the column conversion of :func:`make_dataset`.
    """
    for rows in (CSV_INFER_ROWS, None):
        try:
            return pl.read_csv(io.BytesIO(raw), separator=delimiter, infer_schema_length=rows, schema_overrides=as_text or None)
        except pl.exceptions.ComputeError:
            continue
    return pl.read_csv(io.BytesIO(raw), separator=delimiter, infer_schema=False)


#: rows of a CSV file whose values decide the column types at first
CSV_INFER_ROWS = 10_000


def _check_first_line(sample: str, delimiter: str, name: str) -> None:
    """Refuse a first line that is not the column names: a comment (``# ...``, or ``#...`` with
    another number of fields than the next line: ``#id,x,y`` is a header), or Excel's ``sep=`` hint."""
    lines = sample.lstrip("\ufeff").split("\n", 2)
    first = lines[0].rstrip("\r")
    shown = first if len(first) <= 40 else first[:37] + "..."
    following = lines[1].rstrip("\r") if len(lines) > 1 else ""
    if first.startswith("# ") or (first.startswith("#") and first.count(delimiter) != following.count(delimiter)):
        raise DataError(
            f"{name}: the first line, {shown!r}, is a comment, and the first line must hold the column names — "
            "remove the comment lines (np.savetxt writes its header as one: pass comments='')"
        )
    if re.fullmatch(r"sep=.", first.strip()):
        raise DataError(f"{name}: the first line, {shown!r}, is Excel's separator hint, not the column names — remove that line")


def _header_row(sample: str, delimiter: str, name: str) -> list[str]:
    try:
        return next(csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter), [])
    except csv.Error as exc:
        raise DataError(
            f"cannot read the header row of {name} ({exc}) — check its quoting and line endings"
        ) from None


def _drop_blank_lines(frame: pl.DataFrame, raw: bytes, delimiter: str) -> pl.DataFrame:
    """Remove the all-null rows polars reads from empty lines (csv and pandas skip those lines).

    Only done when the file has an empty line at all; the csv module then tells which data rows
    are empty lines (an empty line inside a quoted field is not one).
    """
    if frame.height == 0 or (b"\n\n" not in raw and b"\n\r\n" not in raw):
        return frame
    text = io.StringIO(raw.decode("utf-8", errors="replace"), newline="")
    reader = csv.reader(text, delimiter=delimiter)
    blank: list[int] = []
    n_rows = 0
    try:
        next(reader, None)
        for n_rows, row in enumerate(reader, start=1):
            if not row:
                blank.append(n_rows - 1)
    except csv.Error:
        return frame
    if not blank or n_rows != frame.height:
        return frame
    keep = np.ones(frame.height, dtype=bool)
    keep[blank] = False
    return frame.filter(pl.Series(keep))


def _sample_rows(sample: str, truncated: bool) -> dict[str, tuple[list[list[str]], bool]]:
    """Parse the first rows of the sample with each candidate delimiter.

    Each delimiter maps to its rows and whether they parsed cleanly under strict quoting rules
    (a closing quote must be followed by the delimiter or the end of the line): a delimiter that
    splits quoted fields apart does not parse cleanly. A truncated sample may end inside a quoted
    field, so there no delimiter counts as clean.
    """
    if truncated and "\n" in sample:
        sample = sample[: sample.rindex("\n") + 1]
    parsed = {}
    for delimiter in _DELIMITERS:
        rows, clean = _parse_rows(sample, delimiter, strict=True), not truncated
        if rows is None:
            rows, clean = _parse_rows(sample, delimiter, strict=False) or [], False
        if truncated and len(rows) > 1:
            rows = rows[:-1]  # the last row may be cut inside a quoted field
        parsed[delimiter] = (rows, clean)
    return parsed


def _parse_rows(sample: str, delimiter: str, strict: bool) -> list[list[str]] | None:
    reader = csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter, strict=strict)
    try:
        return [row for _, row in zip(range(_SNIFF_ROWS + 1), reader) if row]
    except csv.Error:
        return None


def _sniff_delimiter(rows: dict[str, tuple[list[list[str]], bool]], default: str) -> str:
    """Choose the delimiter giving the most consistent number (>= 2) of fields per row.

    Ties go to a delimiter that parses the quoting cleanly, then to more fields, then to the
    default.
    """
    best, best_score = default, (0.0, False, 0, False)
    for delimiter, (parsed, clean) in rows.items():
        if not parsed or len(parsed[0]) < 2:
            continue
        width = len(parsed[0])
        consistency = sum(len(row) == width for row in parsed) / len(parsed)
        score = (consistency, clean, width, delimiter == default)
        if score > best_score:
            best, best_score = delimiter, score
    return best


def _clean_header(header: list[str], name: str) -> list[str]:
    names = [h.strip() for h in header]
    shown = ",".join(names) if len(",".join(names)) <= 40 else ",".join(names)[:37] + "..."
    if names and all(_is_finite_number(h) for h in names):
        raise DataError(f"{name}: the first line, {shown!r}, holds numbers, not column names — add a header line, e.g. 'x,y'")

    for position, column in enumerate(names, start=1):
        if not column and position == len(names) > 1:
            raise DataError(
                f"{name}: the header ends with a delimiter, so column {position} has no name — remove the delimiter at the "
                "end of each line, or name that column"
            )
        if not column:
            raise DataError(
                f"{name}: column {position} has an empty header — give every column a name"
            )
    seen: dict[str, int] = {}
    for position, column in enumerate(names, start=1):
        if column in seen:
            raise DataError(
                f"{name}: duplicate column name {column!r} (columns {seen[column]} and "
                f"{position}) — rename one of them"
            )
        seen[column] = position
    return names


def _ragged_row(raw: bytes, delimiter: str, width: int, name: str) -> str | None:
    """Find the first data row with more fields than the header (only used after a failure)."""
    text = raw.decode("utf-8", errors="replace")
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        next(reader, None)
        for number, row in enumerate(reader, start=1):
            if len(row) > width:
                return (
                    f"{name}: row {number} has {len(row)} fields but the header has {width} "
                    "— fix that row or quote fields that contain the delimiter"
                )
    except csv.Error as exc:
        return f"cannot read {name} as CSV ({exc}) — check the quoting"
    return None


# --------------------------------------------------------------------------------------------------
# Building datasets
# --------------------------------------------------------------------------------------------------


class _Table:
    """Column access shared by every kind of source (frame, mapping, file)."""

    def __init__(
        self, names: list[str], getter: Callable[[str], object], label: str | None = None
    ) -> None:
        self.names = names
        self.getter = getter
        self.label = label

    def error(self, message: str) -> DataError:
        return DataError(f"{self.label}: {message}" if self.label else message)


def make_dataset(
    source: Any,
    *,
    inputs: Sequence[str],
    y: str,
    sigma: str | None = None,
    nan_policy: NanPolicy = "raise",
) -> Dataset:
    """Select columns from a table and convert them to a float64 :class:`Dataset`.

    Parameters
    ----------
    source
        A polars or pandas DataFrame, a mapping of column name to array-like, or a path to a file
        that :func:`read_table` can read.
    inputs
        Names of the input (independent variable) columns; may be empty.
    y
        Name of the target column.
    sigma
        Name of a column of standard deviations of ``y`` (positive), or ``None``.
    nan_policy
        ``"raise"``: missing or non-finite values in a used column are an error. ``"omit"``: rows
        with such a value in any used column are dropped and counted in ``Dataset.n_dropped``.

    Returns
    -------
    Dataset
        The selected columns as float64 arrays.

    Raises
    ------
    DataError
        For unknown or non-numeric columns, missing values (with ``"raise"``), non-positive
        ``sigma``, columns of different lengths, or no rows.
    """
    table = _as_table(source)
    return _assemble(table, _as_names(inputs), y, sigma, nan_policy, {})


def as_dataset(
    x: Any,
    y: Any,
    *,
    input_names: Sequence[str] | None = None,
    sigma: Any = None,
    nan_policy: NanPolicy = "raise",
) -> Dataset:
    """Build a :class:`Dataset` from arrays, tensors, mappings or frames.

    Parameters
    ----------
    x
        Inputs: an array or tensor of shape ``(n,)`` (one input named ``"x"``) or ``(n, d)``
        (inputs ``"x0"`` ... ``"x{d-1}"``), a mapping of name to array, or a polars/pandas frame.
    y
        Target: array-like or tensor of length ``n``; when ``x`` is a frame or mapping it may also
        be the name of one of its columns (then that column is not an input).
    input_names
        Names for the input columns (arrays), or the columns to use as inputs (frames, mappings).
    sigma
        Standard deviations of ``y``: array-like, tensor, a column name (frames, mappings) or
        ``None``.
    nan_policy
        ``"raise"`` or ``"omit"``, as in :func:`make_dataset`.

    Returns
    -------
    Dataset
        The data as float64 arrays.

    Raises
    ------
    DataError
        For length mismatches, non-numeric or missing values, bad shapes or names.
    """
    if _is_frame(x) or isinstance(x, Mapping):
        table = _as_table(x)
    else:
        table = _array_table(x, input_names, y)
        input_names = table.names
    if y is None:
        column = " (the data have a column 'y': y='y')" if "y" in table.names else ""
        raise DataError(f"no targets given — pass y: an array of the targets, or the name of their column{column}")
    extra: dict[str, object] = {}
    y_name = _role_name(y, table, extra, "y")
    sigma_name = None if sigma is None else _role_name(sigma, table, extra, "sigma")
    if input_names is None:
        input_names = [n for n in table.names if n not in (y_name, sigma_name)]
    return _assemble(table, _as_names(input_names), y_name, sigma_name, nan_policy, extra)


def _role_name(value: Any, table: _Table, extra: dict[str, object], default: str) -> str:
    """Name of the y/sigma column: a given column name, or a fresh name for an array."""
    if isinstance(value, str):
        if value not in table.names:
            raise table.error(unknown_column_message(value, table.names))
        return value
    name = default
    while name in table.names or name in extra:
        name += "_"
    extra[name] = value
    return name


def _array_table(x: Any, input_names: Sequence[str] | None, y: Any = None) -> _Table:
    array = _to_numpy(x, "x")
    _check_not_transposed(array, y)
    if array.ndim == 1:
        array = array[:, None]
        default = ["x"]
    elif array.ndim == 2:
        default = [f"x{j}" for j in range(array.shape[1])]
    else:
        raise DataError(f"x must have shape (n,) or (n, d), got {array.shape} — reshape it")
    names = default if input_names is None else _as_names(input_names)
    if len(names) != array.shape[1]:
        raise DataError(
            f"{len(names)} input names given for {array.shape[1]} input columns "
            "— give one name per column of x"
        )
    columns = {n: array[:, j] for j, n in enumerate(names)}
    return _Table(names, columns.__getitem__)


def _check_not_transposed(array: np.ndarray, y: Any) -> None:
    """Refuse x of shape ``(d, n)`` for ``n`` targets (curve_fit's layout of several inputs)."""
    n = np.shape(y)[0] if isinstance(y, (np.ndarray, list, tuple)) and np.ndim(y) == 1 else None
    if n is not None and array.ndim == 2 and array.shape[0] != n and array.shape[1] == n:
        raise DataError(
            f"x has shape {array.shape} for {n} targets: one row per input, as curve_fit takes them — gradfit takes "
            f"one row per point, shape ({n}, {array.shape[0]}): pass x.T"
        )


def _as_names(names: Sequence[str] | str) -> list[str]:
    if isinstance(names, str):
        return [names]
    return [str(n) for n in names]


def _is_frame(obj: object) -> bool:
    if isinstance(obj, (pl.DataFrame, pl.LazyFrame)):
        return True
    return hasattr(obj, "columns") and hasattr(obj, "to_numpy") and hasattr(obj, "__getitem__")


def _as_table(source: Any) -> _Table:
    if isinstance(source, (str, os.PathLike)):
        frame = read_table(source)
        return _Table(frame.columns, frame.get_column, label=str(source))
    if isinstance(source, pl.LazyFrame):
        source = source.collect()
    if isinstance(source, pl.DataFrame):
        return _Table(source.columns, source.get_column)
    if isinstance(source, Mapping):
        keys = {str(k): k for k in source}
        return _Table(list(keys), lambda n: source[keys[n]])
    if _is_frame(source):
        return _pandas_table(source)
    raise DataError(
        f"cannot use a {type(source).__name__} as a table — give a DataFrame, a dict of "
        "columns or a file path"
    )


def _pandas_table(frame: Any) -> _Table:
    keys: dict[str, object] = {}
    for key in frame.columns:
        name = str(key)
        if name in keys:
            raise DataError(f"duplicate column name {name!r} — rename one of them")
        keys[name] = key
    return _Table(list(keys), lambda n: frame[keys[n]])


def _assemble(
    table: _Table,
    inputs: list[str],
    y: str,
    sigma: str | None,
    nan_policy: str,
    extra: Mapping[str, object],
) -> Dataset:
    """Convert, check and combine the used columns into a Dataset."""
    if nan_policy not in ("raise", "omit"):
        raise DataError(f"nan_policy must be 'raise' or 'omit', got {nan_policy!r}")
    _check_roles(table, inputs, y, sigma)
    used = [*inputs, y] + ([sigma] if sigma is not None else [])
    columns: dict[str, np.ndarray] = {}
    for name in used:
        if name not in extra and name not in table.names:
            raise table.error(unknown_column_message(name, table.names))
    for name in used:
        raw = extra[name] if name in extra else table.getter(name)
        columns[name] = _column_to_float(raw, name, table)
    _check_lengths(list(columns.items()), table)
    columns, n_dropped = _apply_nan_policy(columns, nan_policy, table)
    if sigma is not None:
        _check_sigma(columns[sigma], sigma, table)
    return Dataset(
        inputs={n: columns[n] for n in inputs},
        y=columns[y],
        sigma=None if sigma is None else columns[sigma],
        y_name=y,
        n_dropped=n_dropped,
        sigma_name=sigma,
    )


def _check_roles(table: _Table, inputs: list[str], y: str, sigma: str | None) -> None:
    seen: dict[str, str] = {}
    roles = [(n, "an input") for n in inputs] + [(y, "y")]
    if sigma is not None:
        roles.append((sigma, "sigma"))
    for name, role in roles:
        if name in seen:
            raise table.error(
                f"column {name!r} is used both as {seen[name]} and as {role} "
                "— use each column once"
            )
        seen[name] = role


def unknown_column_message(name: str, columns: Sequence[str]) -> str:
    """The one-line message for a column ``name`` that is not among ``columns``, with a hint.

    Parameters
    ----------
    name
        The column asked for.
    columns
        The table's columns.

    Returns
    -------
    str
        ``unknown column 'name'``, a close match or another hint, and the columns.
    """
    listed = [part.strip() for part in name.split(",")]
    if len(listed) > 1 and all(part in columns for part in listed):
        return (f"unknown column {name!r}: a list of columns where one is asked for — name one "
                "(a group key is one column: combine several into one first)")
    shown = ", ".join(c if c.isprintable() else repr(c) for c in columns[:_MAX_SHOWN_COLUMNS])
    if len(columns) > _MAX_SHOWN_COLUMNS:
        shown += f", ... ({len(columns)} in all)"
    close = difflib.get_close_matches(name, list(columns), n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in columns}
        close = [lowered[name.lower()]] if name.lower() in lowered else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    if len(columns) == 1 and re.search(r"\S\s+\S", columns[0]):
        hint += " (a single column with spaces in its name: separate columns with , ; tab or |)"
    return f"unknown column {name!r}{hint} (columns: {shown or 'none'})"


def _check_lengths(named: list[tuple[str, np.ndarray]], table: _Table | None = None) -> None:
    if not named:
        return
    first, first_values = named[0]
    for name, values in named[1:]:
        if values.shape[0] != first_values.shape[0]:
            message = (
                f"{name!r} has {values.shape[0]} rows but {first!r} has {first_values.shape[0]} "
                "— every column needs one value per row"
            )
            raise table.error(message) if table else DataError(message)


def _apply_nan_policy(
    columns: dict[str, np.ndarray], nan_policy: str, table: _Table
) -> tuple[dict[str, np.ndarray], int]:
    n_rows = next(iter(columns.values())).shape[0]
    if n_rows == 0:
        raise table.error("no rows in the data — give at least one data row")
    bad_columns = [(name, values) for name, values in columns.items() if not np.isfinite(values).all()]
    if not bad_columns:
        return columns, 0
    if nan_policy == "raise":
        name, values = bad_columns[0]
        column_bad = ~np.isfinite(values)
        raise table.error(
            f"column {name!r} has {int(column_bad.sum())} missing or non-finite values "
            f"(first at row {int(np.argmax(column_bad)) + 1}) — use --nan omit (nan_policy='omit') to drop those rows"
        )
    keep = np.logical_and.reduce([np.isfinite(values) for _, values in bad_columns])
    n_dropped = n_rows - int(keep.sum())
    if n_dropped == n_rows:
        raise table.error(
            f"no rows left: all {n_rows} rows have missing or non-finite values in the used "
            "columns — clean the data"
        )
    return {name: values[keep] for name, values in columns.items()}, n_dropped


def _check_sigma(values: np.ndarray, name: str, table: _Table) -> None:
    bad = ~(values > 0)
    if bad.any():
        first = int(np.argmax(bad))
        raise table.error(
            f"sigma column {name!r} must be positive: row {first + 1} has {values[first]:g} "
            "— fix or remove that row"
        )


# --------------------------------------------------------------------------------------------------
# Converting columns to float64
# --------------------------------------------------------------------------------------------------


def _as_1d_float(values: Any, name: str) -> np.ndarray:
    if type(values) is np.ndarray and values.dtype == np.float64 and values.ndim == 1:
        return values
    array = np.asarray(_to_numpy(values, name), dtype=np.float64)
    if array.ndim != 1:
        raise DataError(f"column {name!r} must be one-dimensional, got shape {array.shape}")
    return array


def _to_numpy(values: Any, name: str) -> np.ndarray:
    """Turn a tensor, series or array-like into a numpy array without copying when possible."""
    if isinstance(values, pl.Series):
        return values.to_numpy()
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # torch.Tensor, duck-typed
        return values.detach().cpu().numpy()
    if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):  # pandas, duck-typed
        return np.asarray(values.to_numpy())
    try:
        return np.asarray(values)
    except ValueError:
        raise DataError(
            f"column {name!r} is not a flat list of numbers (rows of different lengths?)"
        ) from None


def _column_to_float(raw: object, name: str, table: _Table, first_row: int = 1) -> np.ndarray:
    if isinstance(raw, pl.Series):
        return _series_to_float(raw, name, table, first_row)
    array = _to_numpy(raw, name)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise table.error(
            f"column {name!r} must be one-dimensional, got shape {array.shape} — give one value "
            "per row"
        )
    return _array_to_float(array, name, table, first_row)


def numeric_column(values: Any, name: str, label: str | None = None, first_row: int = 1) -> np.ndarray:
    """A column (polars Series, array or sequence) as float64, converted as a dataset converts it:
    text read strictly, with ``NA``, ``nan``, ``null``, empty and the like as NaN (a CSV column that
    holds them is text).

    Parameters
    ----------
    values, name
        The column and its name.
    label
        Where it comes from (a file name), for the error message.
    first_row
        The row number of its first value there (a batch of a file read in parts).

    Returns
    -------
    numpy.ndarray
        float64; a read-only view of a float column's own memory where it can be.

    Raises
    ------
    DataError
        Naming the first row that is not a number, or a column of another type.
    """
    table = _Table([], lambda _: None, label)
    if isinstance(values, pl.Series):
        if values.dtype.is_numeric() or values.dtype == pl.Boolean:  # no copy of a float column (may be read-only)
            if values.dtype.is_integer():
                _check_integers_exact(values, name, table)
            return values.cast(pl.Float64).to_numpy()
        if values.dtype == pl.String:
            fast = values.str.strip_chars().cast(pl.Float64, strict=False)  # numbers in text, at polars' speed
            if fast.null_count() == values.null_count():
                return fast.to_numpy()
    return _column_to_float(values, name, table, first_row)


def _series_to_float(series: pl.Series, name: str, table: _Table, first_row: int = 1) -> np.ndarray:
    dtype = series.dtype
    if dtype.is_integer():
        _check_integers_exact(series, name, table)
    if dtype.is_numeric() or dtype == pl.Boolean or dtype == pl.Null:
        return np.array(series.cast(pl.Float64).to_numpy(), dtype=np.float64)  # own, writable copy
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return _parse_values(series.cast(pl.String).to_list(), name, table, first_row)
    raise table.error(_type_message(name, str(dtype), temporal=dtype.is_temporal()))


def _array_to_float(array: np.ndarray, name: str, table: _Table, first_row: int = 1) -> np.ndarray:
    kind = array.dtype.kind
    if kind in "iu":
        _check_integers_exact(array, name, table)
    if kind in "biuf":
        return array.astype(np.float64)  # a copy: the dataset owns its columns
    if kind in "OUS":
        return _parse_values(array.tolist(), name, table, first_row)
    type_name = {"c": "complex", "M": "datetime", "m": "timedelta"}.get(kind, str(array.dtype))
    raise table.error(_type_message(name, type_name, temporal=kind in "Mm"))


#: integers above this magnitude are not all exact in float64
EXACT_INTEGERS = 2**53
#: rounding an integer column by more than this fraction of its range is refused
INTEGER_ROUNDING = 1e-6


def _check_integers_exact(values: pl.Series | np.ndarray, name: str, table: _Table) -> None:
    """Refuse integers that float64 rounds by a visible part of their range (epoch nanoseconds:
    1.7e18 rounds to multiples of 256, a microsecond step's digits lost without a word)."""
    series = (values if isinstance(values, pl.Series) else pl.Series(values)).drop_nulls()
    if series.len() == 0:
        return
    low, high = int(series.min()), int(series.max())  # type: ignore[arg-type]
    if max(abs(low), abs(high)) <= EXACT_INTEGERS:
        return
    wide = series.cast(pl.Int128)
    back = series.cast(pl.Float64).cast(pl.Int128, strict=False)  # 2**127 and above: no Int128 (and null)
    lost = int((wide - back).abs().max() or 0)  # type: ignore[arg-type]
    spread = high - low  # a constant column keeps its digits to 1e-16 of its value: no matter
    if spread and lost > INTEGER_ROUNDING * spread:
        raise table.error(
            f"column {name!r} holds integers up to {max(abs(low), abs(high)):.3g}, which float64 rounds by up to {lost}"
            f" ({100 * lost / spread:.2g}% of their range) — subtract an offset from the column before the fit (e.g. "
            f"{name} {'-' if low >= 0 else '+'} {abs(low)}: in the formula it comes too late, after the rounding)"
        )


#: text that reads as a date or a time of day (ISO 8601 and the like: 2026-01-31, 31/01/2026 12:00, 12:30:05)
_DATE_OR_TIME = re.compile(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}([ T]\d{1,2}:\d{2}.*)?|\d{1,2}:\d{2}(:\d{2}([.,]\d+)?)?")


def _type_message(name: str, type_name: str, temporal: bool = False) -> str:
    fix = _ELAPSED_TIME if temporal else "convert it to numbers or choose another column"
    return f"column {name!r} is not numeric (type {type_name}) — {fix}"


#: the fix for a column of dates or times: the unit and the origin are the user's choice
_ELAPSED_TIME = "dates and times are not converted (the unit is yours to choose): give elapsed time, e.g. hours since the first reading"


def _parse_values(values: list[object], name: str, table: _Table, first_row: int = 1) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for row, value in enumerate(values):
        number = _parse_value(value)
        if number is None:
            raise table.error(_not_numeric_message(name, row + first_row, value))
        out[row] = number
    return out


def _is_finite_number(text: str) -> bool:
    number = _parse_value(text) if text else None
    return number is not None and math.isfinite(number)


def _parse_value(value: object) -> float | None:
    """Strictly convert one cell to float (missing -> nan); ``None`` means not a number."""
    if value is None or type(value).__name__ in _NA_TYPES:
        return math.nan
    if isinstance(value, (bool, np.bool_, numbers.Real, decimal.Decimal)):
        return float(value)  # type: ignore[arg-type]
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        return _parse_text(value)
    return None


def _parse_text(text: str) -> float | None:
    stripped = text.strip()
    if _NUMBER.fullmatch(stripped):
        return float(stripped)
    lowered = stripped.lower()
    if lowered in _MISSING:
        return math.nan
    sign = -1.0 if lowered.startswith("-") else 1.0
    special = _SPECIAL.get(lowered.lstrip("+-"))
    return None if special is None else sign * special


def _not_numeric_message(name: str, row: int, value: object) -> str:
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    hint = ""
    plain = value.strip().replace(",", "") if isinstance(value, str) else ""
    if isinstance(value, str) and "," in value and _NUMBER.fullmatch(plain):
        hint = " (commas are not read as thousands separators or decimal points)"
    if isinstance(value, str) and _DATE_OR_TIME.fullmatch(value.strip()):
        return f"column {name!r} is not numeric: row {row} has {shown}, a date or time — {_ELAPSED_TIME}"
    return (
        f"column {name!r} is not numeric: row {row} has {shown}{hint} — clean the data or "
        "choose another column"
    )


# --------------------------------------------------------------------------------------------------
# Splits and row checks
# --------------------------------------------------------------------------------------------------


def holdout_split(
    n: int, val_fraction: float, seed: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into training and validation indices, reproducibly.

    Parameters
    ----------
    n
        Number of rows (>= 1).
    val_fraction
        Fraction of rows for validation, in ``[0, 1)``. When positive and ``n >= 2`` at least one
        row is used for validation; at least one row is always kept for training.
    seed
        Seed of ``numpy.random.default_rng``; the same seed gives the same split.

    Returns
    -------
    train_idx, val_idx : numpy.ndarray
        Disjoint, sorted int64 index arrays whose union is ``range(n)``.

    Raises
    ------
    DataError
        If ``n < 1`` or ``val_fraction`` is outside ``[0, 1)``.
    """
    n = _check_n(n)
    if not (isinstance(val_fraction, numbers.Real) and 0.0 <= float(val_fraction) < 1.0):
        raise DataError(
            f"validation fraction must be in [0, 1), got {val_fraction!r} — e.g. 0.2 for 20%"
        )
    n_val = int(math.floor(n * float(val_fraction) + 0.5))
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]).astype(np.int64), np.sort(order[:n_val]).astype(np.int64)


def kfold_indices(n: int, k: int, seed: int | None = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split ``range(n)`` into ``k`` shuffled folds for cross-validation.

    Parameters
    ----------
    n
        Number of rows.
    k
        Number of folds, ``2 <= k <= n``; fold sizes differ by at most one.
    seed
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    list of (train_idx, val_idx)
        One pair per fold; each pair is disjoint and sorted, and the validation sets partition
        ``range(n)``.

    Raises
    ------
    DataError
        If ``k`` is not between 2 and ``n``.
    """
    n = _check_n(n)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 2 <= k <= n:
        raise DataError(f"number of folds must be between 2 and {n} (the rows), got {k!r}")
    order = np.random.default_rng(seed).permutation(n)
    folds = []
    for val in np.array_split(order, int(k)):
        mask = np.ones(n, dtype=bool)
        mask[val] = False
        folds.append((np.flatnonzero(mask).astype(np.int64), np.sort(val).astype(np.int64)))
    return folds


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise DataError(f"need at least one row to split, got n={n!r}")
    return int(n)


def check_enough_rows(n_rows: int, n_params: int, where: str = "training") -> None:
    """Raise if there are fewer rows than parameters to estimate.

    Parameters
    ----------
    n_rows
        Number of data rows available.
    n_params
        Number of free parameters.
    where
        Which rows these are, for the message (``"training"``, ``"validation"``...).

    Raises
    ------
    DataError
        If ``n_rows < n_params``.
    """
    if n_rows < n_params:
        raise DataError(
            f"only {n_rows} {where} row{'s' if n_rows != 1 else ''} for {n_params} parameter{'s' if n_params != 1 else ''} — add data, use a smaller "
            "validation fraction, fix some parameters or use a simpler model"
        )


#: weighted targets below this in magnitude have squares that underflow (float64's smallest normal
#: number is 2.2e-308): the sum of squares is 0 near any fit, and the solver could not compare two
SQUARES_UNDERFLOW = 1e-150


def check_squares_representable(y: np.ndarray, sigma: np.ndarray | None = None) -> None:
    """Refuse targets (divided by ``sigma``) too small for their squares: every residual of a good
    fit is smaller still, and a fit's sum of squares, its covariance and standard errors would
    underflow to 0.

    Raises
    ------
    DataError
        If the largest weighted target is nonzero and below :data:`SQUARES_UNDERFLOW` in magnitude.
    """
    with np.errstate(all="ignore"):
        weighted = np.abs(y if sigma is None else y / sigma)
        largest = float(np.max(weighted)) if weighted.size else 0.0
    if 0.0 < largest < SQUARES_UNDERFLOW:
        factor = 10.0 ** -math.floor(math.log10(largest))
        raise DataError(
            f"the {'weighted ' if sigma is not None else ''}target values are at most {largest:.3g} in magnitude: their squares "
            f"underflow in double precision, so least squares cannot compare fits — rescale y (e.g. fit y·{factor:.0e}) "
            "and scale the fitted amplitudes back"
        )
