"""Tests for gradfit.data: reading tables, building datasets, splits."""

from __future__ import annotations

import ast
import datetime
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradfit
from gradfit.data import (
    Dataset,
    as_dataset,
    check_enough_rows,
    holdout_split,
    kfold_indices,
    make_dataset,
    read_table,
)
from gradfit.errors import DataError

THERMO = Path(__file__).resolve().parents[1] / "src" / "gradfit" / "datasets" / "thermometer.csv"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------------
# read_table
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["data.py", "io.py"])
def test_no_torch_import_at_module_level(module: str) -> None:
    """The CLI reads data before any fit; importing torch there would cost ~2 s."""
    source = (Path(gradfit.__file__).parent / module).read_text(encoding="utf-8")
    tree = ast.parse(source)
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top_level if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in top_level if isinstance(n, ast.ImportFrom)]
    assert "numpy" in names or "contextlib" in names  # the check sees the imports at all
    assert not [n for n in names if n.split(".")[0] in ("torch", "pandas")]


@pytest.fixture()
def frame() -> pl.DataFrame:
    return pl.DataFrame({"a": [1.5, -2.0, 3.25], "b": [1, 2, 3], "name": ["p", "q", "r"]})


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".pq", ".ndjson", ".jsonl"])
def test_round_trip(tmp_path: Path, frame: pl.DataFrame, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    if suffix in (".csv", ".tsv"):
        frame.write_csv(path, separator="\t" if suffix == ".tsv" else ",")
    elif suffix in (".parquet", ".pq"):
        frame.write_parquet(path)
    else:
        frame.write_ndjson(path)
    got = read_table(path)
    assert got.columns == ["a", "b", "name"]
    assert got["a"].to_list() == [1.5, -2.0, 3.25]
    assert got["b"].to_list() == [1, 2, 3]
    assert got["name"].to_list() == ["p", "q", "r"]


def test_uppercase_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "DATA.CSV", "x,y\n1,2\n")
    assert read_table(path).shape == (1, 2)


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiter_sniffing(tmp_path: Path, delimiter: str) -> None:
    rows = ["x y", "1 2.5", "3 4.5", "5 6.5"]
    path = write(tmp_path, "data.txt", "\n".join(r.replace(" ", delimiter) for r in rows) + "\n")
    got = read_table(path)
    assert got.columns == ["x", "y"]
    assert got["y"].to_list() == [2.5, 4.5, 6.5]


def test_semicolon_with_decimal_commas_is_not_misread(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "x;y\n1;2,5\n3;4,5\n")
    got = read_table(path)
    assert got.columns == ["x", "y"]
    with pytest.raises(DataError, match=r"column 'y' is not numeric: row 1 has '2,5'"):
        make_dataset(path, inputs=["x"], y="y")


def test_single_column_csv(tmp_path: Path) -> None:
    got = read_table(write(tmp_path, "data.csv", "y\n1\n2\n"))
    assert got.columns == ["y"] and got["y"].to_list() == [1, 2]


