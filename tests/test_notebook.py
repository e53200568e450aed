"""The notebook display (``FitResult._repr_html_``) and the HTML pieces it shares with the report.

Pages are read back with Python's ``html.parser``; numbers are compared with the result's own
fields and JSON text, figure sizes with the PNG header read by Pillow.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

import gradfit
from gradfit import notebook
from gradfit.report_html import data_summary, resolve_data
from gradfit.result import FitResult
from tests.conftest import T_C, T_U

DATA = {"t_u": T_U, "t_c": T_C}


class Tags(HTMLParser):
    """Start tags with attributes, and whether every opened element was closed."""

    VOID = {"img", "br", "meta"}

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.open: list[str] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open.pop() == tag, f"</{tag}> closes nothing"

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def values(self, row_attr: str) -> dict[tuple[str, str], str]:
        """``{(row key, field): data-value}`` of the cells in rows carrying ``row_attr``."""
        found, row = {}, None
        for tag, attrs in self.tags:
            if tag == "tr":
                row = attrs.get(row_attr)
            elif tag in ("td", "th") and row is not None and "data-value" in attrs:
                found[(row, attrs["data-field"])] = attrs["data-value"]
        return found


@pytest.fixture(scope="module")
def line_fit() -> FitResult:
    return gradfit.fit("w*t_u + b", DATA, "t_c", val=0.2, seed=1)


def with_range(result: FitResult) -> FitResult:
    points = resolve_data(result, DATA)
    return dataclasses.replace(result, settings={**result.settings, "data_summary": data_summary(points.train, points.val)})


def embedded_png(html: str) -> bytes:
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert match is not None
    return base64.b64decode(match.group(1))


def test_repr_html_shows_the_parameters_and_statistics_exactly(line_fit: FitResult) -> None:
    html = line_fit._repr_html_()
    page = Tags(html)
    assert page.open == [] and page.tags[0] == ("div", {"class": "gradfit"})
    record = json.loads(line_fit.to_json())
    params = page.values("data-param")
    for p in record["parameters"]:
        assert float(params[(p["name"], "value")]) == p["value"]
        assert float(params[(p["name"], "stderr")]) == p["stderr"]
        assert float(params[(p["name"], "ci_low")]) == p["ci_low"]
    stats = page.values("data-stat")
    for key in ("r2", "rmse", "redchi", "dof"):
        assert float(stats[(key, "value")]) == record["statistics"][key]
    assert float(stats[("val_loss", "value")]) == record["val_loss"]
    assert "w*t_u + b" in "".join(page.text)


def test_repr_html_styles_only_its_own_elements(line_fit: FitResult) -> None:
    css = re.search(r"<style>(.*?)</style>", line_fit._repr_html_(), re.S).group(1)
    selectors = [s.strip() for block in re.findall(r"([^{}]+)\{", css) for s in block.split(",")]
    assert selectors and all(s.startswith(".gradfit") for s in selectors), selectors


def test_small_figure_is_the_curve_when_the_range_is_known(line_fit: FitResult) -> None:
    from PIL import Image

    result = with_range(line_fit)
    fig = notebook.summary_figure(result)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "t_u" and ax.get_ylabel() == "t_c"
    assert len(ax.collections) == 2  # prediction band, confidence band
    assert [p.get_label() for p in ax.patches] == ["range of the data"]
    curve = ax.lines[0].get_ydata()
    assert np.allclose(curve, result.params["w"] * ax.lines[0].get_xdata() + result.params["b"])
    html = result._repr_html_()
    image = Image.open(io.BytesIO(embedded_png(html)))
    width = int(re.search(r'<img[^>]* width="(\d+)"', html).group(1))
    assert width == round(image.width * 96 / 144) and 300 < width < 500


def test_small_figure_falls_back_to_losses_then_correlations(line_fit: FitResult) -> None:
    import matplotlib.pyplot as plt

    from dataclasses import replace

    def without_range(result: FitResult) -> FitResult:
        return replace(result, settings={k: v for k, v in result.settings.items() if k != "data_summary"})

    trained = gradfit.fit("w*t_u + b", DATA, "t_c", optimizer="adam", optimizer_options={"lr": 0.5}, epochs=30)
    fig = notebook.summary_figure(trained)  # fits record their data's range: the curve
    assert fig.axes[0].get_ylabel() == "t_c"
    plt.close(fig)
    fig = notebook.summary_figure(without_range(trained))
    assert fig.axes[0].get_ylabel() == "loss" and len(fig.axes[0].lines) == 1
    plt.close(fig)
    fig = notebook.summary_figure(without_range(line_fit))  # no range, no history: the heat map
    assert fig.axes[0].images and fig.axes[0].images[0].get_array().shape == (2, 2)
    plt.close(fig)
    single = without_range(gradfit.fit("k*t_u", DATA, "t_c"))  # one parameter: no heat map
    assert notebook.summary_figure(single) is None
    assert "<img" not in single._repr_html_()


def test_names_are_escaped(line_fit: FitResult) -> None:
    record = json.loads(line_fit.to_json())
    record["y_name"] = "<b onmouseover=alert(1)>t</b>"
    record["parameters"][0]["name"] = '"><script>x</script>'
    html = FitResult.from_dict(record)._repr_html_()
    page = Tags(html)
    assert {tag for tag, _ in page.tags} <= {"div", "style", "strong", "code", "span", "table", "thead", "tbody", "tr", "th", "td", "img"}
    assert not any(name.startswith("on") for _, attrs in page.tags for name in attrs)
    assert '"><script>x</script>' in {attrs.get("data-param") for tag, attrs in page.tags if tag == "tr"}


@pytest.mark.parametrize("value", [0.1 + 0.2, 1e-300, -5.367104339599609, 123456789.123456789])
def test_number_cells_keep_the_exact_value(value: float) -> None:
    cell = notebook.number_cell(value, 4)
    assert float(re.search(r'data-value="([^"]+)"', cell.html()).group(1)) == value
    assert float(cell.text) == pytest.approx(value, rel=1e-3)


def test_missing_and_non_finite_numbers() -> None:
    assert notebook.number_cell(None).html() == '<td class="num">-</td>'
    assert notebook.number_cell(float("inf")).text == "inf"


def test_table_attributes_and_cells_are_escaped() -> None:
    html = notebook.table_html(['a"b'], [({"data-x": '"><i>'}, [notebook.text_cell("<i>")])])
    assert "<i>" not in html and "&quot;&gt;&lt;i&gt;" in html


def test_dollar_signs_in_names_are_drawn_literally() -> None:
    """matplotlib reads '$...$' as mathematics; a column name must not be (a bad one fails to draw)."""
    import matplotlib.pyplot as plt

    from gradfit.plot import figure

    name = r"$\frac$ per unit"
    fig, (ax,) = figure()
    ax.set_xlabel(notebook.mathtext_safe(name))
    fig.canvas.draw()  # would raise ValueError on the raw name
    plt.close(fig)
    fig, (ax,) = figure()
    ax.set_xlabel(name)
    with pytest.raises(ValueError):
        fig.canvas.draw()
    plt.close(fig)


def test_fixed_parameters_are_marked_and_have_no_error() -> None:
    result = gradfit.fit("w*t_u + b", DATA, "t_c", fix={"b": -17.0})
    row = re.search(r'<tr data-param="b">(.*?)</tr>', result._repr_html_()).group(1)
    assert 'data-field="note">fixed<' in row and 'data-field="stderr">-<' in row
    free = gradfit.fit("w*t_u + b", DATA, "t_c")._repr_html_()
    assert "note" not in free  # no empty notes column
