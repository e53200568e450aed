"""Interrupted and resumed runs: nothing lost, nothing half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import gradfit
from tests.conftest import T_C, T_U

QUADRATIC = "w2*t_u**2 + w1*t_u + b"
#: kills at random moments in the atomic-output test (each process also writes checkpoints)
KILLS = 24


def test_resume_from_checkpoint_ends_at_the_uninterrupted_result(tmp_path):
    common = dict(optimizer="adam", optimizer_options={"lr": 0.05}, epochs=500, val=0.2, seed=3, batch_size=4)
    full = gradfit.fit(QUADRATIC, {"t_u": T_U}, T_C, **common)
    checkpoint = tmp_path / "run.ckpt"
    gradfit.fit(QUADRATIC, {"t_u": T_U}, T_C, **{**common, "epochs": 230}, checkpoint=str(checkpoint), checkpoint_every=50)
    resumed = gradfit.fit(QUADRATIC, {"t_u": T_U}, T_C, **common, resume=str(checkpoint))
    assert resumed.values.tolist() == full.values.tolist()  # bit-identical
    assert resumed.history == full.history


def test_resume_refuses_a_checkpoint_of_another_fit(tmp_path):
    checkpoint = tmp_path / "run.ckpt"
    gradfit.fit(QUADRATIC, {"t_u": T_U}, T_C, optimizer="adam", epochs=20, checkpoint=str(checkpoint), checkpoint_every=10)
    with pytest.raises(gradfit.OptionError, match="different fit"):
        gradfit.fit("w*t_u + b", {"t_u": T_U}, T_C, optimizer="adam", epochs=40, resume=str(checkpoint))
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(gradfit.OptionError, match="not a gradfit checkpoint"):
        gradfit.fit(QUADRATIC, {"t_u": T_U}, T_C, optimizer="adam", epochs=40, resume=str(tmp_path / "junk.ckpt"))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"optimizer_options": {"lr": 0.01}}, "optimizer_options"),
        ({"loss": "mae"}, "loss"),
        ({"scale": False}, "scale"),
        ({"y": T_C * 2}, "data"),
        ({"dtype": "float32"}, "dtype"),
        ({"plateau": 10}, "plateau"),
    ],
)
def test_resume_refuses_a_checkpoint_written_with_other_settings_or_data(tmp_path, change, named):
    # each of these would continue from the stored state in the wrong coordinates or on the wrong objective
    checkpoint = tmp_path / "run.ckpt"
    common = {"optimizer": "adam", "optimizer_options": {"lr": 0.05}, "epochs": 20}
    gradfit.fit(QUADRATIC, {"t_u": T_U}, T_C, **common, checkpoint=str(checkpoint), checkpoint_every=10)
    y = change.pop("y", T_C)
    with pytest.raises(gradfit.OptionError, match=f"different fit \\({named}: "):
        gradfit.fit(QUADRATIC, {"t_u": T_U}, y, **{**common, "epochs": 40, **change}, resume=str(checkpoint))


def test_resume_with_no_epochs_left_is_refused(tmp_path):
    checkpoint = tmp_path / "run.ckpt"
    common = {"optimizer": "adam", "optimizer_options": {"lr": 0.05}}
    gradfit.fit(QUADRATIC, {"t_u": T_U}, T_C, **common, epochs=20, checkpoint=str(checkpoint), checkpoint_every=10)
    with pytest.raises(gradfit.OptionError, match="is at epoch 20, and this run stops at epoch 15"):
        gradfit.fit(QUADRATIC, {"t_u": T_U}, T_C, **common, epochs=15, resume=str(checkpoint))


def test_a_network_with_dropout_resumes_bit_identically(tmp_path):
    import torch

    def network() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))

    common = {"optimizer": "adam", "epochs": 120}
    full = gradfit.fit(network(), {"t_u": T_U}, T_C, **common)
    checkpoint = tmp_path / "net.ckpt"
    gradfit.fit(network(), {"t_u": T_U}, T_C, **{**common, "epochs": 60}, checkpoint=str(checkpoint), checkpoint_every=60)
    torch.rand(1000)  # another process, or other work, has moved torch's generator since
    resumed = gradfit.fit(network(), {"t_u": T_U}, T_C, **common, resume=str(checkpoint))
    assert resumed.history == full.history and resumed.train_loss == full.train_loss  # dropout's draws came back too


def _long_fit(folder: Path, *extra: str, stderr: int = subprocess.PIPE) -> subprocess.Popen:
    data = folder / "data.csv"
    rng = np.random.default_rng(0)
    x = np.linspace(-3, 3, 200)
    data.write_text("x,y\n" + "\n".join(f"{a},{np.sin(a) + 0.1 * rng.standard_normal()}" for a in x))
    command = [
        sys.executable, "-m", "gradfit.cli", "fit", str(data), "-m", "a*sin(w*x) + c", "-y", "y",
        "--optimizer", "adam", "--epochs", "10000000", "--quiet", *extra,
    ]
    env = {**os.environ, "COLUMNS": "80"}  # rich wraps at the width a pipe gets by default
    return subprocess.Popen(command, stderr=stderr, text=True, env=env)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "the fit never started"
        time.sleep(0.05)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_writes_best_parameters_and_exits(tmp_path, sig, code):
    out, checkpoint = tmp_path / "result.json", tmp_path / "run.ckpt"
    process = _long_fit(tmp_path, "--out", str(out), "--checkpoint", str(checkpoint), "--checkpoint-every", "50")
    _wait_for(checkpoint, process)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    result = json.loads(out.read_text())
    assert result["status"] == "interrupted" and "best parameters" in result["message"]
    assert all(np.isfinite(p["value"]) for p in result["parameters"])
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [f"interrupted: the best parameters so far are written to {out} (status 'interrupted')"]


def test_outputs_are_absent_or_complete_after_kills_at_random_moments(tmp_path):
    import torch

    rng = np.random.default_rng(11)
    survivors = 0
    for batch in range(KILLS // 4):
        runs = []
        for i in range(4):
            folder = tmp_path / f"run{batch}_{i}"
            folder.mkdir()
            extra = ("--out", str(folder / "r.json"), "--checkpoint", str(folder / "c.ckpt"), "--checkpoint-every", "1", "--epochs", "400")
            runs.append((folder, _long_fit(folder, *extra, stderr=subprocess.DEVNULL), rng.uniform(1.5, 5.0)))
        start = time.monotonic()
        for folder, process, delay in sorted(runs, key=lambda r: r[2]):
            time.sleep(max(0.0, start + delay - time.monotonic()))
            process.kill()
            process.wait()
            survivors += _check_outputs(folder, torch)
    assert survivors == KILLS


def _check_outputs(folder: Path, torch) -> int:
    # SIGKILL allows no clean-up: a hidden temporary file may remain, but never a partial output
    names = {p.name for p in folder.iterdir() if not p.name.startswith((".r.", ".c."))}
    assert names <= {"data.csv", "r.json", "c.ckpt"}, f"unexpected files: {names}"
    if "r.json" in names:
        assert json.loads((folder / "r.json").read_text())["parameters"]
    if "c.ckpt" in names:
        assert torch.load(folder / "c.ckpt", weights_only=True)["gradfit_checkpoint"] == 1
    return 1


# -- signals at other moments of a command, in this process (the signal is sent where it must land) ----
SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]


@pytest.fixture
def no_default_sigterm():
    """SIGTERM's default action would end pytest itself: fail the test instead where a signal gets past gradfit."""

    def reached(signum, frame):
        raise AssertionError("the signal reached the default handler: the process would have died without clean-up")

    previous = signal.signal(signal.SIGTERM, reached)
    yield
    signal.signal(signal.SIGTERM, previous)


