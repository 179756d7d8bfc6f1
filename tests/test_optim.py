"""Optimizer-state surgery after re-initialisation."""

import pytest
import torch as th

from crl.optim import clear_optimizer_state, reset_parameter_columns_state, reset_parameter_state


def _stepped_adam() -> tuple[th.nn.Linear, th.optim.Adam]:
    layer = th.nn.Linear(3, 4)
    optimizer = th.optim.Adam(layer.parameters(), lr=1e-3)
    for _ in range(2):
        optimizer.zero_grad()
        layer(th.randn(5, 3)).pow(2).sum().backward()
        optimizer.step()
    return layer, optimizer


def test_reset_units_zeroes_their_moments_only() -> None:
    layer, optimizer = _stepped_adam()
    state = optimizer.state[layer.weight]
    before = state["exp_avg"].clone()
    reset_parameter_state(optimizer, layer.weight, th.tensor([False, True, False, True]))
    assert th.all(state["exp_avg"][[1, 3]] == 0) and th.all(state["exp_avg_sq"][[1, 3]] == 0)
    assert th.equal(state["exp_avg"][[0, 2]], before[[0, 2]])
    assert float(state["step"]) == 2.0


def test_reset_whole_tensor_restarts_its_step() -> None:
    layer, optimizer = _stepped_adam()
    reset_parameter_state(optimizer, layer.bias)
    assert layer.bias not in optimizer.state and layer.weight in optimizer.state
    optimizer.zero_grad()
    layer(th.randn(5, 3)).sum().backward()
    optimizer.step()
    assert float(optimizer.state[layer.bias]["step"]) == 1.0
    assert float(optimizer.state[layer.weight]["step"]) == 3.0


def test_reset_columns_and_clear() -> None:
    layer, optimizer = _stepped_adam()
    reset_parameter_columns_state(optimizer, layer.weight, th.tensor([0, 2]))
    assert th.all(optimizer.state[layer.weight]["exp_avg"][:, [0, 2]] == 0)
    assert th.all(optimizer.state[layer.weight]["exp_avg"][:, 1] != 0)
    clear_optimizer_state(optimizer)
    assert len(optimizer.state) == 0


@pytest.mark.parametrize(
    ("optimizer_class", "options", "fresh"),
    [
        (
            th.optim.RMSprop,
            {"centered": True, "momentum": 0.9},
            {"square_avg": 0.0, "grad_avg": 0.0, "momentum_buffer": 0.0},
        ),
        (th.optim.Adamax, {}, {"exp_avg": 0.0, "exp_inf": 0.0}),
        (th.optim.Adagrad, {"initial_accumulator_value": 0.1}, {"sum": 0.1}),
        (th.optim.Rprop, {}, {"prev": 0.0, "step_size": 0.01}),
    ],
)
def test_reset_units_restores_every_per_entry_state_to_its_fresh_value(optimizer_class, options, fresh) -> None:
    # Not only Adam's: a list of Adam's and SGD's names left RMSprop's grad_avg, Adamax's exp_inf and
    # Adagrad's accumulator as they were.
    layer = th.nn.Linear(3, 4)
    optimizer = optimizer_class(layer.parameters(), lr=0.01, **options)
    for _ in range(2):
        optimizer.zero_grad()
        layer(th.randn(5, 3)).pow(2).sum().backward()
        optimizer.step()
    state = optimizer.state[layer.weight]
    kept = {key: state[key][[0, 2]].clone() for key in fresh}
    reset_parameter_state(optimizer, layer.weight, th.tensor([1, 3]))
    reset_parameter_columns_state(optimizer, layer.weight, th.tensor([0]))
    for key, value in fresh.items():
        assert th.all(state[key][[1, 3]] == value) and th.all(state[key][:, 0] == value), key
        assert th.equal(state[key][[0, 2], 1:], kept[key][:, 1:]), key
