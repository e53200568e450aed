"""The HTML report: its numbers against the JSON result, escaping, self-containment, and a real browser.

References are independent of the report code: the JSON text of the result, numpy for the data
summary and the correlations, Python's ``html.parser`` for reading the page back, least-squares
normal equations for the split (training residuals of a line with intercept sum to zero), and
headless Chromium for loading the page and drawing it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import gradfit
from gradfit.errors import OutputError
from gradfit.report_html import data_summary, render_report, resolve_data, write_report
from gradfit.result import FitResult

from tests.conftest import T_C, T_U

LINE = "w*t_u + b"
DATA = {"t_u": T_U, "t_c": T_C}
#: tags the report may contain; anything else (script, iframe, object, link...) is a failure
ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "section", "h1", "h2", "p", "br", "span",
    "code", "pre", "strong", "ul", "li", "figure", "figcaption", "img", "div", "details", "summary",
    "table", "caption", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip


# -- reading the page back -------------------------------------------------------------------------
class Page(HTMLParser):
    """Every start tag with its attributes, the text of each cell, and the page's text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.cells: list[tuple[dict[str, str | None], dict[str, str | None], str]] = []  # (row attrs, cell attrs, text)
        self.texts: list[str] = []
        self._row: dict[str, str | None] = {}
        self._cell: dict[str, str | None] | None = None
        self._cell_text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self._row = dict(attrs)
        elif tag in ("td", "th"):
            self._cell, self._cell_text = dict(attrs), []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append((self._row, self._cell, "".join(self._cell_text)))
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if self._cell is not None:
            self._cell_text.append(data)

    def cell(self, row_key: str, row_value: str, field: str) -> tuple[dict[str, str | None], str]:
        """The attributes and text of the cell ``field`` in the row whose ``row_key`` is ``row_value``."""
        found = [(c, t) for r, c, t in self.cells if r.get(row_key) == row_value and c.get("data-field") == field]
        assert len(found) == 1, (row_key, row_value, field, found)
        return found[0]

    def images(self) -> list[dict[str, str | None]]:
        return [attrs for tag, attrs in self.tags if tag == "img"]


def assert_cell_equals(page: Page, row_key: str, row_value: str, field: str, expected: float | None) -> None:
    """The cell's exact value (``data-value``) is ``expected``, and its rounded text agrees with it."""
    attrs, text = page.cell(row_key, row_value, field)
    if expected is None:
        assert "data-value" not in attrs and text == "-"
        return
    assert float(attrs["data-value"]) == expected  # the JSON number, bit for bit
    digits = len(re.sub(r"[^0-9]", "", text.split("e")[0]).lstrip("0")) or 1
    assert float(text) == pytest.approx(expected, rel=10.0 ** (1 - digits), abs=1e-300)


# -- results ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def line_fit() -> FitResult:
    """A line through the thermometer readings with a seeded 20% hold-out."""
    return gradfit.fit(LINE, DATA, "t_c", val=0.2, seed=1)


@pytest.fixture(scope="module")
def saved(line_fit: FitResult) -> tuple[FitResult, dict]:
    """``line_fit`` through its JSON text, with the data summary that 'gradfit fit' records."""
    points = resolve_data(line_fit, DATA)
    recorded = dataclasses.replace(
        line_fit, settings={**line_fit.settings, "data_summary": data_summary(points.train, points.val)}
    )
    text = recorded.to_json()
    return FitResult.from_json(text), json.loads(text)


@pytest.fixture(scope="module")
def report_with_data(saved: tuple[FitResult, dict]) -> Page:
    return Page(render_report(saved[0], DATA))


def test_parameters_statistics_and_correlations_equal_the_json(saved: tuple[FitResult, dict], report_with_data: Page) -> None:
    _, record = saved
    page = report_with_data
    for p in record["parameters"]:
        for field in ("value", "stderr", "ci_low", "ci_high"):
            assert_cell_equals(page, "data-param", p["name"], field, p[field])
    for key in ("r2", "rmse", "chisqr", "redchi", "aic", "bic", "dof", "condition"):
        assert_cell_equals(page, "data-stat", key, "value", record["statistics"][key])
    assert_cell_equals(page, "data-stat", "train_loss", "value", record["train_loss"])
    assert_cell_equals(page, "data-stat", "val_loss", "value", record["val_loss"])
    assert_cell_equals(page, "data-stat", "n_train", "value", record["n_train"])
    cov = np.array(record["covariance"])
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    names = [p["name"] for p in record["parameters"]]
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            attrs, _ = page.cell("data-param", a, b)
            assert float(attrs["data-value"]) == pytest.approx(corr[i, j], abs=1e-12)