def test_bom_is_stripped(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", b"\xef\xbb\xbft_c,t_u\r\n1,2\r\n")
    assert read_table(path).columns == ["t_c", "t_u"]
    ds = make_dataset(path, inputs=["t_u"], y="t_c")
    np.testing.assert_array_equal(ds.y, [1.0])


def test_bom_stripped_in_ndjson(tmp_path: Path) -> None:
    path = write(tmp_path, "data.ndjson", b'\xef\xbb\xbf{"a": 1, "b": 2}\n{"a": 3, "b": 4}\n')
    assert read_table(path)["b"].to_list() == [2, 4]


def test_quoted_newlines(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", 'label,x\n"two\nlines",1\n"plain",2\n')
    got = read_table(path)
    assert got["label"].to_list() == ["two\nlines", "plain"]
    assert got["x"].to_list() == [1, 2]


def test_header_whitespace_stripped(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "x , y\n 1, 2\n3 ,4\n")
    assert read_table(path).columns == ["x", "y"]
    ds = make_dataset(path, inputs=["x"], y="y")
    np.testing.assert_array_equal(ds.inputs["x"], [1.0, 3.0])
    np.testing.assert_array_equal(ds.y, [2.0, 4.0])


def test_type_inference_uses_whole_file(tmp_path: Path) -> None:
    lines = ["x,y"] + [f"{i},{i}" for i in range(300)] + ["300,abc"]
    path = write(tmp_path, "data.csv", "\n".join(lines) + "\n")
    assert read_table(path).height == 301
    with pytest.raises(DataError, match=r"column 'y' is not numeric: row 301 has 'abc'"):
        make_dataset(path, inputs=["x"], y="y")


def test_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as exc:
        read_table("data.csv")
    assert one_line(exc) == "file not found: data.csv — check the path"


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(DataError, match="is a directory") as exc:
        read_table(tmp_path / "d.csv")
    one_line(exc)


@pytest.mark.parametrize("name", ["data.xlsx", "data", "data.csv.gz"])
def test_unknown_extension(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, "x,y\n1,2\n")
    with pytest.raises(DataError, match=r"unsupported file type .* use one of \.csv") as exc:
        read_table(path)
    one_line(exc)


@pytest.mark.parametrize("name", ["e.csv", "e.parquet", "e.ndjson", "e.tsv"])
@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\xef\xbb\xbf"])
def test_empty_file(tmp_path: Path, name: str, content: bytes) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(DataError, match=r"file is empty: .*e\.") as exc:
        read_table(path)
    one_line(exc)


def test_binary_file(tmp_path: Path) -> None:
    path = write(tmp_path, "image.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")
    with pytest.raises(DataError, match="not a text table") as exc:
        read_table(path)
    one_line(exc)


def test_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "name,x\nMüller,1\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8") as exc:
        read_table(path)
    one_line(exc)


def test_not_utf8_after_sniff_sample(tmp_path: Path) -> None:
    body = "x,y\n" + "1,2\n" * 20000 + "3,\xe9\n"
    path = write(tmp_path, "data.csv", body.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8") as exc:
        read_table(path)
    one_line(exc)


def test_truncated_parquet(tmp_path: Path, frame: pl.DataFrame) -> None:
    path = tmp_path / "data.parquet"
    frame.write_parquet(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"not a complete Parquet file .* re-export") as exc:
        read_table(path)
    one_line(exc)


def test_corrupt_parquet_with_magic(tmp_path: Path, frame: pl.DataFrame) -> None:
    path = tmp_path / "data.parquet"
    frame.write_parquet(path)
    raw = path.read_bytes()
    path.write_bytes(raw[:8] + b"\x00" * (len(raw) - 16) + raw[-8:])
    with pytest.raises(DataError, match=r"cannot read .*data\.parquet as Parquet") as exc:
        read_table(path)
    one_line(exc)


def test_csv_named_parquet(tmp_path: Path) -> None:
    path = write(tmp_path, "data.parquet", "x,y\n1,2\n")
    with pytest.raises(DataError, match="not a complete Parquet file"):
        read_table(path)


def test_bad_ndjson_line_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "data.jsonl", '{"a": 1}\n{"a": 2\n{"a": 3}\n')
    with pytest.raises(DataError, match=r"line 2 of .*data\.jsonl is not valid JSON") as exc:
        read_table(path)
    one_line(exc)


def test_ndjson_non_object_line(tmp_path: Path) -> None:
    path = write(tmp_path, "data.ndjson", '{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"line 2 of .* is not a JSON object"):
        read_table(path)


def test_duplicate_headers(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "x,y,x\n1,2,3\n")
    with pytest.raises(DataError) as exc:
        read_table(path)
    assert one_line(exc).endswith(
        "duplicate column name 'x' (columns 1 and 3) — rename one of them"
    )


def test_duplicate_headers_after_whitespace(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "x,y, x\n1,2,3\n")
    with pytest.raises(DataError, match="duplicate column name 'x'"):
        read_table(path)


@pytest.mark.parametrize("header", ["x,,y", " ,x"])
def test_empty_header(tmp_path: Path, header: str) -> None:
    path = write(tmp_path, "data.csv", f"{header}\n1,2,3\n")
    with pytest.raises(DataError, match=r"column \d has an empty header — give every column"):
        read_table(path)


def test_a_header_ending_with_a_delimiter_says_to_remove_it(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "x,y,\n1,2,\n")
    with pytest.raises(DataError, match=r"the header ends with a delimiter, so column 3 has no name — remove the delimiter"):
        read_table(path)


def test_row_with_too_many_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "x,y\n1,2\n3,4\n5,6,7\n")
    with pytest.raises(DataError, match=r"row 3 has 3 fields but the header has 2") as exc:
        read_table(path)
    one_line(exc)


def test_unterminated_quote(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", 'x,y\n"1,2\n3,4\n')
    with pytest.raises(DataError, match=r"data\.csv") as exc:
        read_table(path)
    one_line(exc)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root can read any file")
    path = write(tmp_path, "data.csv", "x,y\n1,2\n")
    path.chmod(0)
    try:
        with pytest.raises(DataError, match="permission denied"):
            read_table(path)
    finally:
        path.chmod(0o644)


# --------------------------------------------------------------------------------------------------
# make_dataset
# --------------------------------------------------------------------------------------------------


def test_thermometer_from_path() -> None:
    ds = make_dataset(THERMO, inputs=["t_u"], y="t_c")
    reference = np.loadtxt(THERMO, delimiter=",", skiprows=1)
    assert ds.input_names == ("t_u",)
    assert ds.y_name == "t_c" and ds.n_rows == reference.shape[0] and ds.n_dropped == 0
    np.testing.assert_array_equal(ds.y, reference[:, 0])
    np.testing.assert_array_equal(ds.inputs["t_u"], reference[:, 1])
    assert ds.y.dtype == np.float64 and ds.inputs["t_u"].dtype == np.float64
    assert ds.sigma is None


def test_unknown_column_suggests() -> None:
    with pytest.raises(DataError) as exc:
        make_dataset({"t_c": [1.0], "t_u": [2.0]}, inputs=["t_x"], y="t_c")
    assert one_line(exc) == "unknown column 't_x'; did you mean 't_u'? (columns: t_c, t_u)"


def test_a_list_of_columns_where_one_is_asked_for_is_named_so() -> None:
    with pytest.raises(DataError) as exc:
        make_dataset({"t_c": [1.0], "t_u": [2.0], "t_v": [3.0]}, inputs=["t_u"], y="t_c, t_v")
    assert one_line(exc).startswith("unknown column 't_c, t_v': a list of columns where one is asked for — name one")
    with pytest.raises(DataError) as exc:  # a list that is not all columns is an ordinary unknown column
        make_dataset({"t_c": [1.0], "t_u": [2.0]}, inputs=["t_u"], y="t_c,zz")
    assert "a list of columns" not in one_line(exc) and "(columns: t_c, t_u)" in one_line(exc)


def test_unknown_column_without_suggestion_names_file(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "a,b\n1,2\n")
    with pytest.raises(DataError) as exc:
        make_dataset(path, inputs=["a"], y="zzz")
    assert one_line(exc) == f"{path}: unknown column 'zzz' (columns: a, b)"


def test_unknown_column_case_insensitive_hint() -> None:
    with pytest.raises(DataError, match=r"did you mean 'Temperature'\?"):
        make_dataset({"Temperature": [1.0], "y": [1.0]}, inputs=["TEMPERATURE"], y="y")


def test_unknown_column_whitespace_separated_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "data.txt", "x y\n1 2\n")
    with pytest.raises(DataError, match="separate columns with"):
        make_dataset(path, inputs=["x"], y="y")


def test_non_numeric_column() -> None:
    with pytest.raises(DataError) as exc:
        make_dataset({"x": ["1", "2", "abc"], "y": [1, 2, 3]}, inputs=["x"], y="y")
    assert one_line(exc) == (
        "column 'x' is not numeric: row 3 has 'abc' — clean the data or choose another column"
    )


def test_non_numeric_column_in_file_names_file(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "x,y\n1,2\n2,abc\n")
    with pytest.raises(DataError) as exc:
        make_dataset(path, inputs=["x"], y="y")
    assert one_line(exc).startswith(f"{path}: column 'y' is not numeric: row 2 has 'abc'")


@pytest.mark.parametrize("value", ["1,234", "1_000", "0x1F", "12 345", "1.2.3", "--1"])
def test_odd_number_formats_are_not_parsed(tmp_path: Path, value: str) -> None:
    path = tmp_path / "data.csv"
    pl.DataFrame({"x": ["5", value], "y": [1.0, 2.0]}).write_csv(path)
    with pytest.raises(DataError, match=r"column 'x' is not numeric: row 2 has"):
        make_dataset(path, inputs=["x"], y="y")


def test_thousands_separator_hint() -> None:
    with pytest.raises(DataError, match="commas are not read as thousands separators"):
        make_dataset({"x": ["1,234"], "y": [1.0]}, inputs=["x"], y="y")


def test_string_numbers_are_parsed_strictly() -> None:
    values = ["1", " -2.5 ", "+3e2", ".5", "7.", "-inf", "Infinity", "NaN", "NA", "", None]
    ds = make_dataset(
        {"x": values, "y": list(range(len(values)))}, inputs=["x"], y="y", nan_policy="omit"
    )
    np.testing.assert_array_equal(ds.inputs["x"], [1.0, -2.5, 300.0, 0.5, 7.0])
    assert ds.n_dropped == 6


def test_non_numeric_dtype_column() -> None:
    frame = pl.DataFrame({"d": [datetime.date(2020, 1, 1)], "y": [1.0]})
    with pytest.raises(DataError, match=r"column 'd' is not numeric \(type Date\)"):
        make_dataset(frame, inputs=["d"], y="y")


@pytest.mark.parametrize("column", [
    pl.Series([datetime.datetime(2026, 1, 1, 8), datetime.datetime(2026, 1, 1, 9)]),
    pl.Series([datetime.timedelta(hours=1), datetime.timedelta(hours=2)]),
    np.array(["2026-01-01T08:00", "2026-01-01T09:00"], dtype="datetime64[m]"),
    ["2026-01-01T08:00:00", "2026-01-01T09:00:00"],
    ["31/01/2026 12:00", "01/02/2026 12:00"],
    ["12:30", "12:45:05.5"],
], ids=["datetime", "duration", "numpy datetime64", "iso text", "day-first text", "time of day"])
def test_dates_and_times_are_refused_with_the_elapsed_time_fix(column: object) -> None:
    with pytest.raises(DataError) as exc:
        make_dataset({"t": column, "y": [1.0, 2.0]}, inputs=["t"], y="y")
    assert "column 't' is not numeric" in one_line(exc)
    assert one_line(exc).endswith("dates and times are not converted (the unit is yours to choose): give elapsed time, e.g. hours since the first reading")


@pytest.mark.parametrize("value", ["2/3", "1-2", "12:3"])
def test_text_like_a_date_only_in_part_gets_the_plain_message(value: str) -> None:
    with pytest.raises(DataError) as exc:
        make_dataset({"t": ["1", value], "y": [1.0, 2.0]}, inputs=["t"], y="y")
    assert one_line(exc).endswith("clean the data or choose another column")


def test_booleans_and_ints_are_numeric() -> None:
    frame = pl.DataFrame({"flag": [True, False, True], "n": [1, 2, 3], "y": [0.5, 1.5, 2.5]})
    ds = make_dataset(frame, inputs=["flag", "n"], y="y")
    np.testing.assert_array_equal(ds.inputs["flag"], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(ds.inputs["n"], [1.0, 2.0, 3.0])
    assert all(v.dtype == np.float64 for v in ds.to_columns().values())


def test_categorical_numbers_from_polars() -> None:
    frame = pl.DataFrame({"x": ["1", "2"], "y": [1.0, 2.0]}).with_columns(
        pl.col("x").cast(pl.Categorical)
    )
    np.testing.assert_array_equal(make_dataset(frame, inputs=["x"], y="y").inputs["x"], [1, 2])


@pytest.mark.parametrize(
    ("values", "count", "first"),
    [([1.0, np.nan, 3.0, np.nan], 2, 2), ([np.inf, 1.0, 2.0, 3.0], 1, 1), ([1, 2, 3, None], 1, 4)],
)
def test_nan_raise(values: list[float | None], count: int, first: int) -> None:
    data = {"x": [1.0, 2.0, 3.0, 4.0], "y": values}
    with pytest.raises(DataError) as exc:
        make_dataset(data, inputs=["x"], y="y")
    assert one_line(exc) == (
        f"column 'y' has {count} missing or non-finite values (first at row {first}) "
        "— use --nan omit (nan_policy='omit') to drop those rows"
    )


def test_missing_value_in_csv(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "x,y\n1,2\n2,\n3,NA\n4,5\n")
    with pytest.raises(DataError, match=r"column 'y' has 2 missing .* \(first at row 2\)"):
        make_dataset(path, inputs=["x"], y="y")
    ds = make_dataset(path, inputs=["x"], y="y", nan_policy="omit")
    np.testing.assert_array_equal(ds.inputs["x"], [1.0, 4.0])
    np.testing.assert_array_equal(ds.y, [2.0, 5.0])
    assert ds.n_dropped == 2


def test_nan_omit_drops_rows_with_any_bad_used_column() -> None:
    data = {
        "a": [1.0, np.nan, 3.0, 4.0, 5.0],
        "b": [1.0, 2.0, np.inf, 4.0, 5.0],
        "y": [1.0, 2.0, 3.0, -np.inf, 5.0],
        "s": [1.0, 1.0, 1.0, 1.0, np.nan],
        "unused": [np.nan] * 5,
    }
    ds = make_dataset(data, inputs=["a", "b"], y="y", sigma="s", nan_policy="omit")
    np.testing.assert_array_equal(ds.inputs["a"], [1.0])
    assert ds.n_dropped == 4 and ds.n_rows == 1
    assert ds.sigma_name == "s"


def test_nan_in_unused_column_is_ignored() -> None:
    ds = make_dataset({"x": [1.0, 2.0], "y": [1.0, 2.0], "z": [np.nan, 1.0]}, inputs=["x"], y="y")
    assert ds.n_rows == 2


def test_all_rows_dropped() -> None:
    with pytest.raises(DataError, match="no rows left"):
        make_dataset({"x": [np.nan, 1.0], "y": [1.0, np.nan]}, inputs=["x"], y="y",
                     nan_policy="omit")


def test_bad_nan_policy() -> None:
    with pytest.raises(DataError, match="nan_policy must be 'raise' or 'omit'"):
        make_dataset(
            {"x": [1.0], "y": [1.0]}, inputs=["x"], y="y", nan_policy="drop"  # type: ignore[arg-type]
        )


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_sigma_must_be_positive(bad: float) -> None:
    data = {"x": [1.0, 2.0, 3.0], "y": [1.0, 2.0, 3.0], "s": [1.0, 1.0, bad]}
    with pytest.raises(DataError) as exc:
        make_dataset(data, inputs=["x"], y="y", sigma="s", nan_policy="omit")
    assert "sigma column 's' must be positive: row 3 has" in one_line(exc)


def test_sigma_nan_raises_by_default() -> None:
    data = {"x": [1.0, 2.0], "y": [1.0, 2.0], "s": [1.0, np.nan]}
    with pytest.raises(DataError, match="column 's' has 1 missing"):
        make_dataset(data, inputs=["x"], y="y", sigma="s")


def test_sigma_column() -> None:
    ds = make_dataset({"x": [1, 2], "y": [3, 4], "s": [0.1, 0.2]}, inputs=["x"], y="y", sigma="s")
    np.testing.assert_array_equal(ds.sigma, [0.1, 0.2])
    np.testing.assert_array_equal(ds.column("s"), [0.1, 0.2])


def test_empty_data(tmp_path: Path) -> None:
    path = write(tmp_path, "data.csv", "x,y\n")
    with pytest.raises(DataError, match=r"no rows in the data") as exc:
        make_dataset(path, inputs=["x"], y="y")
    one_line(exc)
    with pytest.raises(DataError, match="no rows"):
        make_dataset({"x": [], "y": []}, inputs=["x"], y="y")


def test_length_mismatch_in_mapping() -> None:
    with pytest.raises(DataError, match=r"'y' has 2 rows but 'x' has 3"):
        make_dataset({"x": [1, 2, 3], "y": [1, 2]}, inputs=["x"], y="y")


def test_column_used_twice() -> None:
    with pytest.raises(DataError, match="used both as an input and as y"):
        make_dataset({"x": [1.0], "y": [1.0]}, inputs=["x", "y"], y="y")


def test_inputs_as_single_string_and_empty_inputs() -> None:
    data = {"x": [1.0, 2.0], "y": [3.0, 4.0]}
    assert make_dataset(data, inputs="x", y="y").input_names == ("x",)  # type: ignore[arg-type]
    ds = make_dataset(data, inputs=[], y="y")
    assert ds.input_names == () and ds.n_rows == 2


def test_mapping_of_polars_series_and_arrays() -> None:
    data = {"x": pl.Series([1, 2]), "y": np.array([3, 4], dtype=np.int32)}
    ds = make_dataset(data, inputs=["x"], y="y")
    np.testing.assert_array_equal(ds.y, [3.0, 4.0])


def test_object_array_with_mixed_types() -> None:
    values = np.array([1, 2.5, True, "4", None], dtype=object)
    ds = make_dataset({"x": values, "y": np.arange(5)}, inputs=["x"], y="y", nan_policy="omit")
    np.testing.assert_array_equal(ds.inputs["x"], [1.0, 2.5, 1.0, 4.0])
    with pytest.raises(DataError, match=r"row 2 has \{'a': 1\}"):
        make_dataset({"x": [1, {"a": 1}], "y": [1, 2]}, inputs=["x"], y="y")


def test_complex_column_rejected() -> None:
    with pytest.raises(DataError, match=r"type complex"):
        make_dataset({"x": np.array([1 + 1j]), "y": [1.0]}, inputs=["x"], y="y")


def test_two_dimensional_column_rejected() -> None:
    with pytest.raises(DataError, match="must be one-dimensional"):
        make_dataset({"x": np.ones((3, 2)), "y": np.ones(3)}, inputs=["x"], y="y")


def test_lazyframe_source() -> None:
    lazy = pl.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0]}).lazy()
    assert make_dataset(lazy, inputs=["x"], y="y").n_rows == 2


