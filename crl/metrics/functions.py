"""Plasticity metrics as pure functions on tensors (SPEC.md §1).

Notation: ``phi`` is a feature matrix with one row per probe sample (N x D). Features of conv layers
(N x C x H x W) are flattened per sample for the ranks and norms; for unit-level metrics (dormant,
dead, active) a conv *channel* is the unit and is averaged over the batch and both spatial axes.

Singular values are taken without centring or normalisation, as every reference implementation does.
All functions are side-effect free and never build an autograd graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import torch as th

from crl.policies.layers import Fourier

RANK_DELTA = 0.01
"""Kumar et al. 2021's threshold: keep the singular values that explain 99 % of their sum."""
FEATURE_RANK_EPSILON = 0.01
"""Lyle et al. 2022's threshold on ``s_k / sqrt(N)``."""
DORMANT_TAU = 0.025
"""Default threshold of :func:`dormant_ratio` (ReDo recycles at 0.1, see :func:`unit_scores`)."""
SCORE_EPSILON = 1e-9
GRAMA_TAU = 0.01
"""GraMa's inactivity threshold on the normalised gradient score (see :func:`gradient_scores`)."""
TANH_SATURATION = 0.99
"""An entry of a bounded activation (tanh, sigmoid rescaled, a Fourier feature) is saturated above it in
absolute value: tanh's derivative is then below 0.02, sin's and cos's below ``sqrt(1 - 0.99^2) < 0.15``."""

ActivationKind = Literal["relu", "tanh", "sigmoid", "fourier"]


def _as_matrix(phi: th.Tensor) -> th.Tensor:
    """N x D view of a batch of features (conv maps flattened per sample)."""
    if phi.dim() < 2:
        raise ValueError(f"features must have a batch dimension and at least one unit, got shape {tuple(phi.shape)}")
    return phi.detach().reshape(phi.shape[0], -1)


def singular_values(phi: th.Tensor) -> th.Tensor:
    """Singular values of the N x D feature matrix, in decreasing order, as float64."""
    return th.linalg.svdvals(_as_matrix(phi).float()).double()


def _threshold_rank(weights: th.Tensor, delta: float) -> int:
    """Smallest k with ``sum_{i<=k} w_i / sum_i w_i >= 1 - delta`` (0 for an all-zero matrix)."""
    total = weights.sum()
    if total <= 0:
        return 0
    explained = th.cumsum(weights, dim=0) / total
    # The unit that crosses the threshold counts, hence +1 on its index. The small slack absorbs
    # float round-off for matrices whose spectrum lands exactly on the threshold.
    return int(th.searchsorted(explained, th.tensor([1.0 - delta - 1e-12], dtype=explained.dtype)).item()) + 1


def srank_from_singular_values(s: th.Tensor, delta: float = RANK_DELTA) -> int:
    """:func:`srank` from precomputed singular values."""
    return _threshold_rank(s, delta)


def pca_rank_from_singular_values(s: th.Tensor, delta: float = RANK_DELTA) -> int:
    """:func:`pca_rank` from precomputed singular values."""
    return _threshold_rank(s.square(), delta)


def effective_rank_from_singular_values(s: th.Tensor) -> float:
    """:func:`effective_rank` from precomputed singular values."""
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    entropy = -th.special.xlogy(p, p).sum()  # xlogy gives 0 log 0 = 0
    return float(th.exp(entropy))


def feature_rank_from_singular_values(s: th.Tensor, n_samples: int, epsilon: float = FEATURE_RANK_EPSILON) -> int:
    """:func:`feature_rank` from precomputed singular values of an ``n_samples``-row matrix."""
    return int((s / n_samples**0.5 > epsilon).sum())


def srank(phi: th.Tensor, delta: float = RANK_DELTA) -> int:
    """Effective feature rank ``srank_delta`` of Kumar et al. 2021, "Implicit Under-Parameterization".

    ``srank = min{k : sum_{i<=k} s_i / sum_i s_i >= 1 - delta}``: the number of singular values
    needed to explain ``1 - delta`` of their sum, counting the one that crosses the threshold. A
    matrix of identical rows has srank 1; the D x D identity has srank D. Not the "stable rank".

    :param phi: features, N x D (or N x C x H x W, flattened per sample)
    :param delta: the threshold
    """
    return srank_from_singular_values(singular_values(phi), delta)


def effective_rank(phi: th.Tensor) -> float:
    """Effective rank of Roy & Vetterli 2007: ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / sum s``.

    Real-valued; ``0 log 0 = 0``. The D x D identity has effective rank D.
    """
    return effective_rank_from_singular_values(singular_values(phi))