def test_data_summary_equals_numpy(report_with_data: Page) -> None:
    for name, values in DATA.items():
        for field, expected in (("min", values.min()), ("max", values.max()), ("mean", values.mean()), ("std", values.std(ddof=1))):
            attrs, _ = report_with_data.cell("data-column", name, field)
            assert float(attrs["data-value"]) == pytest.approx(expected, rel=1e-14)


def test_data_summary_of_values_near_the_float64_limit_does_not_overflow() -> None:
    from gradfit.data import Dataset

    x = np.linspace(1.0, 2.0, 9)
    y = 1e300 * x
    summary = data_summary(Dataset(inputs={"x": x}, y=y, y_name="y"))["columns"]["y"]
    assert summary["mean"] == pytest.approx(1e300 * x.mean(), rel=1e-14)
    assert summary["std"] == pytest.approx(1e300 * x.std(ddof=1), rel=1e-14)
    with_nan = data_summary(Dataset(inputs={"x": x}, y=np.where(x > 1.9, np.nan, y), y_name="y"))["columns"]["y"]
    assert with_nan["std"] == pytest.approx(1e300 * x[x <= 1.9].std(ddof=1), rel=1e-14)


def test_the_fit_split_is_reproduced(line_fit: FitResult) -> None:
    """Least squares with an intercept leaves training residuals that sum to zero: only the true split does."""
    points = resolve_data(line_fit, DATA)
    assert points.split_known and points.val is not None
    assert (points.train.n_rows, points.val.n_rows) == (line_fit.n_train, line_fit.n_val)
    train_residuals = points.train.y - line_fit.predict(points.train.inputs)
    val_residuals = points.val.y - line_fit.predict(points.val.inputs)
    assert abs(train_residuals.sum()) < 1e-9 * np.abs(T_C).sum()
    assert abs(val_residuals.sum()) > 1e-3


def test_figures_with_and_without_data(saved: tuple[FitResult, dict], report_with_data: Page) -> None:
    alts = [img["alt"] for img in report_with_data.images()]
    assert alts == ["fit", "residuals", "correlation heat map"]
    without = Page(render_report(saved[0]))  # the curve over the recorded range, no residuals
    assert [img["alt"] for img in without.images()] == ["fit", "correlation heat map"]
    assert "Residuals need the data" in "".join(without.texts)
    bare = dataclasses.replace(saved[0], settings={k: v for k, v in saved[0].settings.items() if k != "data_summary"})
    text = "".join(Page(render_report(bare)).texts)
    assert "No input range recorded" in text and "not recorded" in text


def test_loss_curves_for_a_gradient_fit() -> None:
    result = gradfit.fit(LINE, DATA, "t_c", optimizer="adam", optimizer_options={"lr": 0.5}, epochs=60)
    page = Page(render_report(result))
    assert "loss curves" in [img["alt"] for img in page.images()]


def test_user_strings_cannot_inject_markup(saved: tuple[FitResult, dict]) -> None:
    hostile = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    record = {**saved[1], "model": "a<b>", "y_name": "<script>alert(3)</script>", "warnings": [f"look {hostile}"]}
    record["parameters"] = [{**record["parameters"][0], "name": hostile}, record["parameters"][1]]
    result = FitResult.from_dict(record)
    html = render_report(result, command=f"gradfit report {shlex.quote(hostile)}")
    page = Page(html)
    assert {tag for tag, _ in page.tags} <= ALLOWED_TAGS
    for tag, attrs in page.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
    assert "<script" not in html.lower()
    text = "".join(page.texts)
    assert "<script>alert(3)</script> = a<b>" in text  # shown as text, unchanged
    assert page.cell("data-param", hostile, "value")[0]["data-value"] == repr(result.parameters[0].value)
    assert "fit: could not be drawn" in text  # 'a<b>' is no formula: a note, not a crash


def test_the_page_is_self_contained(report_with_data: Page) -> None:
    metas = {attrs.get("http-equiv"): attrs.get("content") for tag, attrs in report_with_data.tags if tag == "meta"}
    assert "default-src 'none'" in (metas.get("Content-Security-Policy") or "")
    for tag, attrs in report_with_data.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed")
        for name in ("src", "href"):
            assert attrs.get(name) is None or attrs[name].startswith("data:image/png;base64,"), (tag, attrs)