def test_unsupported_source() -> None:
    with pytest.raises(DataError, match="cannot use a int as a table"):
        make_dataset(3, inputs=["x"], y="y")


def test_pandas_frame() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"x": [1, 2, 3], "y": [0.5, None, 1.5]})
    ds = make_dataset(frame, inputs=["x"], y="y", nan_policy="omit")
    np.testing.assert_array_equal(ds.inputs["x"], [1.0, 3.0])
    assert ds.n_dropped == 1
    ds2 = as_dataset(frame, "y", nan_policy="omit")
    assert ds2.input_names == ("x",)


class FakeFrame:
    """Minimal pandas-like frame (duck typing; pandas itself is not a dependency)."""

    def __init__(self, columns: dict[object, list[object]]) -> None:
        self._data = columns
        self.columns = list(columns)

    def __getitem__(self, key: object) -> FakeSeries:
        return FakeSeries(self._data[key])

    def to_numpy(self) -> np.ndarray:
        return np.column_stack([np.asarray(v) for v in self._data.values()])


class FakeSeries:
    def __init__(self, values: list[object]) -> None:
        self._values = values

    def to_numpy(self) -> np.ndarray:
        return np.asarray(self._values, dtype=object)


def test_duck_typed_frame() -> None:
    frame = FakeFrame({"x": [1, 2], 7: [3.0, "4"]})
    ds = make_dataset(frame, inputs=["x"], y="7")
    np.testing.assert_array_equal(ds.y, [3.0, 4.0])


