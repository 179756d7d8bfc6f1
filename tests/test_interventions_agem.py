"""A-GEM: gradients projected against an episodic memory of earlier tasks (crl.interventions.agem)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import stable_baselines3 as sb3
import torch as th
from test_interventions_consolidation import CASES, _model, multi_head_sac
from test_sb3_equivalence import assert_same_training

import crl
from crl.hooks import GradientStep
from crl.interventions import AGEM, InterventionError
from crl.interventions.agem import EpisodicMemory, ReferenceGradient, project_onto_reference
from crl.metrics.losses import optimizer_parameters
from crl.metrics.probe_batch import draw_probe_batch
from crl.wrappers import permuted_observations

# --- the projection ------------------------------------------------------------------------------


def _parameters(*values: list[float]) -> list[th.nn.Parameter]:
    return [th.nn.Parameter(th.tensor(v)) for v in values]


def _reference(parameters: list[th.nn.Parameter], *gradients: list[float]) -> ReferenceGradient:
    tensors = [th.tensor(g) for g in gradients]
    return ReferenceGradient(parameters, tensors, float(sum((t * t).sum() for t in tensors)))


def test_a_gradient_against_the_reference_is_projected_onto_its_normal_plane() -> None:
    """g = ([1, 0], [3]), g_ref = ([-1, 1], [0]): g . g_ref = -1, ||g_ref||^2 = 2, g + g_ref / 2."""
    parameters = _parameters([0.0, 0.0], [0.0])
    parameters[0].grad, parameters[1].grad = th.tensor([1.0, 0.0]), th.tensor([3.0])
    assert project_onto_reference(_reference(parameters, [-1.0, 1.0], [0.0]))
    assert parameters[0].grad.tolist() == [0.5, 0.5] and parameters[1].grad.tolist() == [3.0]


def test_a_parameter_without_gradient_counts_as_zero_and_gets_the_projection() -> None:
    """g = ([1, 0], none), g_ref = ([-1, 1], [2]): g . g_ref = -1, ||g_ref||^2 = 6, g + g_ref / 6."""
    parameters = _parameters([0.0, 0.0], [0.0])
    parameters[0].grad = th.tensor([1.0, 0.0])
    assert project_onto_reference(_reference(parameters, [-1.0, 1.0], [2.0]))
    th.testing.assert_close(parameters[0].grad, th.tensor([5 / 6, 1 / 6]))
    th.testing.assert_close(parameters[1].grad, th.tensor([1 / 3]))


@pytest.mark.parametrize("gradient", [[1.0, 1.0], [1.0, -1.0]])  # along g_ref, orthogonal to it
def test_a_gradient_that_does_not_point_against_the_reference_is_left_alone(gradient: list[float]) -> None:
    parameters = _parameters([0.0, 0.0], [0.0])
    parameters[0].grad = th.tensor(gradient)
    assert not project_onto_reference(_reference(parameters, [1.0, 1.0], [5.0]))
    assert parameters[0].grad.tolist() == gradient and parameters[1].grad is None


# --- the memory ----------------------------------------------------------------------------------


def test_the_memory_keeps_every_tasks_samples_and_draws_distinct_ones() -> None:
    intervention = AGEM(episodic_mem_per_task=60, episodic_batch_size=50)
    model = _model("DQN", [intervention])
    model.learn(100)
    model.end_task(0)
    first = intervention._memory.samples
    assert len(intervention._memory) == 60 and model.logger.name_to_value["interventions/agem/memory"] == 60
    model.learn(100, reset_num_timesteps=False)
    model.end_task(1)
    kept = intervention._memory.samples
    assert len(intervention._memory) == 120
    for old, new in zip(first, kept, strict=True):
        assert (old is None and new is None) or th.equal(new[:60], old)


def _numbered(n: int) -> Any:
    """Replay samples whose action is their index."""
    rows = th.arange(n)[:, None]
    return sb3.common.type_aliases.ReplayBufferSamples(rows.float(), rows, rows.float(), th.zeros(n, 1), th.zeros(n, 1))


@pytest.mark.parametrize(("kept", "drawn"), [(1000, 128), (1000, 600), (100, 500)])
def test_memory_batches_are_distinct_samples(kept: int, drawn: int) -> None:
    memory = EpisodicMemory()
    memory.add(_numbered(kept))
    actions = memory.sample(drawn).actions.flatten()
    assert len(th.unique(actions)) == len(actions) == min(kept, drawn)


def test_memory_batches_draw_every_sample_equally_often() -> None:
    memory = EpisodicMemory()
    memory.add(_numbered(20))
    np.random.seed(0)
    counts = np.bincount(
        np.concatenate([memory.sample(5).actions.flatten().numpy() for _ in range(4000)]), minlength=20
    )
    assert np.abs(counts / 1000 - 1).max() < 0.1  # 4,000 x 5 draws over 20: 1,000 each


def test_a_small_buffer_gives_all_its_samples() -> None:
    intervention = AGEM(episodic_mem_per_task=10_000)
    model = _model("PPO", [intervention])  # the last rollout: 64 samples
    model.learn(64)
    model.end_task(0)
    assert len(intervention._memory) == 64 and type(intervention._memory.samples).__name__ == "RolloutBufferSamples"


def test_dict_observations_are_kept_and_drawn_per_key() -> None:
    memory = EpisodicMemory()
    samples = sb3.common.type_aliases.DictReplayBufferSamples(
        observations={"a": th.arange(4.0)[:, None], "b": th.arange(4.0)[:, None] * 10},
        actions=th.arange(4)[:, None],
        next_observations={"a": th.zeros(4, 1), "b": th.zeros(4, 1)},
        dones=th.zeros(4, 1),
        rewards=th.zeros(4, 1),
    )
    memory.add(samples)
    memory.add(samples)
    batch = memory.sample(3)
    assert len(memory) == 8 and batch.observations["a"].shape == (3, 1)
    th.testing.assert_close(batch.observations["b"], batch.observations["a"] * 10)
    th.testing.assert_close(batch.actions.float(), batch.observations["a"])


# --- the intervention ----------------------------------------------------------------------------


def _losses_with_references(model: Any, intervention: AGEM) -> dict[str, tuple[list[th.Tensor], th.optim.Optimizer]]:
    """What ``before_gradient_step`` should compute: each loss's gradient on the memory batch it draws."""
    np_state, torch_state = np.random.get_state(), th.get_rng_state()
    intervention.before_gradient_step(model, GradientStep(index=0, batch=None))
    np.random.set_state(np_state)
    th.set_rng_state(torch_state)
    batch = intervention._memory.sample(intervention.episodic_batch_size)
    expected = {}
    for name, (loss, optimizer) in model.training_losses(batch).items():
        parameters = optimizer_parameters(optimizer)
        gradients = th.autograd.grad(loss, parameters, allow_unused=True)
        expected[name] = (
            [th.zeros_like(p) if g is None else g for p, g in zip(parameters, gradients, strict=True)],
            optimizer,
        )
    return expected


