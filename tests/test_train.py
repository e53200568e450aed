"""The training loop: the book's numbers, stop rules, and the no-graph validation pass."""

from __future__ import annotations

import numpy as np
import pytest

import gradfit
from gradfit.demo import BOOK_RECIPE

#: the chapter's printed training losses every 500 epochs (SGD lr 1e-2 on 0.1-scaled input)
BOOK_LOSSES = [7.860118, 3.828538, 3.092191, 2.957697, 2.933134, 2.928648, 2.927830, 2.927680, 2.927651, 2.927648]


def test_book_recipe_reproduces_printed_losses_and_parameters(thermometer):
    t_u, t_c = thermometer
    result = gradfit.fit("w*t_un + b", {"t_un": 0.1 * t_u}, t_c, params={"w": 1.0, "b": 0.0}, **BOOK_RECIPE)
    printed = [result.history.train[epoch - 1] for epoch in range(500, 5001, 500)]
    np.testing.assert_allclose(printed, BOOK_LOSSES, rtol=1e-5)
    np.testing.assert_allclose([result.params["w"], result.params["b"]], [5.3671, -17.3012], atol=5e-5)
    assert result.status == "max_epochs" and result.iterations == 5000


def test_raw_readings_diverge_without_scaling_and_converge_with_it(thermometer):
    t_u, t_c = thermometer
    common = dict(optimizer="sgd", optimizer_options={"lr": 1e-2}, epochs=3000, params={"w": 1.0, "b": 0.0})
    raw = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, scale=False, **common)
    assert raw.status == "diverged" and not raw.success
    assert "learning rate" in raw.message
    assert np.isfinite(raw.params["w"]) and np.isfinite(raw.params["b"])
    scaled = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, **common)
    w, b = np.polyfit(t_u, t_c, 1)
    np.testing.assert_allclose([scaled.params["w"], scaled.params["b"]], [w, b], rtol=1e-8)


@pytest.mark.parametrize("scale", [True, False])
def test_a_start_where_the_model_is_not_finite_is_named_not_called_divergence(scale):
    t = np.linspace(2.0, 6.0, 12)
    t[0] = 0.5  # sqrt(t - k) is NaN there at k = 1
    result = gradfit.fit("a*sqrt(t - k)", {"t": t}, 2.0 * np.sqrt(np.abs(t - 1.2)), params={"a": 1.0, "k": 1.0}, loss="mae", scale=scale)
    assert result.status == "non_finite" and not result.success
    assert "starting values" in result.message and "learning rate" not in result.message
    assert result.params == {"a": 1.0, "k": 1.0}


def test_a_start_where_the_model_is_not_finite_on_validation_points_only_is_named_too():
    t = np.linspace(2.0, 6.0, 12)
    t_val = np.array([0.5, 3.0])  # sqrt(t - k) is NaN at the first validation point
    y = lambda t: 2.0 * np.sqrt(np.abs(t - 1.2))  # noqa: E731
    result = gradfit.fit("a*sqrt(t - k)", {"t": t}, y(t), params={"a": 1.0, "k": 1.0}, loss="mae", val_data=({"t": t_val}, y(t_val)))
    assert result.status == "non_finite" and "learning rate" not in result.message


def test_early_stopping_restores_best_validation_parameters():
    rng = np.random.default_rng(3)
    x = np.linspace(-1, 1, 40)
    y = np.sin(3 * x) + 0.3 * rng.standard_normal(40)
    model = " + ".join(f"c{k}*x**{k}" for k in range(1, 10)) + " + c0"
    result = gradfit.fit(model, x, y, optimizer="adam", optimizer_options={"lr": 0.05}, epochs=4000, val=0.3, seed=1, patience=50)
    assert result.status == "early_stopped"
    best = int(np.argmin(result.history.val))
    # the returned parameters are those of the best validation epoch: their validation loss is the minimum
    assert result.val_loss == pytest.approx(min(result.history.val), rel=1e-9)
    assert result.iterations - (best + 1) >= 50


def test_target_stops_the_run(thermometer):
    t_u, t_c = thermometer
    result = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, optimizer="adam", epochs=5000, target=3.5)
    assert result.status == "target"
    assert result.history.train[-1] <= 3.5 < result.history.train[0]


@pytest.mark.parametrize("val", [0.0, 0.2])
def test_the_parameters_returned_at_the_target_are_those_that_met_it(thermometer, val):
    # a large learning rate jumps far past the optimum: the parameters after the step that met the
    # target are much worse than those before it
    t_u, t_c = thermometer
    options = {"optimizer": "adam", "optimizer_options": {"lr": 0.5}, "epochs": 2000, "val": val, "seed": 0}
    result = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, target=5.0, **options)
    assert result.status == "target" and result.success
    monitored = result.val_loss if val else result.train_loss
    assert monitored <= 5.0
    assert monitored == pytest.approx((result.history.val or result.history.train)[-1], rel=1e-12)