def pca_rank(phi: th.Tensor, delta: float = RANK_DELTA) -> int:
    """Number of principal directions explaining ``1 - delta`` of the variance: srank on ``s_i^2``.

    The "feature rank" of Moalla et al. 2024 (PFO), uncentred like theirs.
    """
    return pca_rank_from_singular_values(singular_values(phi), delta)


def feature_rank(phi: th.Tensor, epsilon: float = FEATURE_RANK_EPSILON) -> int:
    """Feature rank of Lyle et al. 2022, "Understanding and Preventing Capacity Loss in RL".

    ``#{k : s_k / sqrt(N) > epsilon}`` for an N-row feature matrix.
    """
    matrix = _as_matrix(phi)
    return feature_rank_from_singular_values(singular_values(matrix), matrix.shape[0], epsilon)


def unit_activity(h: th.Tensor) -> th.Tensor:
    """Mean of ``|h|`` per unit, ``a_i``: averaged over the batch and, for conv maps, over H and W.

    :func:`dormant_mask` and :func:`dead_mask` both judge a layer from it; pass it to
    :func:`dormant_mask_of_activity` and :func:`dead_mask_of_activity` to compute it once for both.
    """
    if h.dim() < 2:
        raise ValueError(f"features must have a batch dimension and units, got shape {tuple(h.shape)}")
    reduce_dims = [0, *range(2, h.dim())]
    return h.detach().abs().mean(dim=reduce_dims)


def unit_scores(h: th.Tensor) -> th.Tensor:
    """ReDo's normalised unit scores (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep RL").

    ``a_i = mean_batch |h_i|`` divided by the layer's MEAN score, ``a_i / (mean_k a_k + 1e-9)``, as in
    the official code (the paper's text says the sum). Conv channels are averaged over batch, H and W.

    :param h: post-activation features of one layer, N x D or N x C x H x W
    :return: one score per unit (D or C)
    """
    return _normalised(unit_activity(h))


def gradient_scores(weight_gradient: th.Tensor) -> th.Tensor:
    """GraMa's normalised unit scores (Liu et al. 2025, "Measure gradients, not activations!").

    ``g_i = mean_j |dL/dW_ij|`` over unit i's incoming weights (a row of a Linear weight; a conv
    channel's input channels and kernel positions), divided by the layer's mean score,
    ``g_i / (mean_k g_k + 1e-9)``, the normalisation of :func:`unit_scores`. A unit whose score is
    ``<= tau`` has (almost) stopped learning: a dead ReLU unit scores 0, and so does a live unit that
    no longer receives gradient (saturated, or silenced downstream), which the activation score misses.

    :param weight_gradient: the gradient of the loss with respect to a layer's weight, units first
        (``out x in`` or ``out x in x kH x kW``)
    :return: one score per unit
    """
    if weight_gradient.dim() < 2:
        raise ValueError(f"a weight gradient has units and inputs, got shape {tuple(weight_gradient.shape)}")
    return _normalised(weight_gradient.detach().abs().flatten(start_dim=1).mean(dim=1))


def _normalised(activity: th.Tensor) -> th.Tensor:
    return activity / (activity.mean() + SCORE_EPSILON)


def dormant_mask(h: th.Tensor, tau: float = DORMANT_TAU) -> th.Tensor:
    """Boolean mask of the units of one layer whose normalised score is ``<= tau``."""
    return dormant_mask_of_activity(unit_activity(h), tau)


def dormant_mask_of_activity(activity: th.Tensor, tau: float = DORMANT_TAU) -> th.Tensor:
    """:func:`dormant_mask` from the layer's :func:`unit_activity`."""
    return _normalised(activity) <= tau


def dormant_ratio(layers: Sequence[th.Tensor], tau: float = DORMANT_TAU) -> tuple[float, list[float]]:
    """Fraction of dormant units, pooled over the given hidden layers, and per layer.

    :param layers: post-activation features of each hidden layer (never the output layer)
    :param tau: dormancy threshold on the normalised score of :func:`unit_scores`
    :return: ``(dormant units / all units, [ratio of each layer])``
    """
    masks = [dormant_mask(h, tau) for h in layers]
    return pooled_fraction(masks), [layer_fraction(mask) for mask in masks]


def layer_fraction(mask: th.Tensor) -> float:
    """The fraction of one layer's units in ``mask``, as :func:`dormant_ratio` reports it per layer."""
    return float(mask.float().mean())


def dead_mask(h: th.Tensor) -> th.Tensor:
    """Boolean mask of the units of one layer that are exactly zero on every sample (and position)."""
    return dead_mask_of_activity(unit_activity(h))