@pytest.mark.parametrize("case", list(CASES))
def test_every_algorithm_projects_each_loss_against_its_gradient_on_the_memory(case: str) -> None:
    intervention = AGEM(episodic_mem_per_task=64, episodic_batch_size=16)
    model = _model(case, [intervention])
    model.learn(128)
    model.end_task(0)
    model.learn(128, reset_num_timesteps=False)
    assert 0.0 <= model.logger.name_to_value["interventions/agem/violation"] <= 1.0
    expected = _losses_with_references(model, intervention)
    assert set(intervention._references) == set(expected) == set(model.training_losses(draw_probe_batch(model, 4, 0)))
    noise = th.Generator().manual_seed(0)
    for name, (reference, optimizer) in expected.items():
        parameters = optimizer_parameters(optimizer)
        g_ref = th.cat([r.flatten() for r in reference]).double()
        assert float(g_ref.norm()) > 0
        # a gradient against the memory's: -g_ref plus noise
        for p, r in zip(parameters, reference, strict=True):
            p.grad = -r + 0.1 * r.abs().mean() * th.randn(r.shape, generator=noise)
        g = th.cat([p.grad.flatten() for p in parameters]).double()
        assert float(g @ g_ref) < 0
        intervention.after_backward(model, GradientStep(index=0, batch=None, loss_name=name, optimizer=optimizer))
        projected = th.cat([p.grad.flatten() for p in parameters]).double()
        th.testing.assert_close(projected, g - (g @ g_ref) / (g_ref @ g_ref) * g_ref, rtol=1e-4, atol=1e-6)
        assert abs(float(projected @ g_ref)) < 1e-4 * float(g.norm() * g_ref.norm())
    assert intervention._references == {}  # each loss takes its reference once


def test_before_the_first_task_ends_training_is_unchanged() -> None:
    for case in ("SAC", "PPO"):
        reference = _model(case)
        reference.learn(200)
        candidate = _model(case, [AGEM()])
        candidate.learn(200)
        assert_same_training(reference, candidate)


def test_after_a_task_end_training_changes() -> None:
    def trained(interventions: list[Any]) -> dict[str, th.Tensor]:
        model = _model("SAC", interventions)
        model.learn(150)
        model.end_task(0)
        model.learn(150, reset_num_timesteps=False)
        return model.policy.state_dict()

    plain, projected = trained([]), trained([AGEM(episodic_batch_size=16)])
    assert any(not th.equal(value, projected[key]) for key, value in plain.items())


def test_a_multi_head_policy_takes_each_memory_sample_through_its_own_head() -> None:
    intervention = AGEM(episodic_mem_per_task=64, episodic_batch_size=32)
    model = multi_head_sac([intervention])
    model.learn(100)
    model.end_task(0)  # the memory holds task 0's samples only
    intervention.before_gradient_step(model, GradientStep(index=0, batch=None))
    actor = intervention._references["actor"]
    head = {id(p): g for p, g in zip(actor.parameters, actor.gradients, strict=True)}
    mu = head[id(model.policy.actor.mu.weight)]  # (n_heads * action_dim, hidden): head 0's row, then head 1's
    assert float(mu[0].abs().sum()) > 0 and th.equal(mu[1], th.zeros_like(mu[1]))


def test_learn_continual_keeps_each_tasks_samples_before_the_buffer_is_emptied() -> None:
    sequence = permuted_observations("CartPole-v1", n_tasks=3, steps_per_task=150)
    intervention = AGEM(episodic_mem_per_task=100, episodic_batch_size=16)
    model = crl.DQN("MlpPolicy", sequence.make_vec_env(0), interventions=[intervention], seed=0,
                    learning_starts=50, batch_size=16, buffer_size=1000)  # fmt: skip
    crl.learn_continual(model, sequence, eval_every=150, n_eval_episodes=1, reset_replay_buffer=True)
    assert len(intervention._memory) == 300


def test_invalid_parameters_and_algorithms_are_refused() -> None:
    with pytest.raises(
        InterventionError, match=r"intervention 'agem': parameter episodic_batch_size=0: Input should be greater than 0"
    ):
        crl.interventions.make_intervention({"name": "agem", "episodic_batch_size": 0})
    with pytest.raises(InterventionError, match=r"intervention 'agem' needs the algorithm's losses on any batch"):
        AGEM().check(sb3.DQN("MlpPolicy", "CartPole-v1"))
