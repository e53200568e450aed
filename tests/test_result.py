"""FitResult records: the JSON round trip, and files that are not results."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import gradfit
from gradfit.errors import DataError, OptionError
from tests.conftest import T_C, T_U


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(gradfit.fit("w*t_u + b", {"t_u": T_U}, T_C).to_json())


def _edit(record: dict, path: tuple, value: object) -> dict:
    edited = copy.deepcopy(record)
    target = edited
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return edited


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        (("parameters", 0, "value"), "abc", "numeric value"),
        (("parameters", 0, "value"), None, "numeric value"),
        (("parameters", 0, "name"), None, "needs a name"),
        (("history",), "x", "field 'history' is str"),
        (("covariance",), [[1.0]], "'covariance' must be 2 × 2"),
        (("statistics",), None, "field 'statistics' is NoneType"),
        (("settings",), "x", "field 'settings' is str"),
        (("input_names",), "t_u", "field 'input_names' is str"),
        (("model",), KeyError, "no field 'model'"),
        (("covariance", 0, 0), "many", "'many' is not a number"),
    ],
)
def test_a_record_with_a_bad_field_is_a_data_error_naming_it(record, path, value, fragment):
    with pytest.raises(DataError, match="not a gradfit result file") as caught:
        gradfit.FitResult.from_dict(_edit(record, path, value))
    assert fragment in str(caught.value)


def test_files_that_are_not_result_json_are_data_errors(tmp_path, record):
    (tmp_path / "binary.json").write_bytes(bytes(range(256)))
    with pytest.raises(DataError, match="not UTF-8 JSON text"):
        gradfit.FitResult.load(tmp_path / "binary.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="a JSON list, not an object"):
        gradfit.FitResult.load(tmp_path / "list.json")
    assert gradfit.FitResult.from_dict(record).params == pytest.approx(dict(zip(("w", "b"), [p["value"] for p in record["parameters"]])))


def test_predict_refuses_to_replace_a_column_of_the_data(tmp_path, thermometer):
    from rich.console import Console

    from gradfit.cli_fit import run_predict

    t_u, t_c = thermometer
    (tmp_path / "r.json").write_text(gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c).to_json())
    (tmp_path / "new.csv").write_text("t_u,prediction\n50,1\n")
    for column in ("t_u", "prediction"):
        with pytest.raises(OptionError, match=f"already has a column '{column}'"):
            run_predict(tmp_path / "r.json", tmp_path / "new.csv", tmp_path / "p.csv", column, Console())
    assert not (tmp_path / "p.csv").exists()


def test_non_finite_losses_and_statistics_survive_the_round_trip():
    import math

    import numpy as np

    from gradfit.predict import prediction_bands

    x = np.linspace(1.0, 6.0, 30)
    result = gradfit.fit("a*log(x - 2) + c", {"x": x}, np.log(np.abs(x - 2) + 0.1), val_data=({"x": [3.0, 4.0, 5.0]}, [1.0, 1.5, 2.0]))
    assert result.status == "non_finite" and math.isnan(result.train_loss) and math.isnan(result.statistics["redchi"])
    loaded = gradfit.FitResult.from_json(result.to_json())
    assert math.isnan(loaded.train_loss) and loaded.val_loss == pytest.approx(result.val_loss)
    assert all(math.isnan(v) for k, v in loaded.statistics.items() if math.isnan(result.statistics[k]))
    assert loaded.report() == result.report()  # printing a loaded result no longer fails on None
    _, confidence, _ = prediction_bands(loaded, {"x": [4.0]})
    assert np.isnan(confidence).all() == np.isnan(prediction_bands(result, {"x": [4.0]})[1]).all()
    lost = gradfit.fit("a*log(x - 2) + c", {"x": x}, np.log(np.abs(x - 2) + 0.1), val_data=({"x": [1.0, 1.5, 3.0]}, [1.0, 1.5, 2.0]))
    assert math.isnan(lost.val_loss)
    assert math.isnan(gradfit.FitResult.from_json(lost.to_json()).val_loss)  # a NaN validation loss is not "no validation set"


def test_results_written_with_null_statistics_load_them_as_nan(record):
    import math

    old = _edit(_edit(record, ("statistics", "redchi"), None), ("train_loss",), None)
    loaded = gradfit.FitResult.from_dict(old)
    assert math.isnan(loaded.statistics["redchi"]) and math.isnan(loaded.train_loss)
    loaded.report()


def test_save_writes_what_load_reads_and_to_json_given_a_path_says_to_save(tmp_path):
    from gradfit.errors import OutputError

    result = gradfit.fit("w*x + b", [1.0, 2.0, 3.0, 4.0], [2.1, 3.9, 6.2, 7.8])
    written = result.save(tmp_path / "fit.json")
    assert written == tmp_path / "fit.json" and gradfit.FitResult.load(written).to_dict() == result.to_dict()
    assert [p.name for p in tmp_path.iterdir()] == ["fit.json"]  # no temporary file left
    with pytest.raises(TypeError, match="to_json returns the text; to write it to 'out.json' call result.save"):
        result.to_json("out.json")
    with pytest.raises(OutputError, match="end the file name in .json"):
        result.save(tmp_path / "fit.txt")


def test_covariance_matrix_is_curve_fits_pcov_and_bands_are_prediction_bands(thermometer):
    from scipy.optimize import curve_fit

    from gradfit.predict import prediction_bands

    t_u, t_c = thermometer
    result = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c)
    _, pcov = curve_fit(lambda x, w, b: w * x + b, t_u, t_c)
    np.testing.assert_allclose(result.covariance_matrix(), pcov, rtol=1e-7)
    grid = {"t_u": np.array([20.0, 50.0, 90.0])}
    for got, expected in zip(result.bands(grid), prediction_bands(result, grid)):
        np.testing.assert_array_equal(got, expected)
    network = gradfit.fit("mlp:2", {"t_u": t_u}, t_c, epochs=3)
    assert network.bands(grid) is None
