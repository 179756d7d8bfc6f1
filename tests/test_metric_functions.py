"""The metric functions against values computed by hand (SPEC.md §1)."""

import math

import pytest
import torch as th

from crl import metrics
from crl.metrics import functions
from crl.metrics.functions import lower_gram
from crl.policies.layers import CReLU, Fourier


def test_ranks_of_identity() -> None:
    phi = th.eye(8)
    assert metrics.srank(phi) == 8
    assert metrics.pca_rank(phi) == 8
    assert metrics.effective_rank(phi) == pytest.approx(8.0)
    # s_k / sqrt(N) = 1 / sqrt(8) > 0.01 for all 8 values
    assert metrics.feature_rank(phi) == 8


def test_identical_rows_have_rank_one() -> None:
    phi = th.arange(1.0, 6.0).repeat(10, 1)  # 10 identical rows
    assert metrics.srank(phi) == 1
    assert metrics.pca_rank(phi) == 1
    assert metrics.feature_rank(phi) == 1
    assert metrics.effective_rank(phi) == pytest.approx(1.0, abs=1e-5)


def test_rank_deficient_matrix() -> None:
    # Columns 3..5 copy columns 0..2: rank 3 with singular values 2, 2, 2 (each unit column has norm sqrt 2).
    base = th.eye(3)
    phi = th.cat((base, base), dim=1)
    assert metrics.srank(phi) == 3
    assert metrics.effective_rank(phi) == pytest.approx(3.0)
    assert metrics.feature_rank(phi) == 3


def test_srank_counts_the_unit_that_crosses_the_threshold() -> None:
    # Singular values 98, 1, 1: the first explains 98 % < 99 %, the first two 99 % -> srank 2.
    phi = th.diag(th.tensor([98.0, 1.0, 1.0]))
    assert metrics.srank(phi) == 2
    # Squares: 9604, 1, 1 -> the first explains 99.98 % of the variance.
    assert metrics.pca_rank(phi) == 1
    p = th.tensor([0.98, 0.01, 0.01], dtype=th.float64)
    assert metrics.effective_rank(phi) == pytest.approx(math.exp(float(-(p * p.log()).sum())), rel=1e-6)


def test_scaling_changes_feature_rank_only() -> None:
    phi = th.diag(th.tensor([1.0, 0.5, 0.001]))
    scaled = phi * 100
    for rank in (metrics.srank, metrics.pca_rank, metrics.effective_rank):
        assert rank(scaled) == pytest.approx(rank(phi))
    # N = 3: threshold 0.01 * sqrt(3) = 0.0173 -> 2 values pass before scaling, 3 after.
    assert metrics.feature_rank(phi) == 2
    assert metrics.feature_rank(scaled) == 3


def test_zero_matrix() -> None:
    phi = th.zeros(4, 3)
    assert metrics.srank(phi) == 0
    assert metrics.effective_rank(phi) == 0.0
    assert metrics.feature_rank(phi) == 0


def test_rank_metrics_agree_with_single_functions() -> None:
    phi = th.randn(64, 16, generator=th.Generator().manual_seed(0))
    ranks = metrics.rank_metrics(phi)
    assert ranks == {
        "srank": metrics.srank(phi),
        "effective_rank": metrics.effective_rank(phi),
        "pca_rank": metrics.pca_rank(phi),
        "feature_rank": metrics.feature_rank(phi),
    }


def test_dormant_scores_use_the_layer_mean() -> None:
    # Mean |h| per unit: 1, 3, 0, 0 -> layer mean 1 -> scores 1, 3, 0, 0.
    h = th.tensor([[1.0, 3.0, 0.0, 0.0], [-1.0, 3.0, 0.0, 0.0]])
    assert th.allclose(metrics.unit_scores(h), th.tensor([1.0, 3.0, 0.0, 0.0]))
    pooled, per_layer = metrics.dormant_ratio([h, th.ones(2, 6)], tau=0.025)
    assert per_layer == [0.5, 0.0]
    assert pooled == pytest.approx(2 / 10)
    # tau = 1 also catches the unit whose score equals the threshold
    assert metrics.dormant_ratio([h], tau=1.0)[0] == 0.75


def test_conv_channels_are_units() -> None:
    h = th.ones(5, 3, 4, 4)
    h[:, 1] = 0.0
    h[:, 2] = 0.0
    h[0, 2, 0, 0] = 6.0
    # Channel means of |h| over batch, H, W: 1, 0, 6/80 -> layer mean 1.075/3 -> scores 2.79, 0, 0.209
    assert metrics.dead_units([h]) == pytest.approx(1 / 3)
    assert metrics.dormant_ratio([h], tau=0.025)[0] == pytest.approx(1 / 3)
    assert metrics.dormant_ratio([h], tau=0.25)[0] == pytest.approx(2 / 3)
    assert metrics.unit_scores(h)[2].item() == pytest.approx(0.075 / (1.075 / 3), rel=1e-5)