# --------------------------------------------------------------------------------------------------
# as_dataset
# --------------------------------------------------------------------------------------------------


def test_as_dataset_1d() -> None:
    ds = as_dataset(np.array([1, 2, 3]), [2.0, 4.0, 6.0])
    assert ds.input_names == ("x",) and ds.y_name == "y"
    np.testing.assert_array_equal(ds.inputs["x"], [1.0, 2.0, 3.0])


def test_as_dataset_2d_names() -> None:
    x = np.arange(6.0).reshape(3, 2)
    ds = as_dataset(x, np.zeros(3))
    assert ds.input_names == ("x0", "x1")
    np.testing.assert_array_equal(ds.inputs["x1"], [1.0, 3.0, 5.0])
    named = as_dataset(x, np.zeros(3), input_names=["a", "b"])
    assert named.input_names == ("a", "b")
    with pytest.raises(DataError, match="2 input names given for 3 input columns"):
        as_dataset(np.zeros((3, 3)), np.zeros(3), input_names=["a", "b"])


def test_as_dataset_length_mismatch() -> None:
    with pytest.raises(DataError, match=r"'y' has 2 rows but 'x' has 3") as exc:
        as_dataset(np.arange(3.0), np.arange(2.0))
    one_line(exc)


def test_as_dataset_bad_shape() -> None:
    with pytest.raises(DataError, match=r"shape \(n,\) or \(n, d\)"):
        as_dataset(np.zeros((2, 2, 2)), np.zeros(2))