def test_write_report_is_atomic(saved: tuple[FitResult, dict], tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    write_report(saved[0], target)
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    with pytest.raises(OutputError, match="does not exist"):
        write_report(saved[0], tmp_path / "missing" / "report.html")


# -- the command line ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def gradfit_command(folder: Path, *args: str) -> Run:
    command = [sys.executable, "-m", "gradfit.cli", *args]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    return Run(command, done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory, saved: tuple[FitResult, dict]) -> dict[str, tuple[Path, Run]]:
    """Three runs side by side: fit --report-html, report --data, a failing fit."""
    folders = {name: tmp_path_factory.mktemp(name) for name in ("fit", "report", "failing")}
    for folder in folders.values():
        (folder / "th.csv").write_text("t_c,t_u\n" + "\n".join(f"{c},{u}" for c, u in zip(T_C, T_U)) + "\n")
    (folders["report"] / "result.json").write_text(saved[0].to_json())
    fit_args = ("fit", "th.csv", "--model", LINE, "--y", "t_c", "--val", "0.2", "--seed", "1", "-q")
    jobs = {
        "fit": (*fit_args, "--out", "result.json", "--report-html", "fit.html"),
        "report": ("report", "result.json", "-o", "report.html", "--data", "th.csv"),
        "failing": ("fit", "th.csv", "--model", LINE, "--y", "t_f", "--report-html", "fit.html"),
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(gradfit_command, folders[name], *args) for name, args in jobs.items()}
        return {name: (folders[name], future.result()) for name, future in futures.items()}


def test_fit_writes_a_report_with_the_json_numbers_and_its_command_line(cli_runs: dict[str, tuple[Path, Run]]) -> None:
    folder, run = cli_runs["fit"]
    assert run.returncode == 0, run.stderr
    record = json.loads((folder / "result.json").read_text())
    page = Page((folder / "fit.html").read_text(encoding="utf-8"))
    for p in record["parameters"]:
        for field in ("value", "stderr", "ci_low", "ci_high"):
            assert_cell_equals(page, "data-param", p["name"], field, p[field])
    assert_cell_equals(page, "data-stat", "r2", "value", record["statistics"]["r2"])
    text = "".join(page.texts)
    assert shlex.join(run.args[3:]) in text  # quoted: --model 'w*t_u + b'
    assert "--model 'w*t_u + b'" in text
    assert [img["alt"] for img in page.images()] == ["fit", "residuals", "correlation heat map"]
    python = [t for r, c, t in page.cells if r.get("data-package") == "python"]
    assert python == ["python", record["settings"]["python"], platform.python_version()]
    assert record["settings"]["data_summary"]["columns"]["t_u"]["max"] == T_U.max()


def test_report_command_draws_the_data_file(cli_runs: dict[str, tuple[Path, Run]], saved: tuple[FitResult, dict]) -> None:
    folder, run = cli_runs["report"]
    assert run.returncode == 0, run.stderr
    assert "report written: report.html" in run.stdout
    page = Page((folder / "report.html").read_text(encoding="utf-8"))
    assert [img["alt"] for img in page.images()] == ["fit", "residuals", "correlation heat map"]
    assert "split as in the fit (val=0.2, seed=1)" in "".join(page.texts)
    for p in saved[1]["parameters"]:
        assert_cell_equals(page, "data-param", p["name"], "value", p["value"])


def test_report_command_without_data_writes_next_to_the_result(saved: tuple[FitResult, dict], tmp_path: Path) -> None:
    from rich.console import Console

    from gradfit.cli_report import run_report

    (tmp_path / "result.json").write_text(saved[0].to_json())
    written = run_report(tmp_path / "result.json", None, None, Console(file=io.StringIO()))
    assert written == tmp_path / "result.html"
    page = Page(written.read_text(encoding="utf-8"))
    assert [img["alt"] for img in page.images()] == ["fit", "correlation heat map"]


def test_a_failed_fit_writes_no_report(cli_runs: dict[str, tuple[Path, Run]]) -> None:
    folder, run = cli_runs["failing"]
    assert run.returncode == 2 and "t_f" in run.stderr
    assert not (folder / "fit.html").exists()


# -- a real browser --------------------------------------------------------------------------------
#: records script errors, failed resources and security-policy violations, then the state of every image
PROBE = """<script>
window.__problems = [];
window.addEventListener("error", function (e) {
  __problems.push("error: " + (e.message || (e.target && e.target.tagName) || "?"));
}, true);
document.addEventListener("securitypolicyviolation", function (e) {
  __problems.push("csp: " + e.violatedDirective + " " + e.blockedURI);
});
["error", "warn"].forEach(function (level) {
  var original = console[level];
  console[level] = function () { __problems.push("console." + level + ": " + Array.from(arguments).join(" ")); original.apply(console, arguments); };
});
window.addEventListener("load", function () {
  var images = Array.from(document.images).map(function (i) { return [i.complete, i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width]; });
  document.documentElement.setAttribute("data-probe", JSON.stringify({problems: __problems, images: images}));
});
</script>"""
HEAD = '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
]  # fmt: skip


