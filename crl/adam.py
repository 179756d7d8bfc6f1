"""Adam's update on CPU: torch's multi-tensor arithmetic, with its square root kept off MKL's slow path.

torch computes Adam's square root ``sqrt(v)`` of the second moments with MKL's vector math, which
sends every vector holding a zero or a subnormal number to a scalar routine. Second moments are
exactly zero wherever a weight has never had a gradient: the rows of dormant units and the columns
of inputs that are always zero. Half of NatureCNN's 3136x512 layer is such zeros after 2,000 steps
of DQN on Breakout, and its square root takes 3.3 ms per update instead of about 1 ms
(``docs/performance.md``).

:func:`adam_step` is the body of torch's ``Adam.step`` (AdamW's too), with the same operations in the
same order as torch's multi-tensor update (``torch.optim.adam._multi_tensor_adam``, not capturable)
except one: the second moments are raised to at least the dtype's smallest normal number ``tiny``
before their square root. That changes no bit of the update:

- a moment ``v >= tiny`` is left as it is, and MKL gives it the same root whatever its neighbours
  in the vector are (``bench/sqrt_lanes.py``: every non-negative float32, beside a zero and beside a
  subnormal);
- a moment ``v < tiny`` has ``sqrt(v) <= sqrt(tiny)`` either way (1.1e-19 in float32), and Adam's
  denominator ``sqrt(v) / sqrt(1 - beta2 ** t) + eps`` rounds to ``eps`` for both, which
  :func:`_rounds_to_eps` checks at each update in the dtype's own arithmetic. With Adam's defaults
  (``eps=1e-8``, ``beta2=0.999``) the largest such quotient, 3.4e-18 at the first step, is 1/129 of
  half the spacing of floats above ``eps``;
- second moments are never negative (they start at ``+0.0`` and only add squares), and a NaN stays
  NaN.

Where the check fails (``eps`` of 0 or near ``tiny``), torch's own square root runs; parameters not
all float32 or all float64, and a torch release other than :data:`MIRRORED_TORCH`, get torch's
whole update.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from torch.optim.adam import adam as torch_adam

Tensors = list[th.Tensor] | tuple[th.Tensor, ...]
"""What torch's multi-tensor operations take, and what their out-of-place forms return (a tuple)."""

MIRRORED_TORCH = "2.13."
"""The torch release whose ``_multi_tensor_adam`` :func:`_update` follows operation for operation."""

_STEP_INCREMENT = th.tensor(1.0)
"""What torch adds to CPU step counters, as a tensor: a Python 1 would be wrapped anew for each one."""

NUMPY_SCALARS: dict[th.dtype, type[np.floating]] = {th.float32: np.float32, th.float64: np.float64}
"""torch dtypes whose CPU arithmetic NumPy scalars of the same dtype reproduce bit for bit: those whose
square roots :func:`adam_step` takes from raised second moments (and whose clipping factor
``crl.optim.clip_grad_norm_`` computes with NumPy)."""


def adam_step(optimizer: th.optim.Adam) -> None:
    """One update of every parameter group of a torch ``Adam`` or ``AdamW`` with foreach updates on CPU.

    Call it where torch's ``Adam.step`` body would run: under ``no_grad``, without step hooks. A group
    that is not plain CPU multi-tensor Adam (``foreach`` off, ``capturable``, ``fused``, complex
    parameters, ``grad_scale``) goes to torch's functional ``adam`` as in ``Adam.step``.

    :param optimizer: a ``torch.optim.Adam`` or ``AdamW``
    """
    for group in optimizer.param_groups:
        params: list[th.Tensor] = []
        grads: list[th.Tensor] = []
        exp_avgs: list[th.Tensor] = []
        exp_avg_sqs: list[th.Tensor] = []
        max_exp_avg_sqs: list[th.Tensor] = []
        state_steps: list[th.Tensor] = []
        has_complex = optimizer._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps)
        tensors = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps)
        if not params:
            continue
        if _plain_multi_tensor(optimizer, group, has_complex):
            _update(*tensors, **_hyperparameters(group))
        else:
            torch_adam(
                *tensors,
                has_complex=has_complex,
                foreach=group["foreach"],
                capturable=group["capturable"],
                differentiable=group["differentiable"],
                fused=group["fused"],
                grad_scale=getattr(optimizer, "grad_scale", None),
                found_inf=getattr(optimizer, "found_inf", None),
                **_hyperparameters(group),
            )