def test_as_dataset_y_column_vector_and_sigma() -> None:
    ds = as_dataset([1.0, 2.0], np.array([[3.0], [4.0]]), sigma=[0.5, 0.5])
    np.testing.assert_array_equal(ds.y, [3.0, 4.0])
    np.testing.assert_array_equal(ds.sigma, [0.5, 0.5])
    with pytest.raises(DataError, match="must be positive"):
        as_dataset([1.0, 2.0], [3.0, 4.0], sigma=[0.5, -1.0])


def test_as_dataset_frame_with_column_names() -> None:
    frame = pl.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "t": [5.0, 6.0], "s": [1.0, 2.0]})
    ds = as_dataset(frame, "t", sigma="s")
    assert ds.input_names == ("a", "b") and ds.y_name == "t" and ds.sigma_name == "s"
    ds2 = as_dataset(frame, "t", input_names=["b"])
    assert ds2.input_names == ("b",)
    with pytest.raises(DataError, match=r"unknown column 'tt'; did you mean 't'\?"):
        as_dataset(frame, "tt")


def test_as_dataset_mapping_with_array_y() -> None:
    ds = as_dataset({"y": [1.0, 2.0]}, np.array([5.0, 6.0]))
    assert ds.input_names == ("y",) and ds.y_name == "y_"
    np.testing.assert_array_equal(ds.column("y_"), [5.0, 6.0])