def _fit_in_process(folder: Path, capsys, *extra: str) -> tuple[int, list[str]]:
    """Run ``gradfit fit`` on the thermometer in this process: (exit code, lines on stderr)."""
    from rich.console import Console

    from gradfit import cli

    data = folder / "data.csv"
    data.write_text("t_c,t_u\n" + "\n".join(f"{c},{u}" for c, u in zip(T_C, T_U)) + "\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "errors", Console(stderr=True, width=80))  # a terminal's width: no line may wrap
        with pytest.raises(SystemExit) as stop:
            cli.main(["fit", str(data), "-m", "w*t_u + b", "-y", "t_c", "--quiet", *extra])
    return stop.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _send_then(sig: int, action):
    """``action`` that first signals this process (the handler runs as soon as it returns)."""

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), sig)
        return action(*args, **kwargs)

    return signalled


def _leftovers(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} - {"data.csv"}


@pytest.mark.parametrize(("sig", "code"), SIGNALS)
def test_a_signal_while_the_outputs_are_written_keeps_the_result_and_no_temporary_file(tmp_path, capsys, monkeypatch, no_default_sigterm, sig, code):
    from gradfit import plot

    monkeypatch.setattr(plot, "plot_fit", _send_then(sig, plot.plot_fit))
    out = tmp_path / "r.json"
    status, lines = _fit_in_process(tmp_path, capsys, "--out", str(out), "--plot", str(tmp_path / "r.png"), "--report-html", str(tmp_path / "r.html"))
    assert status == code
    assert _leftovers(tmp_path) == {"r.json"}, "a temporary file or a half-written output was left"
    assert json.loads(out.read_text())["status"] == "converged"  # the fit had ended: its result is kept
    assert lines == [f"interrupted while writing the outputs: the result is written to {out} (status 'converged'); "
                     f"{tmp_path / 'r.png'}, {tmp_path / 'r.html'} not written"]


