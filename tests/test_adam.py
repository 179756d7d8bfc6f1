"""crl's Adam update (crl.adam): torch's parameters and state bit for bit, with zero and subnormal second moments."""

from __future__ import annotations

import pytest
import torch as th

from crl.adam import _rounds_to_eps, adam_step
from crl.optim import optimizer_step, use_multi_tensor_updates

CONFIGURATIONS = [
    (th.optim.Adam, {}),
    (th.optim.Adam, {"eps": 1e-5}),
    (th.optim.Adam, {"amsgrad": True, "weight_decay": 0.1, "maximize": True}),
    (th.optim.Adam, {"weight_decay": 0.1}),
    (th.optim.AdamW, {"weight_decay": 0.1}),
    (th.optim.Adam, {"eps": 1e-30}),
    (th.optim.Adam, {"eps": 0.0}),
]
"""Defaults, PPO's eps, the other paths of the update, and settings where the raised roots would differ."""


def _gradient(shape: tuple[int, ...], generator: th.Generator, dtype: th.dtype) -> th.Tensor:
    """Normal entries, rows of exact zeros (dormant units) and entries whose squares underflow.

    An entry of 1e-25 squares to 0 in float32 and one of 1e-21 to a subnormal second moment, while
    the first moment stays nonzero, so the update reads the denominator ``sqrt(v) / bc + eps`` there.
    """
    grad = th.randn(shape, generator=generator, dtype=dtype)
    draw = th.rand(shape, generator=generator, dtype=dtype)
    grad = th.where(draw < 0.2, th.full_like(grad, 1e-25), grad)
    grad = th.where((draw >= 0.2) & (draw < 0.3), th.full_like(grad, -1e-21), grad)
    if grad.dim() > 1:
        grad[::3] = 0.0
    return grad


def _run(optimizer_class: type, kwargs: dict, multi_tensor: bool, dtype: th.dtype = th.float32) -> list[th.Tensor]:
    """Parameters and state after 12 updates; one tensor's state is dropped halfway, as a reset does."""
    generator = th.Generator().manual_seed(0)
    shapes = ((33, 17), (33,), (5, 33), (5,))
    parameters = [th.randn(shape, generator=generator, dtype=dtype).requires_grad_() for shape in shapes]
    optimizer = optimizer_class(parameters, lr=1e-2, **kwargs)
    if multi_tensor:
        use_multi_tensor_updates(optimizer)
    for index in range(12):
        for parameter in parameters:
            parameter.grad = _gradient(parameter.shape, generator, dtype)
        if index == 6:
            del optimizer.state[parameters[2]]
        optimizer_step(optimizer) if multi_tensor else optimizer.step()
    moments = [value for p in parameters for value in optimizer.state[p].values()]
    return [p.detach() for p in parameters] + moments


def _bits(tensor: th.Tensor) -> th.Tensor:
    return tensor.view(th.int64 if tensor.dtype == th.float64 else th.int32)


@pytest.mark.parametrize(("optimizer_class", "kwargs"), CONFIGURATIONS)
def test_adam_step_is_sb3s_single_tensor_adam_bit_for_bit(optimizer_class: type, kwargs: dict) -> None:
    ours = _run(optimizer_class, kwargs, multi_tensor=True)
    torchs = _run(optimizer_class, kwargs, multi_tensor=False)
    assert all(th.equal(_bits(a), _bits(b)) for a, b in zip(ours, torchs, strict=True))


def test_adam_step_in_float64_is_torchs_bit_for_bit() -> None:
    ours = _run(th.optim.Adam, {}, multi_tensor=True, dtype=th.float64)
    torchs = _run(th.optim.Adam, {}, multi_tensor=False, dtype=th.float64)
    assert all(th.equal(_bits(a), _bits(b)) for a, b in zip(ours, torchs, strict=True))


def test_the_gradients_give_zero_and_subnormal_second_moments_with_nonzero_first_moments() -> None:
    """The bit-for-bit tests above exercise the raised roots only if such entries occur."""
    parameter = th.zeros(33, 17, requires_grad=True)
    optimizer = th.optim.Adam([parameter])
    parameter.grad = _gradient(parameter.shape, th.Generator().manual_seed(0), th.float32)
    with th.no_grad():
        adam_step(optimizer)
    state = optimizer.state[parameter]
    small = state["exp_avg_sq"] < th.finfo(th.float32).tiny
    assert (small & (state["exp_avg_sq"] == 0) & (state["exp_avg"] != 0)).any()
    assert (small & (state["exp_avg_sq"] > 0) & (state["exp_avg"] != 0)).any()


@pytest.mark.parametrize(
    ("dtype", "eps", "beta2", "raised"),
    [
        (th.float32, 1e-8, 0.999, True),
        (th.float32, 1e-5, 0.999, True),
        (th.float64, 1e-8, 0.999, True),
        (th.float32, 1e-30, 0.999, False),
        (th.float32, 0.0, 0.999, False),
        (th.float32, 1e-8, 1.0, False),
        (th.float16, 1e-3, 0.999, False),
    ],
)
def test_roots_are_raised_only_where_the_denominator_rounds_to_eps(
    dtype: th.dtype, eps: float, beta2: float, raised: bool
) -> None:
    assert _rounds_to_eps(dtype, eps, (1 - beta2) ** 0.5) is raised