def test_as_dataset_nan_omit() -> None:
    ds = as_dataset(np.array([1.0, np.nan, 3.0]), np.array([1.0, 2.0, 3.0]), nan_policy="omit")
    assert ds.n_rows == 2 and ds.n_dropped == 1
    with pytest.raises(DataError, match="column 'x' has 1 missing"):
        as_dataset(np.array([1.0, np.nan, 3.0]), np.array([1.0, 2.0, 3.0]))


def test_as_dataset_string_y_needs_table() -> None:
    with pytest.raises(DataError, match="unknown column 'y'"):
        as_dataset(np.arange(3.0), "y")


class FakeTensor:
    """Stands in for torch.Tensor: only detach().cpu().numpy() is used."""

    def __init__(self, values: np.ndarray) -> None:
        self._values = values

    def detach(self) -> FakeTensor:
        return self

    def cpu(self) -> FakeTensor:
        return self

    def numpy(self) -> np.ndarray:
        return self._values


def test_as_dataset_tensor_duck_typed() -> None:
    x = FakeTensor(np.arange(6, dtype=np.float32).reshape(3, 2))
    ds = as_dataset(x, FakeTensor(np.ones(3, dtype=np.float32)))
    assert ds.inputs["x0"].dtype == np.float64
    np.testing.assert_array_equal(ds.inputs["x0"], [0.0, 2.0, 4.0])


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