def test_masks_of_a_layers_activity_are_its_dormant_and_dead_masks() -> None:
    h = th.ones(5, 3, 4, 4)
    h[:, 1] = 0.0
    h[:, 2] = 0.0
    h[0, 2, 0, 0] = -6.0  # |h| counts: channel means 1, 0, 6/80
    activity = metrics.unit_activity(h)
    assert th.allclose(activity, th.tensor([1.0, 0.0, 0.075]))
    assert metrics.dead_mask_of_activity(activity).tolist() == [False, True, False]
    assert metrics.dormant_mask_of_activity(activity, tau=0.025).tolist() == [False, True, False]
    assert metrics.dormant_mask_of_activity(activity, tau=0.25).tolist() == [False, True, True]
    for tau in (0.025, 0.25):
        assert th.equal(metrics.dormant_mask_of_activity(activity, tau), metrics.dormant_mask(h, tau))
    assert th.equal(metrics.dead_mask_of_activity(activity), metrics.dead_mask(h))
    assert metrics.dead_mask_of_activity(th.tensor([0.0, 1e-30])).tolist() == [True, False]


def test_dead_units_and_fau() -> None:
    h = th.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    assert metrics.dead_units([h]) == pytest.approx(1 / 3)
    assert metrics.fau([h]) == pytest.approx(1 - 4 / 6)
    tanh_h = th.tensor([[0.995, 0.5], [-1.0, 0.0]])
    assert metrics.fau([tanh_h], "tanh") == pytest.approx(0.5)
    assert metrics.fau([h, tanh_h], ["relu", "tanh"]) == pytest.approx(1 - 6 / 10)
    assert metrics.fau([]) == 0.0
    # sigmoid saturates where tanh does: |2h - 1| > 0.99, i.e. h < 0.005 or h > 0.995
    sigmoid_h = th.tensor([[0.996, 0.5], [0.004, 0.006]], dtype=th.float64)
    assert metrics.fau([sigmoid_h], "sigmoid") == 0.5
    assert metrics.fau([th.sigmoid(2 * th.atanh(tanh_h[:, :1].clamp(-0.999, 0.999)))], "sigmoid") == 0.0


def test_each_bounded_activation_is_judged_by_saturation() -> None:
    kinds = {
        activation: metrics.activation_kind(activation())
        for activation in (
            th.nn.ReLU,
            th.nn.Tanh,
            th.nn.Hardtanh,
            th.nn.Softsign,
            th.nn.Sigmoid,
            th.nn.Hardsigmoid,
            Fourier,
            CReLU,
        )
    }
    assert list(kinds.values()) == ["relu", "tanh", "tanh", "tanh", "sigmoid", "sigmoid", "fourier", "relu"]
    with pytest.raises(ValueError, match="activation='gelu': expected 'relu', 'tanh', 'sigmoid' or 'fourier'"):
        metrics.inactive_mask(th.zeros(1, 1), "gelu")  # type: ignore[arg-type]


def test_counts_behind_the_pooled_unit_metrics() -> None:
    h = th.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    assert metrics.inactive_count(h) == 4 and metrics.inactive_count(th.tensor([[0.995, 0.5]]), "tanh") == 1
    assert metrics.fau_from_counts(4, 6) == 1 - 4 / 6 and metrics.fau_from_counts(0, 0) == 0.0
    assert metrics.dead_mask(h).tolist() == [True, False, False]
    one_of_three = th.tensor([True, False, False])
    # per layer in float32, as dormant_ratio reports it; pooled in float64
    assert metrics.layer_fraction(one_of_three) == float(th.tensor(1 / 3, dtype=th.float32)) != 1 / 3
    assert metrics.pooled_fraction([one_of_three, th.tensor([True, True])]) == 3 / 5
    assert metrics.pooled_fraction([]) == 0.0


def test_norms() -> None:
    phi = th.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert metrics.feature_norm(phi) == pytest.approx(3.0)
    params = [th.tensor([1.0, -1.0]), th.tensor([[2.0, 2.0], [0.0, 0.0]])]
    assert metrics.weight_magnitude(params) == pytest.approx(math.sqrt(10 / 6))
    moved = [p + 1 for p in params]
    assert metrics.weight_change(moved, params) == pytest.approx(1.0)