def dead_mask_of_activity(activity: th.Tensor) -> th.Tensor:
    """:func:`dead_mask` from the layer's :func:`unit_activity`: units whose mean ``|h|`` is zero."""
    return activity == 0


def dead_units(layers: Sequence[th.Tensor]) -> float:
    """Fraction of units that are exactly zero on every probe sample (PFO's "dead neurons").

    Pooled over the layers; a conv channel is dead when it is zero at every sample and position.
    """
    return pooled_fraction([dead_mask(h) for h in layers])


def pooled_fraction(masks: Sequence[th.Tensor]) -> float:
    """The fraction of all units in the masks of several layers (0 without units)."""
    units = sum(mask.numel() for mask in masks)
    return float(sum(int(mask.sum()) for mask in masks)) / units if units else 0.0


def inactive_mask(h: th.Tensor, activation: ActivationKind = "relu") -> th.Tensor:
    """Entries of a post-activation tensor that are inactive.

    ReLU-like activations: the entry is ``<= 0`` (for ReLU and CReLU this is exactly ``== 0``; for
    leaky or smooth variants, the negative branch). tanh: the entry is saturated, ``|h| > 0.99``.
    sigmoid: the same saturation, ``|2h - 1| > 0.99``, since ``sigmoid(x) = (1 + tanh(x / 2)) / 2``
    (SPEC.md §1 names ReLU and tanh only). fourier (deep Fourier features, ``[sin(z), cos(z)]``): tanh's
    rule, ``|h| > 0.99``: at such an entry the derivative of sin or cos is below
    ``sqrt(1 - 0.99^2) ~ 0.141`` (the unit's other half is then near 0, where its derivative is near 1).
    """
    h = h.detach()
    if activation in ("tanh", "fourier"):
        return h.abs() > TANH_SATURATION
    if activation == "sigmoid":
        return (2 * h - 1).abs() > TANH_SATURATION
    if activation == "relu":
        return h <= 0
    raise ValueError(f"activation={activation!r}: expected 'relu', 'tanh', 'sigmoid' or 'fourier'")


def fau(layers: Sequence[th.Tensor], activation: ActivationKind | Sequence[ActivationKind] = "relu") -> float:
    """Fraction of active units of Ma et al. 2023 ("Revisiting Plasticity in Visual RL").

    ``1 - mean(inactive)`` pooled over all N x D post-activation entries of the given layers, an entry
    being inactive as :func:`inactive_mask` says: ``Phi == 0`` for ReLU, saturated for tanh, sigmoid and
    Fourier features (``|h| > 0.99``).

    :param layers: post-activation features of each hidden layer
    :param activation: the layers' activation kind, one for all or one per layer
    """
    kinds = [activation] * len(layers) if isinstance(activation, str) else list(activation)
    if len(kinds) != len(layers):
        raise ValueError(f"got {len(kinds)} activation kinds for {len(layers)} layers")
    entries = sum(h.numel() for h in layers)
    if entries == 0:
        return 0.0
    inactive = sum(inactive_count(h, kind) for h, kind in zip(layers, kinds, strict=True))
    return fau_from_counts(inactive, entries)


def inactive_count(h: th.Tensor, activation: ActivationKind = "relu") -> int:
    """The number of inactive entries of one layer's post-activation tensor (:func:`inactive_mask`)."""
    return int(inactive_mask(h, activation).sum())


def fau_from_counts(inactive: int, entries: int) -> float:
    """:func:`fau` from the inactive entries and all entries of its layers: ``1 - inactive / entries``."""
    return 1.0 - inactive / entries if entries else 0.0


def feature_norm(phi: th.Tensor) -> float:
    """Mean over samples of the L2 norm of each sample's feature vector (PFO's collapse indicator)."""
    return float(th.linalg.vector_norm(_as_matrix(phi).float(), dim=1).mean())


def weight_magnitude(parameters: Iterable[th.Tensor]) -> float:
    """Root mean square of all parameters of a network: ``sqrt(sum theta^2 / #theta)``."""
    tensors = [p.detach() for p in parameters]
    count = sum(t.numel() for t in tensors)
    if count == 0:
        return 0.0
    return (sum(float(t.double().square().sum()) for t in tensors) / count) ** 0.5


def weight_change(parameters: Iterable[th.Tensor], previous: Iterable[th.Tensor]) -> float:
    """Root mean square change of the parameters since ``previous`` (same shapes, same order)."""
    deltas = [p.detach() - q.detach() for p, q in zip(parameters, previous, strict=True)]
    return weight_magnitude(deltas)


