"""Keeping an optimizer consistent with parameters that were re-initialised (SPEC.md §2), and cheap.

torch's Adam-family optimizers keep per-parameter state (``step``, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``). When a whole tensor is re-initialised its state is dropped and the optimizer
starts it afresh (step 0) on its next update; when only some entries (units) are re-initialised,
their moments are zeroed and the tensor's shared ``step`` is left as it is, since torch keeps one
step counter per tensor.

:func:`use_multi_tensor_updates` makes Adam and AdamW update all of a group's tensors per operation
instead of one tensor at a time, :func:`clip_grad_norm_` clips gradients with fewer operations
than torch's function, and :func:`zero_grad` and :func:`optimizer_step` skip the wrappers around
torch's ``zero_grad`` and Adam's ``step`` when nothing is attached to them (the step's body is
:func:`crl.adam.adam_step`); all give bitwise the same result on CPU. :class:`OptimizerCache` keeps what
an intervention derives from an optimizer's parameters until they change.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import torch as th
from torch.optim import optimizer as torch_optimizer

from crl.adam import NUMPY_SCALARS, adam_step

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

FRESH_FROM_GROUP = {"sum": "initial_accumulator_value", "step_size": "lr"}
"""Per-entry optimizer state that does not start at zero: Adagrad's accumulator, Rprop's step sizes,
each from the parameter group's setting. All other per-entry state (Adam's and Adamax's moments,
momentum buffers, RMSprop's averages, Adadelta's, ASGD's average, Rprop's previous gradient) starts at 0."""


T = TypeVar("T")


class OptimizerCache(Generic[T]):
    """A value per optimizer (the parameters an intervention acts on, their anchors or bounds), built
    again only when the parameters the optimizer updates change.

    Building such a value walks the policy's modules, which on DQN's small networks costs as much as
    the rest of a gradient step; the parameters change only when the optimizer's do (a plasticity
    injection adds a head and freezes the old one, a full reset may build a new optimizer). An owner
    whose values depend on more (L2-init's anchors) calls :meth:`clear` when that changes.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[tuple[tuple[int, bool], ...], T]] = {}

    def get(self, optimizer: th.optim.Optimizer, build: Callable[[th.optim.Optimizer], T]) -> T:
        """The value of ``optimizer``, from ``build(optimizer)`` when it is not known or out of date."""
        updated = tuple((id(p), p.requires_grad) for group in optimizer.param_groups for p in group["params"])
        entry = self._entries.get(id(optimizer))
        if entry is None or entry[0] != updated:
            entry = self._entries[id(optimizer)] = (updated, build(optimizer))
        return entry[1]

    def clear(self) -> None:
        self._entries = {}


def clear_optimizer_state(optimizer: th.optim.Optimizer) -> None:
    """Forget all optimizer state, as if the optimizer had just been created (learning rates kept)."""
    optimizer.state.clear()


def reset_parameter_state(optimizer: th.optim.Optimizer, parameter: th.Tensor, index: th.Tensor | None = None) -> None:
    """Reset the optimizer state of ``parameter``, or of the entries ``parameter[index]``, to fresh values.

    :param optimizer: the optimizer that updates ``parameter`` (nothing happens if it has no state)
    :param parameter: the parameter tensor
    :param index: anything that indexes the first dimension (rows = output units), e.g. a boolean
        mask or index tensor; ``None`` resets the whole tensor including its step counter
    """
    state = optimizer.state.get(parameter)
    if not state:
        return
    if index is None:
        del optimizer.state[parameter]
        return
    for moment, fresh in _entry_states(optimizer, parameter, state):
        moment[index] = fresh


def reset_parameter_columns_state(optimizer: th.optim.Optimizer, parameter: th.Tensor, columns: th.Tensor) -> None:
    """Reset the optimizer state of the input columns ``parameter[:, columns]`` (outgoing weights of units)."""
    state = optimizer.state.get(parameter)
    if not state:
        return
    for moment, fresh in _entry_states(optimizer, parameter, state):
        moment[:, columns] = fresh


def _entry_states(
    optimizer: th.optim.Optimizer, parameter: th.Tensor, state: dict[str, Any]
) -> list[tuple[th.Tensor, float]]:
    """Each per-entry state tensor of ``parameter`` (one value per entry: its shape) with its fresh value.

    Read from the state itself rather than from a list of names, so that every torch optimizer's
    state (RMSprop's ``grad_avg``, Adamax's ``exp_inf``, ...) is reset.
    """
    group = next(group for group in optimizer.param_groups if any(p is parameter for p in group["params"]))
    return [
        (value, float(group[FRESH_FROM_GROUP[key]]) if key in FRESH_FROM_GROUP else 0.0)
        for key, value in state.items()
        if key != "step" and isinstance(value, th.Tensor) and value.shape == parameter.shape
    ]


def policy_optimizers(policy: th.nn.Module) -> list[th.optim.Optimizer]:
    """The optimizers held by a policy's modules (the policy's own; SAC's actor's and critic's), each once."""
    found = [getattr(module, "optimizer", None) for module in policy.modules()]
    unique = {id(optimizer): optimizer for optimizer in found if isinstance(optimizer, th.optim.Optimizer)}
    return list(unique.values())


def algorithm_optimizers(algo: BaseAlgorithm) -> list[th.optim.Optimizer]:
    """Every optimizer of an SB3 algorithm, each once: its policy's and SAC's entropy-coefficient optimizer."""
    optimizers = policy_optimizers(algo.policy)
    temperature = getattr(algo, "ent_coef_optimizer", None)
    if isinstance(temperature, th.optim.Optimizer):
        optimizers.append(temperature)
    return optimizers


def optimizer_of(optimizers: Iterable[th.optim.Optimizer], parameter: th.Tensor) -> th.optim.Optimizer | None:
    """The optimizer among ``optimizers`` whose parameter groups contain ``parameter``."""
    for optimizer in optimizers:
        if any(p is parameter for group in optimizer.param_groups for p in group["params"]):
            return optimizer
    return None


def add_parameters(optimizer: th.optim.Optimizer, parameters: Iterable[th.nn.Parameter]) -> None:
    """Register new parameters with ``optimizer`` as a parameter group with the first group's settings.

    SB3 rewrites every group's learning rate at each ``train()``, so the new group follows the schedule.
    """
    new = [p for p in parameters if all(p is not q for group in optimizer.param_groups for q in group["params"])]
    if new:
        settings = {key: value for key, value in optimizer.param_groups[0].items() if key != "params"}
        optimizer.add_param_group({"params": new, **settings})


_MULTI_TENSOR_EXACT = (th.optim.Adam, th.optim.AdamW)
"""Optimizers whose multi-tensor update on CPU runs the single-tensor update's operations, tensor by tensor."""


def use_multi_tensor_updates(optimizer: th.optim.Optimizer) -> None:
    """Switch Adam's (or AdamW's) update to its multi-tensor implementation where that changes no bit.

    torch runs Adam on CPU one tensor at a time (``foreach=None`` resolves to ``False`` there): about
    six operations per parameter tensor, each dispatched from Python. The multi-tensor (``foreach``)
    implementation issues one operation per step for all tensors; on CPU each of them loops over the
    tensors with the same ATen kernels, the same scalars and in the same order as the single-tensor
    code, so the parameters come out bitwise equal (``tests/test_hot_path.py``). It halves Adam's
    step on PPO's 64x64 MLPs (12 tensors: 473 against 263 us, ``bench/hot_path.py``).

    Only groups left at torch's default (``foreach=None``) are switched, and only when the result is
    provably the same: all parameters on CPU, float learning rate and betas, not ``capturable``,
    ``differentiable`` or ``fused``. Other optimizer classes are left alone.
    """
    if type(optimizer) not in _MULTI_TENSOR_EXACT:
        return
    for group in optimizer.param_groups:
        exact = (
            group.get("foreach", False) is None
            and not group.get("capturable", False)
            and not group.get("differentiable", False)
            and not group.get("fused", False)
            and not any(isinstance(value, th.Tensor) for value in (group["lr"], *group["betas"]))
            and all(p.device.type == "cpu" for p in group["params"])
        )
        if exact:
            group["foreach"] = True


def clip_grad_norm_(parameters: Iterable[th.Tensor], max_norm: float) -> th.Tensor:
    """torch's ``clip_grad_norm_`` (2-norm), bitwise, with fewer operations for CPU gradients of one dtype.

    torch's function groups the gradients by device and dtype twice, moves the norms and the factor
    to their devices, computes the factor ``max_norm / (norm + 1e-6)`` with three tensor operations,
    clamps it at 1 and multiplies every gradient by it, also when it is 1, which changes no bit. For
    CPU gradients of one dtype the total norm here comes from the same operations (per-tensor norms,
    stacked, their norm), so it is the same tensor. For ``float32`` and ``float64`` gradients the
    factor is computed from the norm's value with NumPy scalars of the same dtype, in torch's order
    (``max_norm * (1 / (norm + 1e-6))``, each step rounded to the dtype, as torch's CPU kernels
    round it): the same bits, checked on 32 million norms, at a few hundred nanoseconds instead of
    three tensor operations and a comparison. The gradients are multiplied only when the factor is
    below 1 (or NaN, which torch's multiplication spreads). Gradients of several dtypes or devices,
    or tensor subclasses, go to torch's function; ``float16`` and ``bfloat16`` keep the factor a tensor.

    :param parameters: the parameters whose gradients are clipped (those without one are skipped)
    :param max_norm: the largest total norm left unclipped
    :return: the total norm of the gradients before clipping, as torch returns it
    """
    parameters = list(parameters)
    grads = [grad for p in parameters if (grad := p.grad) is not None]
    if not grads or not _plain_cpu_tensors_of_one_dtype(grads):
        return th.nn.utils.clip_grad_norm_(parameters, max_norm)
    with th.no_grad():
        total_norm = th.linalg.vector_norm(th.stack(th._foreach_norm(grads, 2.0)), 2.0)
        scalar = NUMPY_SCALARS.get(total_norm.dtype)
        if scalar is None:
            clip_coef: th.Tensor | np.floating = float(max_norm) / (total_norm + 1e-6)
        else:
            with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN as torch's: no warning
                clip_coef = scalar(max_norm) * (scalar(1.0) / (scalar(total_norm.item()) + scalar(1e-6)))
        if not clip_coef >= 1.0:
            th._foreach_mul_(grads, clip_coef if isinstance(clip_coef, th.Tensor) else float(clip_coef))
    return total_norm


def _plain_cpu_tensors_of_one_dtype(tensors: list[th.Tensor]) -> bool:
    """Whether torch's clipping sees one group of ``tensors`` and takes its multi-tensor path on them."""
    dtype = tensors[0].dtype
    return all(type(t) is th.Tensor and t.device.type == "cpu" and t.dtype == dtype for t in tensors)


KEPT_GRADIENT_BYTES = 128 * 1024
"""Gradients of at least this many bytes are zeroed in place by :func:`zero_grad` instead of dropped:
glibc's default ``mmap`` threshold, above which freed blocks are unmapped or trimmed off the heap."""

KeptGradients = list[tuple[th.Tensor, th.Tensor, int]]
"""``(parameter, gradient, version after zeroing)`` for each gradient :func:`zero_grad` kept."""


def zero_grad(optimizer: th.optim.Optimizer) -> KeptGradients:
    """``optimizer.zero_grad()`` without torch's profiling span; large CPU gradients zeroed in place.

    torch's ``zero_grad`` (``set_to_none=True``, what SB3 calls) opens a ``record_function`` span and
    sets each parameter's ``grad`` to ``None``: 10 us against 1.6 us for DQN's 6 tensors
    (``bench/hot_path.py``). The span only matters to a running profiler, which then gets torch's call,
    as does an optimizer whose class or instance replaces ``zero_grad``.

    A CPU gradient of :data:`KEPT_GRADIENT_BYTES` or more is zeroed and kept, and ``backward()`` adds
    into it (``0 + g`` is ``g``, but a ``-0.0`` entry reads ``0.0``). Dropped, its memory went back to
    the system and was page-faulted in again: DQN on Atari frames (NatureCNN) made 0.1 to 2.1 million
    minor faults per 4,000-step run in a plain Python process, median 1.3 million of 9 runs (about
    2.4 us each), against a median of 0.23 million of 6 with the gradients kept. Call
    :func:`drop_unreached` after ``backward()``: a kept gradient that ``backward()`` did not reach goes
    back to ``None``, so the optimizer skips its parameter as it would have, and every parameter ends
    bitwise as with ``set_to_none`` (``tests/test_hot_path_updates.py``); :func:`compute_gradients` does the three.

    :return: the kept gradients, for :func:`drop_unreached`
    """
    if th.autograd._profiler_enabled() or _replaced(optimizer, "zero_grad", th.optim.Optimizer.zero_grad):
        optimizer.zero_grad()
        return []
    kept: KeptGradients = []
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            grad = parameter.grad
            if grad is not None and _keeps(grad):
                grad.zero_()
                kept.append((parameter, grad, grad._version))
            else:
                parameter.grad = None
    return kept


def drop_unreached(kept: KeptGradients) -> None:
    """Set back to ``None`` each gradient :func:`zero_grad` kept that ``backward()`` did not add into.

    ``backward()`` adds into a kept gradient in place, which counts up its version; when it computes
    the gradient with a graph (``create_graph``) it replaces the tensor.
    """
    for parameter, grad, version in kept:
        if parameter.grad is grad and grad._version == version:
            parameter.grad = None


def compute_gradients(optimizer: th.optim.Optimizer, loss: th.Tensor) -> None:
    """The gradients of ``loss`` for ``optimizer``'s parameters, as after SB3's ``zero_grad()`` and ``backward()``.

    :func:`zero_grad`, ``loss.backward()``, then :func:`drop_unreached` on the gradients it kept.
    """
    kept = zero_grad(optimizer)
    loss.backward()
    drop_unreached(kept)


def _keeps(grad: th.Tensor) -> bool:
    """Whether :func:`zero_grad` zeroes ``grad`` in place: a large dense CPU gradient outside any graph."""
    return (
        type(grad) is th.Tensor
        and grad.layout is th.strided
        and grad.device.type == "cpu"
        and not grad.requires_grad
        and grad.nbytes >= KEPT_GRADIENT_BYTES
    )


def optimizer_step(optimizer: th.optim.Optimizer) -> None:
    """``optimizer.step()``; for torch's Adam and AdamW, the body of their ``step`` without its wrappers.

    torch wraps ``Optimizer.step`` in a ``record_function`` span that also runs the global and the
    optimizer's step hooks, and Adam's ``step`` in a switch of the grad mode to the ``differentiable``
    setting with a ``torch._dynamo`` graph break: 30 us of the 150 us of Adam's step on DQN's 120x84
    MLP (``bench/hot_path.py``). Without a hook, a running profiler, a ``differentiable`` optimizer or
    a ``step`` replaced on the instance (an LR scheduler wraps it) or wrapped by anything but torch,
    those wrappers do nothing but the grad-mode switch, so the body runs under ``no_grad``:
    :func:`crl.adam.adam_step`, torch's ``_init_group`` and multi-tensor arithmetic with the square
    root of the second moments kept off MKL's slow path for zeros, bitwise the same update. Other
    optimizers get ``step()``.
    """
    if not _torchs_adam_step(type(optimizer)) or not _step_wrappers_idle(optimizer):
        optimizer.step()
        return
    with th.no_grad():
        adam_step(optimizer)  # type: ignore[arg-type]


def _step_wrappers_idle(optimizer: th.optim.Optimizer) -> bool:
    """Whether torch's wrappers around ``step`` would only switch the grad mode off."""
    return (
        not th.autograd._profiler_enabled()
        and not optimizer.defaults.get("differentiable", False)
        and "step" not in vars(optimizer)
        and not (optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks)
        and not (torch_optimizer._global_optimizer_pre_hooks or torch_optimizer._global_optimizer_post_hooks)
    )


def _torchs_adam_step(optimizer_class: type) -> bool:
    """Whether ``optimizer_class`` is Adam or AdamW with ``step`` as torch writes it, wrapped only by torch."""
    step = optimizer_class.step  # type: ignore[attr-defined]
    key = (optimizer_class, step)
    if key not in _TORCHS_ADAM_STEPS:
        exact_class = optimizer_class in (th.optim.Adam, th.optim.AdamW)
        body = _below_torch_wrappers(step) if exact_class else None
        _TORCHS_ADAM_STEPS[key] = body is not None and body.__code__ is _ADAM_STEP_CODE
    return _TORCHS_ADAM_STEPS[key]


def _below_torch_wrappers(function: Callable[..., Any]) -> Callable[..., Any] | None:
    """The function that torch's ``step`` wrappers wrap, or ``None`` if another wrapper is among them."""
    while hasattr(function, "__wrapped__"):
        if function.__code__ not in _TORCH_STEP_WRAPPERS:
            return None
        function = function.__wrapped__
    return function


_TORCHS_ADAM_STEPS: dict[tuple[type, Callable[..., Any]], bool] = {}
"""(optimizer class, its ``step`` attribute) -> whether it is torch's Adam step, wrapped only by torch."""

_TORCH_STEP_WRAPPERS = {
    torch_optimizer.Optimizer.profile_hook_step(lambda: None).__code__,
    torch_optimizer._use_grad_for_differentiable(lambda: None).__code__,
}
"""The code of the wrappers torch puts around an optimizer's ``step``: the profiling span with the
step hooks (added when the first instance is made), the grad-mode switch (Adam's decorator)."""

_ADAM_STEP_CODE = inspect.unwrap(th.optim.Adam.step).__code__
"""The code of Adam's ``step`` as torch defines it (AdamW inherits it), for telling a replaced one."""


def _replaced(optimizer: th.optim.Optimizer, name: str, torchs: Callable[..., Any]) -> bool:
    """Whether the optimizer's class or the instance itself defines its own method ``name``."""
    return name in vars(optimizer) or getattr(type(optimizer), name) is not torchs