def make_small() -> Dataset:
    return make_dataset(
        {"a": [1, 2, 3, 4], "b": [5, 6, 7, 8], "y": [9, 10, 11, 12], "s": [1, 1, 2, 2]},
        inputs=["a", "b"],
        y="y",
        sigma="s",
    )


def test_dataset_subset_and_columns() -> None:
    ds = make_small()
    sub = ds.subset([3, 1])
    np.testing.assert_array_equal(sub.inputs["a"], [4.0, 2.0])
    np.testing.assert_array_equal(sub.y, [12.0, 10.0])
    np.testing.assert_array_equal(sub.sigma, [2.0, 1.0])
    assert sub.y_name == "y" and sub.sigma_name == "s" and sub.n_rows == 2
    masked = ds.subset(np.array([True, False, False, True]))
    np.testing.assert_array_equal(masked.inputs["b"], [5.0, 8.0])
    with pytest.raises(DataError, match="boolean mask"):
        ds.subset(np.array([True, False]))
    assert list(ds.to_columns()) == ["a", "b", "y", "s"]


def test_dataset_is_frozen_and_validates() -> None:
    ds = make_small()
    with pytest.raises(AttributeError):
        ds.y = np.zeros(4)  # type: ignore[misc]
    with pytest.raises(DataError, match="rows"):
        Dataset(inputs={"x": np.zeros(3)}, y=np.zeros(2))
    direct = Dataset(inputs={"x": [1, 2]}, y=[3, 4])
    assert direct.y.dtype == np.float64 and direct.sigma is None and direct.n_dropped == 0


def test_dataset_column_unknown() -> None:
    with pytest.raises(DataError, match=r"unknown column 'bb'; did you mean 'b'\?"):
        make_small().column("bb")


# --------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    fraction=st.floats(0.0, 0.99, allow_nan=False),
    seed=st.integers(0, 2**32 - 1),
)
def test_holdout_split_properties(n: int, fraction: float, seed: int) -> None:
    train, val = holdout_split(n, fraction, seed)
    assert train.dtype == np.int64 and val.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(n))
    assert train.size >= 1
    if fraction > 0 and n >= 2:
        assert val.size >= 1
    if fraction == 0:
        assert val.size == 0
    assert abs(val.size - n * fraction) <= 1.0 or val.size in (1, n - 1)
    t2, v2 = holdout_split(n, fraction, seed)
    np.testing.assert_array_equal(train, t2)
    np.testing.assert_array_equal(val, v2)


def test_holdout_split_matches_numpy_permutation() -> None:
    order = np.random.default_rng(42).permutation(10)
    train, val = holdout_split(10, 0.3, 42)
    np.testing.assert_array_equal(val, np.sort(order[:3]))
    np.testing.assert_array_equal(train, np.sort(order[3:]))
    different = [tuple(holdout_split(50, 0.2, s)[1]) for s in range(5)]
    assert len(set(different)) == 5


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_holdout_split_bad_fraction(fraction: float) -> None:
    with pytest.raises(DataError, match=r"validation fraction must be in \[0, 1\)"):
        holdout_split(10, fraction, 0)


def test_holdout_split_small_n() -> None:
    train, val = holdout_split(1, 0.5, 0)
    assert train.tolist() == [0] and val.size == 0
    train, val = holdout_split(2, 0.01, 0)
    assert train.size == 1 and val.size == 1
    with pytest.raises(DataError, match="at least one row"):
        holdout_split(0, 0.2, 0)