def test_grad_norm_matches_the_gradient() -> None:
    layer = th.nn.Linear(2, 1)
    layer.weight.data = th.tensor([[1.0, 2.0]])
    layer.bias.data.zero_()
    layer(th.tensor([[3.0, 4.0]])).sum().backward()
    # d/dw = x = (3, 4), d/db = 1
    assert metrics.grad_norm(layer.parameters()) == pytest.approx(math.sqrt(9 + 16 + 1))


@pytest.mark.parametrize("shape", [(64, 300), (300, 64), (50, 50), (300, 500), (500, 300)])
def test_gram_singular_values_match_the_svd(shape: tuple[int, int]) -> None:
    phi = th.relu(th.randn(*shape, generator=th.Generator().manual_seed(1)))
    s_svd, s_gram = metrics.singular_values(phi), metrics.gram_singular_values(phi)
    k = min(shape)
    assert s_gram.shape == (k,)
    assert th.allclose(s_gram, s_svd[:k], rtol=0, atol=1e-5 * float(s_svd[0]))


@pytest.mark.parametrize(("shape", "zero_columns"), [((64, 300), 250), ((64, 300), 100), ((300, 64), 20)])
def test_gram_singular_values_leave_out_zero_columns_and_keep_their_zeros(
    shape: tuple[int, int], zero_columns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    phi = th.relu(th.randn(*shape, generator=th.Generator().manual_seed(3)))
    phi[:, th.randperm(shape[1], generator=th.Generator().manual_seed(4))[:zero_columns]] = 0.0
    gram_rows: list[tuple[int, ...]] = []
    monkeypatch.setattr(functions, "lower_gram", lambda rows: gram_rows.append(tuple(rows.shape)) or lower_gram(rows))
    s_svd, s_gram = metrics.singular_values(phi), metrics.gram_singular_values(phi)
    kept = shape[1] - zero_columns
    assert gram_rows == [(kept, shape[0]) if kept < shape[0] else (shape[0], kept)]
    k = min(shape)
    assert s_gram.shape == (k,) and s_gram.dtype == th.float64
    assert th.allclose(s_gram, s_svd[:k], rtol=0, atol=1e-5 * float(s_svd[0]))
    # (64, 300) with 250 zero columns has rank 50: the Gram matrix of the 50 columns, 14 zeros appended
    assert int((s_gram > 1e-6 * float(s_gram[0])).sum()) == min(shape[0], kept)


@pytest.mark.parametrize("shape", [(4, 3), (3, 4), (2, 16, 3, 3)])
def test_gram_singular_values_of_an_all_zero_matrix_are_zeros(shape: tuple[int, ...]) -> None:
    s = metrics.gram_singular_values(th.zeros(shape))
    assert th.equal(s, th.zeros(min(shape[0], math.prod(shape[1:])), dtype=th.float64))


@pytest.mark.parametrize("n", [5, 128, 300])
def test_lower_gram_is_the_lower_triangle_of_the_gram_matrix(n: int) -> None:
    rows = th.relu(th.randn(n, 40, generator=th.Generator().manual_seed(2))).double()
    gram = lower_gram(rows, block_rows=128)
    full = rows @ rows.T
    lower = th.ones(n, n, dtype=th.bool).tril()
    assert th.allclose(gram[lower], full[lower], rtol=1e-13, atol=0)
    # Above the diagonal blocks nothing is computed; the diagonal blocks hold both of their triangles.
    blocks = th.arange(n) // 128
    outside = blocks[:, None] < blocks[None, :]
    assert th.equal(gram[outside], th.zeros(int(outside.sum()), dtype=th.float64))
    assert th.allclose(gram[~outside], full[~outside], rtol=1e-13, atol=0)


@pytest.mark.parametrize(
    "phi",
    [
        th.eye(8),
        th.arange(1.0, 6.0).repeat(10, 1),
        th.cat((th.eye(3), th.eye(3)), dim=1),
        th.diag(th.tensor([98.0, 1.0, 1.0])),
        th.diag(th.tensor([1.0, 0.5, 0.001])) * 100,
        th.zeros(4, 3),
    ],
)
def test_ranks_from_the_gram_matrix_equal_the_svds(phi: th.Tensor) -> None:
    from crl.metrics.functions import rank_metrics_from_singular_values

    ranks = rank_metrics_from_singular_values(metrics.gram_singular_values(phi), phi.shape[0])
    expected = metrics.rank_metrics(phi)
    assert {k: v for k, v in ranks.items() if k != "effective_rank"} == {
        k: v for k, v in expected.items() if k != "effective_rank"
    }
    assert ranks["effective_rank"] == pytest.approx(expected["effective_rank"], abs=1e-4)