def grad_norm(parameters: Iterable[th.Tensor]) -> float:
    """Total L2 norm of the parameters' current gradients (parameters without one are skipped).

    During training crl reads the norm of the real update, before clipping, and averages it over the
    update's minibatches; this function is the same norm for one ``.grad`` state.
    """
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    return float(th.nn.utils.get_total_norm(grads)) if grads else 0.0


def gram_singular_values(phi: th.Tensor) -> th.Tensor:
    """Singular values of the N x D feature matrix from the eigenvalues of its smaller Gram matrix.

    ``s_k = sqrt(lambda_k(Phi Phi^T))`` (or of ``Phi^T Phi`` when D < N), computed in float64 so that
    squaring the spectrum loses nothing the ranks can see: the values agree with :func:`singular_values`
    to about 1e-7 of ``s_1``. For the wide feature maps of conv layers this is an order of magnitude
    faster than an SVD (1024 x 12800: 0.7 s instead of 7 s on one CPU core), which is what lets the
    metrics monitor run the ranks of a NatureCNN at all. Only the triangle of the Gram matrix that
    ``eigvalsh`` reads is computed (:func:`lower_gram`): 0.4 s instead of 0.7 s for that 1024 x 12800 map.

    Columns that are zero on every sample add nothing to either Gram matrix and are left out of it,
    and their singular values, zeros, are appended: the result has ``min(N, D)`` values, as the
    SVD's. ReLU units that are off on the whole probe batch make 20 to 66 % of the columns of DQN's
    NatureCNN on Breakout at its first update (1004 x 12800: 2,579 zero columns), and its four
    layers' singular values take 0.71 instead of 0.81 s.
    """
    matrix = _as_matrix(phi)
    count = min(matrix.shape)
    matrix = matrix[:, matrix.any(dim=0)].double()
    rows = matrix if matrix.shape[1] > matrix.shape[0] else matrix.T
    # Round-off leaves the eigenvalues of null directions at about -1e-16 * s_1^2.
    s = th.linalg.eigvalsh(lower_gram(rows), UPLO="L").clamp_min(0.0).flip(0).sqrt()
    return th.cat([s, s.new_zeros(count - len(s))])


GRAM_BLOCK_ROWS = 128
"""Rows per matrix product of :func:`lower_gram`."""


def lower_gram(rows: th.Tensor, block_rows: int = GRAM_BLOCK_ROWS) -> th.Tensor:
    """The lower triangle of ``rows @ rows.T``, by blocks of rows; the entries above the blocks are zero.

    Block ``b`` multiplies its rows by the rows up to its last one, so the products cover the triangle
    and the diagonal blocks, about 56 % of the full product's arithmetic for 1,024 rows in blocks of 128
    (a triangular BLAS product, ``syrk``, is not exposed by torch). An entry is the same dot product as
    in the full product, summed by a smaller matrix product: it may differ from it in the last bits
    (about 1e-14 of the entry on ReLU features).
    """
    n = rows.shape[0]
    gram = rows.new_zeros(n, n)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        gram[start:stop, :stop] = rows[start:stop] @ rows[:stop].T
    return gram


def rank_metrics_from_singular_values(s: th.Tensor, n_samples: int) -> dict[str, float]:
    """The four ranks from the singular values of an ``n_samples``-row feature matrix."""
    return {
        "srank": srank_from_singular_values(s),
        "effective_rank": effective_rank_from_singular_values(s),
        "pca_rank": pca_rank_from_singular_values(s),
        "feature_rank": feature_rank_from_singular_values(s, n_samples),
    }


def rank_metrics(phi: th.Tensor) -> Mapping[str, float]:
    """The four ranks of one feature matrix from a single SVD."""
    matrix = _as_matrix(phi)
    return rank_metrics_from_singular_values(singular_values(matrix), matrix.shape[0])


def activation_kind(activation: th.nn.Module) -> ActivationKind:
    """How :func:`fau` judges the units behind an activation module: saturation for the ones bounded by
    +-1 (tanh, hardtanh, softsign; ``"fourier"`` for deep Fourier features, whose sin and cos halves are
    too) and by 0 and 1 (sigmoid, hardsigmoid), else sign."""
    if isinstance(activation, Fourier):
        return "fourier"
    if isinstance(activation, (th.nn.Tanh, th.nn.Hardtanh, th.nn.Softsign)):
        return "tanh"
    if isinstance(activation, (th.nn.Sigmoid, th.nn.Hardsigmoid)):
        return "sigmoid"
    return "relu"