def _hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    beta1, beta2 = group["betas"]
    return {
        "amsgrad": group["amsgrad"],
        "beta1": beta1,
        "beta2": beta2,
        "lr": group["lr"],
        "weight_decay": group["weight_decay"],
        "eps": group["eps"],
        "maximize": group["maximize"],
        "decoupled_weight_decay": group["decoupled_weight_decay"],
    }


def _plain_multi_tensor(optimizer: th.optim.Adam, group: dict[str, Any], has_complex: bool) -> bool:
    """Whether torch would run its non-capturable multi-tensor update on CPU tensors of one real dtype.

    Only under the torch release whose update :func:`_update` follows; another gets its own.
    """
    dtype = group["params"][0].dtype
    return (
        th.__version__.startswith(MIRRORED_TORCH)
        and group["foreach"] is True
        and not (group["capturable"] or group["differentiable"] or group["fused"] or has_complex)
        and not any(isinstance(value, th.Tensor) for value in (group["lr"], *group["betas"]))
        and getattr(optimizer, "grad_scale", None) is None
        and getattr(optimizer, "found_inf", None) is None
        and all(p.device.type == "cpu" and p.dtype == dtype for p in group["params"])
    )


def _update(
    params: list[th.Tensor],
    grads: Tensors,
    exp_avgs: list[th.Tensor],
    exp_avg_sqs: list[th.Tensor],
    max_exp_avg_sqs: list[th.Tensor],
    state_steps: list[th.Tensor],
    *,
    amsgrad: bool,
    beta1: float,
    beta2: float,
    lr: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
    decoupled_weight_decay: bool,
) -> None:
    """torch's non-capturable multi-tensor Adam on CPU tensors, operation for operation.

    With ``m`` the first moment, ``v`` the second, ``g`` the gradient and ``t`` the step:
    ``m = lerp(m, g, 1 - beta1)``, ``v = beta2 * v + (1 - beta2) * g * g`` and
    ``theta += -(lr / (1 - beta1 ** t)) * m / (sqrt(v) / sqrt(1 - beta2 ** t) + eps)``.
    """
    if maximize:
        grads = th._foreach_neg(grads)
    th._foreach_add_(state_steps, _STEP_INCREMENT, alpha=1.0)
    if weight_decay != 0:
        if decoupled_weight_decay:
            th._foreach_mul_(params, 1 - lr * weight_decay)
        elif maximize:
            th._foreach_add_(grads, params, alpha=weight_decay)
        else:
            grads = th._foreach_add(grads, params, alpha=weight_decay)
    th._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    th._foreach_mul_(exp_avg_sqs, beta2)
    th._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)

    steps = [step.item() for step in state_steps]
    step_size = [(lr / (1 - beta1**t)) * -1 for t in steps]
    bias_correction2_sqrt = [(1 - beta2**t) ** 0.5 for t in steps]
    if amsgrad:
        th._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
    denominators = _square_roots(max_exp_avg_sqs if amsgrad else exp_avg_sqs, eps, min(bias_correction2_sqrt))
    th._foreach_div_(denominators, bias_correction2_sqrt)
    th._foreach_add_(denominators, eps)
    th._foreach_addcdiv_(params, exp_avgs, denominators, step_size)


def _square_roots(second_moments: list[th.Tensor], eps: float, bias_correction2_sqrt: float) -> Tensors:
    """``sqrt(v)`` for each tensor, or ``sqrt(max(v, tiny))`` where that gives the same denominators."""
    dtype = second_moments[0].dtype
    if not _rounds_to_eps(dtype, eps, bias_correction2_sqrt):
        return th._foreach_sqrt(second_moments)
    raised = th._foreach_clamp_min(second_moments, th.finfo(dtype).tiny)
    th._foreach_sqrt_(raised)
    return raised


def _rounds_to_eps(dtype: th.dtype, eps: float, bias_correction2_sqrt: float) -> bool:
    """Whether ``q + eps`` rounds to ``eps`` for every ``q = sqrt(v) / bias_correction2_sqrt`` with ``v <= tiny``.

    Checked in the dtype's arithmetic, as torch's kernels compute (the scalars rounded to the dtype
    first), with twice the largest such ``sqrt(v)``: rounding is monotonic, so if ``eps + 2 q_max``
    rounds to ``eps``, every ``eps + q`` with ``0 <= q <= q_max`` does.
    """
    scalar = NUMPY_SCALARS.get(dtype)
    if scalar is None:
        return False
    eps_d = scalar(eps)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # beta2 = 1: no bound, torch's root
        q_max = scalar(2) * np.sqrt(scalar(np.finfo(scalar).tiny)) / scalar(bias_correction2_sqrt)
        return bool(eps_d + scalar(2) * q_max == eps_d)