def test_a_run_that_ends_far_above_its_start_diverged_and_keeps_its_best_parameters(thermometer):
    t_u, t_c = thermometer
    result = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, optimizer="sgd", optimizer_options={"lr": 1.05}, epochs=50)
    assert result.history.train[-1] > 1e4 * result.history.train[0]  # steadily growing, never 1e8 times
    assert result.status == "diverged" and not result.success
    assert result.train_loss == pytest.approx(min(result.history.train), rel=1e-12)


@pytest.mark.parametrize(("model", "start"), [("linear", None), ("w*x + b", {"w": 3.0, "b": 2.0})])
def test_a_fit_that_starts_at_or_next_to_a_perfect_fit_is_no_divergence(model, start):
    # the first loss is ~0 (the built-in line guesses its start from the data): growing to 1e-17 is not "exploding"
    x = np.arange(8.0)
    y = 3.0 * x + 2.0 + (np.array([1e-9, -1e-9] * 4) if start else 0.0)
    result = gradfit.fit(model, x, y, optimizer="adam", epochs=200, params=start)
    assert result.status == "max_epochs" and result.success
    np.testing.assert_allclose(result.values, [3.0, 2.0], atol=1e-2)


def test_validation_pass_builds_no_graph(thermometer):
    import torch

    from gradfit.model import make_model
    from gradfit.objective import ParametricObjective, Split

    t_u, t_c = (torch.as_tensor(v) for v in thermometer)
    model = make_model("w*t_u + b", ["t_u"])
    part = Split({"t_u": t_u}, t_c)
    objective = ParametricObjective(
        model, part, part, lambda r: (r**2).mean(), torch.tensor([1.0, 0.0], dtype=torch.float64),
        torch.tensor([True, True]), torch.full((2,), -np.inf, dtype=torch.float64), torch.full((2,), np.inf, dtype=torch.float64), True,
    )
    assert objective.train_loss().requires_grad
    val = objective.val_loss()
    assert not val.requires_grad and val.grad_fn is None


def test_minibatches_are_seeded_and_converge(thermometer):
    t_u, t_c = thermometer
    runs = [gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, optimizer="sgd", batch_size=4, epochs=400, seed=7) for _ in range(2)]
    assert runs[0].history.train == runs[1].history.train
    w, b = np.polyfit(t_u, t_c, 1)
    np.testing.assert_allclose(runs[0].params["w"], w, rtol=0.05)


def test_with_minibatches_the_target_is_met_by_the_parameters_returned(thermometer):
    t_u, t_c = thermometer
    common = {"optimizer": "sgd", "optimizer_options": {"lr": 0.3}, "batch_size": 2, "epochs": 2000}
    met = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, target=3.2, **common)
    # the average of an epoch's minibatch losses met it while the parameters moved (6.04 returned before)
    assert met.status == "target" and met.train_loss <= 3.2


def test_early_stopping_without_a_validation_set_says_it_watched_the_training_loss(thermometer):
    t_u, t_c = thermometer
    result = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, optimizer="sgd", optimizer_options={"lr": 0.5}, epochs=500, patience=5)
    assert result.status == "early_stopped" and result.message.startswith("training loss stopped improving")
    validated = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, optimizer="sgd", optimizer_options={"lr": 0.5}, epochs=500, patience=5, val=0.3)
    assert validated.message.startswith("validation loss stopped improving")


def test_an_interrupt_in_the_first_epoch_returns_the_starting_parameters(thermometer):
    t_u, t_c = thermometer

    def interrupt(epoch, train, val):
        raise KeyboardInterrupt

    start = {"w": 1.0, "b": 0.0}
    result = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, params=start, optimizer="sgd", optimizer_options={"lr": 1e-4},
                         scale=False, epochs=10, callback=interrupt)
    assert result.status == "interrupted" and "(epoch 1 of 1)" in result.message  # the loss epoch 1 began with
    assert result.params == start  # not the parameters after the first step


def test_an_interrupt_from_the_callback_keeps_that_epochs_best(thermometer):
    t_u, t_c = thermometer

    def interrupt_at_300(epoch, train, val):
        if epoch == 300:
            raise KeyboardInterrupt

    result = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, params={"w": 1.0, "b": 0.0}, optimizer="sgd",
                         optimizer_options={"lr": 1e-4}, scale=False, epochs=1000, callback=interrupt_at_300)
    assert "(epoch 300 of 300)" in result.message
    assert result.train_loss == pytest.approx(min(result.history.train), rel=1e-12)


def test_a_minibatch_run_that_explodes_in_its_first_epoch_diverged():
    # the first epoch's minibatch average, taken while the parameters exploded, was the reference:
    # Adam at lr 1e3 ended 49x above its start as a success, SGD at lr 1e100 was "not finite at
    # the starting values"
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + np.sin(x[:, 0]) + 0.1 * rng.standard_normal(100)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    result = gradfit.fit(net, x, y, optimizer="adam", optimizer_options={"lr": 1e3}, epochs=100, batch_size=10)
    assert result.status == "diverged" and not result.success and result.train_loss < np.var(y)
    line = gradfit.fit("w*x + b", {"x": x[:, 0]}, y, optimizer="sgd", optimizer_options={"lr": 1e100}, batch_size=5, epochs=5)
    assert line.status == "diverged" and "learning rate" in line.message