def test_sigterm_while_the_outputs_of_an_interrupted_fit_are_written_exits_143_with_its_parameters(tmp_path, capsys, monkeypatch, no_default_sigterm):
    # Ctrl-C stops the training, then SIGTERM arrives while the figure is drawn
    from gradfit import fitting, plot

    fit_dataset = fitting.fit_dataset

    def interrupted_at_epoch_50(model, train, settings, val=None):
        def callback(epoch, train_loss, val_loss):
            if epoch == 50:
                os.kill(os.getpid(), signal.SIGINT)

        return fit_dataset(model, train, replace(settings, callback=callback), val)

    monkeypatch.setattr(fitting, "fit_dataset", interrupted_at_epoch_50)
    monkeypatch.setattr(plot, "plot_fit", _send_then(signal.SIGTERM, plot.plot_fit))
    out = tmp_path / "r.json"
    status, lines = _fit_in_process(tmp_path, capsys, "--optimizer", "adam", "--epochs", "100000", "--out", str(out), "--plot", str(tmp_path / "r.png"))
    assert status == 143
    assert _leftovers(tmp_path) == {"r.json"}
    saved = json.loads(out.read_text())
    assert saved["status"] == "interrupted" and saved["iterations"] == 50
    assert len(lines) == 1 and "(status 'interrupted')" in lines[0]


@pytest.mark.parametrize(("sig", "code"), SIGNALS)
def test_a_signal_before_the_training_starts_exits_with_its_own_code(tmp_path, capsys, monkeypatch, no_default_sigterm, sig, code):
    # the handlers are in place while torch is imported and the fit is set up
    from gradfit import fitting

    monkeypatch.setattr(fitting, "fit_dataset", _send_then(sig, fitting.fit_dataset))
    status, lines = _fit_in_process(tmp_path, capsys, "--optimizer", "adam", "--epochs", "100000", "--out", str(tmp_path / "r.json"))
    assert (status, lines) == (code, ["interrupted before a result was written"])
    assert _leftovers(tmp_path) == set()


def test_checkpoint_may_be_the_file_resumed_from(tmp_path, capsys):
    checkpoint, out = tmp_path / "run.ckpt", tmp_path / "r.json"
    common = ("--optimizer", "adam", "--checkpoint", str(checkpoint), "--checkpoint-every", "50")
    assert _fit_in_process(tmp_path, capsys, *common, "--epochs", "100") == (0, [])
    assert _fit_in_process(tmp_path, capsys, *common, "--epochs", "200", "--resume", str(checkpoint), "--out", str(out)) == (0, [])
    assert json.loads(out.read_text())["iterations"] == 200