def find_chromium() -> str | None:
    return next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))), None)


def chromium(tmp_path: Path, page: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    browser = find_chromium()
    if browser is None:
        pytest.skip("chromium not found (make test installs it with apt-get install chromium)")
    profile = tmp_path / f"profile-{mode[0].lstrip('-').split('=')[0]}"
    command = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *mode, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=90)


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A report with every figure (a gradient fit: loss curves too), as written to disk."""
    result = gradfit.fit(LINE, DATA, "t_c", optimizer="adam", optimizer_options={"lr": 0.5}, epochs=60, val=0.2, seed=1)
    folder = tmp_path_factory.mktemp("browser")
    path = write_report(result, folder / "report.html", DATA)
    yield path, path.read_text(encoding="utf-8")


def test_the_browser_loads_it_without_errors_and_every_image_decodes(browser_page: tuple[Path, str], tmp_path: Path) -> None:
    path, html = browser_page
    assert html.startswith(HEAD)
    probed = tmp_path / "probed.html"
    probed.write_text(HEAD + PROBE + html[len(HEAD):], encoding="utf-8")  # before the page's security policy
    done = chromium(tmp_path, probed, "--dump-dom", "--window-size=1100,1400")
    match = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert match is not None, done.stderr[-2000:]
    probe = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["problems"] == []
    assert len(probe["images"]) == html.count("<img ") == 4
    for complete, width, height, shown in probe["images"]:
        assert complete and width > 300 and height > 200 and shown > 300
    numbers = lambda page: [(r.get("data-param") or r.get("data-stat"), c.get("data-field"), c.get("data-value")) for r, c, _ in page.cells if c.get("data-value")]  # noqa: E731
    assert numbers(Page(done.stdout)) == numbers(Page(html)) and len(numbers(Page(html))) > 20  # the DOM keeps the exact numbers


def test_the_browser_draws_the_figures(browser_page: tuple[Path, str], tmp_path: Path) -> None:
    from PIL import Image

    from gradfit.plot import CURVE_COLOR, TRAIN_COLOR

    path, _ = browser_page
    shot = tmp_path / "shot.png"
    done = chromium(tmp_path, path, f"--screenshot={shot}", "--window-size=1100,1500")
    assert shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    assert len(np.unique(pixels, axis=0)) > 500  # anti-aliased curves, bands, text: not a blank page
    assert (pixels.min(axis=1) < 200).mean() > 0.03
    for color in (CURVE_COLOR, TRAIN_COLOR):  # the fitted curve and the training points
        rgb = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels - rgb).sum(axis=1) < 30).sum() > 200, color



def test_the_report_figure_draws_error_bars_and_log_axes_as_the_plot_does():
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer

    from gradfit.data import as_dataset
    from gradfit.report_html import fit_figure, resolve_data

    x = np.geomspace(1e-3, 1e3, 40)
    sigma = 0.05 * 2.5 * x**1.7
    y = 2.5 * x**1.7 * (1.0 + 0.05 * np.cos(7 * np.arange(40)))
    result = gradfit.fit("a*x**b", {"x": x}, y, params={"a": 1.0, "b": 1.0}, sigma=sigma)
    fig = fit_figure(result, resolve_data(result, (as_dataset({"x": x}, y, sigma=sigma), None)))
    ax = fig.axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert any(isinstance(c, ErrorbarContainer) for c in ax.containers)
    plt.close(fig)