@pytest.mark.parametrize(("n", "k"), [(10, 3), (7, 7), (100, 5), (2, 2)])
def test_kfold_partition(n: int, k: int) -> None:
    folds = kfold_indices(n, k, seed=1)
    assert len(folds) == k
    vals = np.concatenate([val for _, val in folds])
    np.testing.assert_array_equal(np.sort(vals), np.arange(n))
    sizes = [val.size for _, val in folds]
    assert max(sizes) - min(sizes) <= 1
    for train, val in folds:
        assert np.intersect1d(train, val).size == 0
        np.testing.assert_array_equal(np.union1d(train, val), np.arange(n))
        assert np.all(np.diff(val) > 0) and np.all(np.diff(train) > 0)
    again = kfold_indices(n, k, seed=1)
    for (t1, v1), (t2, v2) in zip(folds, again):
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(v1, v2)


@pytest.mark.parametrize(("n", "k"), [(5, 1), (5, 6), (5, 2.5)])
def test_kfold_bad_k(n: int, k: int) -> None:
    with pytest.raises(DataError, match="number of folds must be between 2 and 5"):
        kfold_indices(n, k, seed=0)


def test_check_enough_rows() -> None:
    check_enough_rows(2, 2)
    with pytest.raises(DataError) as exc:
        check_enough_rows(1, 2)
    assert one_line(exc).startswith("only 1 training row for 2 parameters — ")
    with pytest.raises(DataError, match="only 0 validation rows for 1 parameter "):
        check_enough_rows(0, 1, where="validation")


def test_numbers_in_a_text_column_convert_exactly_as_python_reads_them():
    # the fast path (polars' parser) must agree with the strict one bit for bit
    from gradfit.data import numeric_column

    rng = np.random.default_rng(1)
    values = [repr(float(v)) for v in rng.normal(size=5000) * 10.0 ** rng.integers(-300, 300, 5000)]
    values += ["4.9e-324", "1.7976931348623157e308", " 2.5 ", "+3", ".5", "5.", "-inf", "NaN", "NA", ""]
    expected = [float(v) if v.strip() not in ("NA", "") else np.nan for v in values]
    np.testing.assert_array_equal(numeric_column(pl.Series("y", values), "y"), expected)


def test_a_csv_column_whose_type_changes_after_the_inference_rows_is_read_whole(tmp_path: Path) -> None:
    from gradfit.data import CSV_INFER_ROWS

    n = CSV_INFER_ROWS + 5
    rows = "".join(f"{i},{i % 7}\n" for i in range(n))  # integers first...
    (tmp_path / "late.csv").write_text("x,y\n" + rows + "1.5,2.5\n")  # ...then a float past the sample
    table = read_table(tmp_path / "late.csv")
    assert table.height == n + 1 and table["x"][-1] == 1.5 and table["y"][-1] == 2.5


@pytest.mark.parametrize("kind", ["array", "polars", "csv"])
def test_integers_float64_would_round_by_a_visible_part_of_their_range_are_refused(kind, tmp_path):
    """Epoch nanoseconds at 1 µs steps: float64 rounds 1.7e18 to multiples of 256, and the fit's
    slope came out 0.4 % off with R² = 0.9998 and no word."""
    ns = np.int64(1_700_000_000_000_000_000) + np.arange(20, dtype=np.int64) * 1000
    y = 3e-3 * np.arange(20) * 1000 + 5
    if kind == "csv":
        path = tmp_path / "clock.csv"
        path.write_text("ns,y\n" + "".join(f"{a},{b}\n" for a, b in zip(ns.tolist(), y)))
        data, target = gradfit.data.read_table(path), "y"
    else:
        data, target = ({"ns": ns} if kind == "array" else pl.DataFrame({"ns": ns})), y
    with pytest.raises(DataError, match="column 'ns' holds integers up to 1.7e\\+18, which float64 rounds by up to 128 \\(0.67% of their range\\)"):
        gradfit.fit("a*(ns - 1.7e18) + b", data, target)
    big = np.arange(20, dtype=np.int64) * 10**17  # large but exact enough for their spread
    assert gradfit.fit("a*ns + b", {"ns": big}, y).params["a"] == pytest.approx(3e-17, rel=1e-9)


def test_a_header_whose_first_name_starts_with_a_hash_is_a_header(tmp_path: Path) -> None:
    """'#id,x,y' (or VCF's '#CHROM') names columns; '# t,y' (np.savetxt) and '# made by...' are comments."""
    path = write(tmp_path, "data.csv", "#id,x,y\n1,0,1\n2,1,3\n")
    assert read_table(path).columns == ["#id", "x", "y"]
    saved = write(tmp_path, "saved.csv", "# x,y\n0,1\n1,3\n")
    with pytest.raises(DataError, match="the first line, '# x,y', is a comment"):
        read_table(saved)
