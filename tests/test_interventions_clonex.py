"""ClonEx-SAC: cloning of the earlier tasks' policies and exploration by their heads (crl.interventions.clonex)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch as th
from test_interventions_consolidation import OFF_POLICY, _model
from test_sb3_equivalence import assert_same_training

import crl
from crl.continual.continual_world import ContinualWorldSAC
from crl.hooks import GradientStep
from crl.interventions import ClonEx, InterventionError
from crl.interventions.clonex import KL_STD_EPSILON, gaussian_kl
from crl.interventions.head_exploration import ExplorationEpisodes, HeadExploration
from crl.policies import MultiHeadSACPolicy
from crl.policies.multihead import with_task_heads
from crl.wrappers import TaskSequence, permuted_observations

HEAD_CASES: dict[str, dict[str, Any]] = {
    "SAC": dict(net_arch=[16]),
    "TQC": dict(net_arch=[16], n_quantiles=3, n_critics=2),
    "CrossQ": dict(net_arch=[16]),
}


def _sequence(n_tasks: int = 2, steps_per_task: int = 300) -> TaskSequence:
    tasks = permuted_observations("Pendulum-v1", n_tasks=n_tasks, steps_per_task=steps_per_task).tasks
    return TaskSequence(tasks, task_id_in_obs=True)


def _multi_head(case: str, intervention: ClonEx | None, n_tasks: int = 2, n_envs: int = 1, **kwargs: Any) -> Any:
    env = _sequence(n_tasks).make_vec_env(0, n_envs=n_envs)
    options = {**OFF_POLICY, **kwargs}
    policy_kwargs = dict(HEAD_CASES[case], n_heads=n_tasks)
    interventions = [] if intervention is None else [intervention]
    return getattr(crl, case)("MultiHeadPolicy", env, interventions=interventions, seed=0,
                              policy_kwargs=policy_kwargs, **options)  # fmt: skip


def _next_task(model: Any, sequence: TaskSequence, task: int) -> None:
    """What learn_continual does between tasks: end the last one, start ``task`` on its env."""
    model.end_task(task - 1)
    model.set_env(sequence.make_vec_env(task, n_envs=model.n_envs))
    model.start_task(task)


# --- the cloning loss ------------------------------------------------------------------------------


def test_the_kl_of_two_gaussians_is_the_authors_closed_form() -> None:
    """N(0, 1) against N(1, 2) in each of two dimensions, every sigma taken as exp(log sigma) + 1e-6."""
    target_mean, target_log_std = th.zeros(1, 2, dtype=th.float64), th.zeros(1, 2, dtype=th.float64)
    mean, log_std = th.ones(1, 2, dtype=th.float64), th.full((1, 2), math.log(2.0), dtype=th.float64)
    per_dimension = math.log(2.0) + ((1 + KL_STD_EPSILON) ** 2 + 1.0) / (2 * (2 + KL_STD_EPSILON) ** 2) - 0.5
    th.testing.assert_close(gaussian_kl(target_mean, target_log_std, mean, log_std), th.tensor([2 * per_dimension],
                            dtype=th.float64), rtol=0, atol=1e-15)  # fmt: skip
    # It is torch's KL of the two Gaussians up to the 1e-6 in the standard deviations.
    torch_kl = th.distributions.kl_divergence(
        th.distributions.Normal(target_mean, target_log_std.exp()), th.distributions.Normal(mean, log_std.exp())
    ).sum(dim=-1)
    th.testing.assert_close(gaussian_kl(target_mean, target_log_std, mean, log_std), torch_kl, rtol=1e-5, atol=0)


def test_a_gaussian_has_no_divergence_from_itself() -> None:
    mean, log_std = th.randn(5, 3, dtype=th.float64), th.randn(5, 3, dtype=th.float64)
    th.testing.assert_close(gaussian_kl(mean, log_std, mean, log_std), th.zeros(5, dtype=th.float64))


def _after_task_zero(case: str, intervention: ClonEx) -> Any:
    model = _multi_head(case, intervention)
    model.learn(120)
    model.end_task(0)
    return model


@pytest.mark.parametrize("case", list(HEAD_CASES))
def test_the_memory_keeps_the_actors_and_critics_outputs_at_the_tasks_end(case: str) -> None:
    intervention = ClonEx(episodic_mem_per_task=50, critic=True)
    model = _after_task_zero(case, intervention)
    kept = intervention._memory.samples
    assert len(intervention._memory) == 50 and model.logger.name_to_value["interventions/clonex/memory"] == 50
    model.policy.set_training_mode(False)  # CrossQ's batch norms on their running statistics
    with th.no_grad():
        mean, log_std, _ = model.policy.actor.get_action_dist_params(kept.observations)
        values = model.policy.critic(kept.observations, kept.actions)
    th.testing.assert_close(kept.mean, th.tanh(mean))
    th.testing.assert_close(kept.log_std, log_std)
    expected = values.flatten(1) if case == "TQC" else th.cat(values, dim=1)
    th.testing.assert_close(kept.q_values.flatten(1), expected)


def _set_gradients(parameters: list[th.Tensor], seed: int) -> list[th.Tensor]:
    generator = th.Generator().manual_seed(seed)
    for parameter in parameters:
        parameter.grad = th.randn(parameter.shape, generator=generator)
    return [parameter.grad.clone() for parameter in parameters]


def _authors_actor_loss(model: Any, batch: Any, coef: float) -> th.Tensor:
    """coef * mean over the batch of sum over actions of the authors' KL, written out on its own."""
    mean, log_std, _ = model.policy.actor.get_action_dist_params(batch.observations)
    mean = th.tanh(mean)
    target_variance = (batch.log_std.exp() + 1e-6) ** 2
    variance = (log_std.exp() + 1e-6) ** 2
    kl = log_std - batch.log_std + (target_variance + (batch.mean - mean) ** 2) / (2 * variance) - 0.5
    return coef * kl.sum(dim=1).mean()


@pytest.mark.parametrize("case", list(HEAD_CASES))
def test_the_actors_gradient_becomes_the_mean_of_its_own_and_the_clonings(case: str) -> None:
    intervention = ClonEx(episodic_mem_per_task=60, episodic_batch_size=20, coef=3.0)
    model = _after_task_zero(case, intervention)
    with th.no_grad():  # move the actor away from its task-0 self, so that the cloning has a gradient
        for parameter in model.policy.actor.parameters():
            parameter.add_(0.05 * th.randn_like(parameter))
    intervention.before_gradient_step(model, GradientStep(index=0, batch=None))
    batch = intervention._batch
    assert batch is not None and len(batch.actions) == 20
    optimizer = model.policy.actor.optimizer
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    model.policy.set_training_mode(False)
    cloning = th.autograd.grad(_authors_actor_loss(model, batch, 3.0), parameters, allow_unused=True)
    model.policy.set_training_mode(True)
    own = _set_gradients(parameters, seed=1)
    intervention.after_backward(model, GradientStep(index=0, batch=None, loss_name="actor", optimizer=optimizer))
    moved = 0
    for parameter, g, g_bc in zip(parameters, own, cloning, strict=True):
        g_bc = th.zeros_like(g) if g_bc is None else g_bc
        th.testing.assert_close(parameter.grad, (g + g_bc) / 2, rtol=1e-5, atol=1e-7)
        moved += int(float(g_bc.abs().sum()) > 0)
    assert moved >= 2
    assert intervention._kl and intervention._kl[-1] > 0


def test_the_critics_gradient_is_averaged_with_the_value_cloning_only_when_asked() -> None:
    for critic in (False, True):
        intervention = ClonEx(episodic_mem_per_task=60, episodic_batch_size=20, coef=2.0, critic=critic)
        model = _after_task_zero("SAC", intervention)
        with th.no_grad():
            for parameter in model.policy.critic.parameters():
                parameter.add_(0.05 * th.randn_like(parameter))
        intervention.before_gradient_step(model, GradientStep(index=0, batch=None))
        batch = intervention._batch
        optimizer = model.policy.critic.optimizer
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        q1, q2 = model.policy.critic(batch.observations, batch.actions)
        targets = batch.q_values if critic else th.zeros(20, 2, 1)
        loss = 2.0 * (((q1 - targets[:, 0]) ** 2).mean() + ((q2 - targets[:, 1]) ** 2).mean())
        cloning = th.autograd.grad(loss, parameters)
        own = _set_gradients(parameters, seed=2)
        intervention.after_backward(model, GradientStep(index=0, batch=None, loss_name="critic", optimizer=optimizer))
        for parameter, g, g_q in zip(parameters, own, cloning, strict=True):
            expected = (g + g_q) / 2 if critic else g
            th.testing.assert_close(parameter.grad, expected, rtol=1e-5, atol=1e-7)


def test_right_after_a_tasks_end_the_cloning_pulls_nowhere_and_the_gradient_is_halved() -> None:
    intervention = ClonEx(episodic_mem_per_task=60, episodic_batch_size=20)
    model = _after_task_zero("SAC", intervention)
    intervention.before_gradient_step(model, GradientStep(index=0, batch=None))
    optimizer = model.policy.actor.optimizer
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    own = _set_gradients(parameters, seed=3)
    intervention.after_backward(model, GradientStep(index=0, batch=None, loss_name="actor", optimizer=optimizer))
    for parameter, g in zip(parameters, own, strict=True):
        th.testing.assert_close(parameter.grad, g / 2, rtol=0, atol=1e-4)  # the KL's minimum, up to its 1e-6
    assert intervention._kl[-1] < 1e-10


def test_each_memory_sample_is_cloned_through_its_own_tasks_head() -> None:
    intervention = ClonEx(episodic_mem_per_task=60, episodic_batch_size=30, exploration="uniform")
    model = _after_task_zero("SAC", intervention)  # the memory holds task 0's samples only
    with th.no_grad():
        model.policy.actor.mu.weight.add_(0.1)
    intervention.before_gradient_step(model, GradientStep(index=0, batch=None))
    optimizer = model.policy.actor.optimizer
    mu = model.policy.actor.mu.weight
    mu.grad = th.zeros_like(mu)
    intervention.after_backward(model, GradientStep(index=0, batch=None, loss_name="actor", optimizer=optimizer))
    assert float(mu.grad[0].abs().sum()) > 0 and th.equal(mu.grad[1], th.zeros_like(mu.grad[1]))  # head 0, head 1


def test_before_the_first_task_ends_training_is_unchanged() -> None:
    for case in ("SAC", "TQC"):
        reference = _multi_head(case, None)
        reference.learn(200)
        candidate = _multi_head(case, ClonEx(episodic_mem_per_task=50))
        candidate.learn(200)
        assert_same_training(reference, candidate)


def test_zero_strength_keeps_no_memory() -> None:
    intervention = ClonEx(coef=0.0)
    _after_task_zero("SAC", intervention)
    assert len(intervention._memory) == 0 and intervention._task_heads == [0]


# --- which head explores -------------------------------------------------------------------------


def test_best_return_plays_every_earlier_head_once_then_the_best_and_ties_go_to_the_later_task() -> None:
    exploration = HeadExploration("best_return", earlier=[0, 1, 2], current=3)
    for head, episode_return in ((0, 5.0), (1, 9.0), (2, 9.0)):
        assert exploration.choose() == head
        exploration.record(head, episode_return, success=False)
    assert exploration.choose() == 2  # 1 and 2 tie at 9
    exploration.record(2, 1.0, success=False)  # head 2's mean drops to 5
    assert exploration.choose() == 1


def test_best_success_ranks_by_the_share_of_successful_episodes() -> None:
    exploration = HeadExploration("best_success", earlier=[4, 7], current=9)
    exploration.record(4, 100.0, success=False)
    exploration.record(7, 1.0, success=True)
    assert exploration.choose() == 7


def test_fixed_and_uniform_rules() -> None:
    assert HeadExploration("current", [0, 1], current=2).choose() == 2
    assert HeadExploration("previous", [0, 1], current=2).choose() == 1
    np.random.seed(0)
    previous = [HeadExploration("uniform_previous", [0, 1], 2).choose() for _ in range(3000)]
    assert set(previous) == {0, 1} and abs(np.mean(previous) - 0.5) < 0.05
    either = np.bincount([HeadExploration("uniform_previous_or_current", [0, 1], 2).choose() for _ in range(3000)])
    assert np.abs(either / 1000 - 1).max() < 0.1
    with pytest.raises(ValueError, match="no head explores"):
        HeadExploration("best_return", [], current=0)


def test_each_environments_episode_scores_the_head_that_played_it() -> None:
    exploration = HeadExploration("best_return", earlier=[0, 1], current=2)
    episodes = ExplorationEpisodes(exploration, n_envs=2)
    assert episodes.heads_for_step().tolist() == [0, 0]  # head 0 is untried for both starts
    episodes.observe(np.array([1.0, 2.0]), np.array([False, False]), [{}, {"success": 1.0}])
    episodes.observe(np.array([3.0, 4.0]), np.array([False, True]), [{}, {}])
    assert exploration.returns[0] == [6.0] and exploration.successes[0] == [True]
    assert episodes.heads_for_step().tolist() == [0, 1]  # env 1's new episode: head 1 is untried
    episodes.observe(np.array([1.0, 1.0]), np.array([True, False]), [{}, {}])
    assert exploration.returns[0] == [6.0, 5.0] and episodes.heads[0] is None and episodes.heads[1] == 1


def test_observations_are_rewritten_to_name_other_heads() -> None:
    observations = np.array([[0.5, 0.0, 1.0, 0.0], [0.25, 0.0, 0.0, 1.0]], dtype=np.float32)
    rewritten = with_task_heads(observations, np.array([0, 0]), n_heads=3)
    assert rewritten.tolist() == [[0.5, 1.0, 0.0, 0.0], [0.25, 1.0, 0.0, 0.0]]
    assert observations[0, 2] == 1.0  # a copy
    frames = {"frames": np.zeros((2, 3)), "task_id": np.eye(3, dtype=np.float32)[[1, 2]]}
    assert with_task_heads(frames, np.array([2, 0]), 3)["task_id"].tolist() == [[0, 0, 1], [1, 0, 0]]


# --- exploration in training ---------------------------------------------------------------------


class _PredictLog:
    """Wraps ``model.predict``: records the task heads each call's observations name."""

    def __init__(self, model: Any, n_heads: int) -> None:
        self.predict, self.n_heads, self.heads = model.predict, n_heads, []
        model.predict = self

    def __call__(self, observations: Any, *args: Any, **kwargs: Any) -> Any:
        self.heads.append(observations[:, -self.n_heads :].argmax(axis=1).tolist())
        return self.predict(observations, *args, **kwargs)


def test_the_warm_up_of_a_later_task_is_played_by_an_earlier_head_then_the_policy_takes_over() -> None:
    sequence = _sequence(n_tasks=2)
    intervention = ClonEx(episodic_mem_per_task=50)
    model = _multi_head("SAC", intervention)
    model.learn(100)
    _next_task(model, sequence, 1)
    log = _PredictLog(model, n_heads=2)
    model.learn(80)  # learning_starts 50: 50 warm-up steps
    assert log.heads[:50] == [[0]] * 50 and log.heads[50:] == [[1]] * 30
    assert model.logger.name_to_value["interventions/clonex/exploration_head"] == 0
    assert intervention._episodes is None  # let go at the warm-up's end


def test_warm_up_actions_are_stored_scaled_as_sb3_stores_the_policys() -> None:
    sequence = _sequence(n_tasks=2)
    model = _multi_head("SAC", ClonEx(coef=0.0), learning_starts=20, buffer_size=100)
    model.learn(10)
    _next_task(model, sequence, 1)
    model.predict = lambda observations, deterministic=False: (np.full((1, 1), 1.0, dtype=np.float32), None)
    model.learn(5)
    th.testing.assert_close(th.as_tensor(model.replay_buffer.actions[10:15, 0]), th.full((5, 1), 0.5))  # [-2, 2] -> 1/2


def test_two_environments_choose_their_heads_per_episode() -> None:
    sequence = _sequence(n_tasks=3)
    intervention = ClonEx(coef=0.0)
    model = _multi_head("SAC", intervention, n_tasks=3, n_envs=2, learning_starts=500)
    for task in (0, 1):
        model.learn(40)
        _next_task(model, sequence, task + 1)
    log = _PredictLog(model, n_heads=3)
    model.learn(440)  # Pendulum's episodes: 200 steps, so two per environment
    assert log.heads[0] == [0, 0] and log.heads[100] == [0, 0] and log.heads[219] == [1, 1]
    exploration = intervention._episodes.exploration
    assert [len(exploration.returns[head]) for head in (0, 1)] == [2, 0]  # the second episodes still run


def test_the_continual_world_agent_explores_for_its_random_steps() -> None:
    sequence = _sequence(n_tasks=2)
    model = ContinualWorldSAC(MultiHeadSACPolicy, sequence.make_vec_env(0), random_steps=70, learning_starts=20,
                              batch_size=16, buffer_size=500, interventions=[ClonEx(episodic_mem_per_task=40)],
                              policy_kwargs=dict(net_arch=[16], n_heads=2), seed=0)  # fmt: skip
    model.learn(30)
    _next_task(model, sequence, 1)
    log = _PredictLog(model, n_heads=2)
    model.learn(90)
    assert log.heads == [[0]] * 70 + [[1]] * 20


def test_learn_continual_remembers_every_task_and_explores_with_earlier_heads() -> None:
    sequence = _sequence(n_tasks=3, steps_per_task=120)
    intervention = ClonEx(episodic_mem_per_task=30, episodic_batch_size=8)
    model = _multi_head("SAC", intervention, n_tasks=3)
    crl.learn_continual(model, sequence, eval_every=120, n_eval_episodes=1, reset_replay_buffer=True)
    assert len(intervention._memory) == 90 and intervention._task_heads == [0, 1, 2]
    assert model.logger.name_to_value["interventions/clonex/kl"] >= 0


def test_the_memory_and_the_heads_are_saved_with_the_model(tmp_path: Any) -> None:
    intervention = ClonEx(episodic_mem_per_task=40)
    model = _after_task_zero("SAC", intervention)
    model.save(tmp_path / "model")
    loaded = crl.SAC.load(tmp_path / "model", env=model.get_env())
    restored = loaded.interventions[0]
    assert restored._task_heads == [0] and th.equal(restored._memory.samples.mean, intervention._memory.samples.mean)


def test_a_model_loaded_during_a_warm_up_keeps_the_heads_scores_and_starts_new_episodes(tmp_path: Any) -> None:
    sequence = _sequence(n_tasks=3)
    intervention = ClonEx(coef=0.0)
    model = _multi_head("SAC", intervention, n_tasks=3, learning_starts=1000)
    for task in (0, 1):
        model.learn(40)
        _next_task(model, sequence, task + 1)
    model.learn(300)  # head 0 played the first 200-step episode, head 1 plays the second
    assert intervention._episodes.heads == [1] and intervention._episodes.exploration.returns[0]
    model.save(tmp_path / "model")
    restored = crl.SAC.load(tmp_path / "model", env=model.get_env()).interventions[0]
    assert restored._episodes.heads == [None] and restored._episodes.returns.tolist() == [0.0]
    assert restored._episodes.exploration.returns == intervention._episodes.exploration.returns


# --- refusals ------------------------------------------------------------------------------------


def test_invalid_parameters_and_algorithms_are_refused() -> None:
    with pytest.raises(InterventionError, match=r"intervention 'clonex': parameter coef=-1.0: Input should be"):
        crl.interventions.make_intervention({"name": "clonex", "coef": -1.0})
    with pytest.raises(InterventionError, match=r"parameter exploration='best'"):
        crl.interventions.make_intervention({"name": "clonex", "exploration": "best"})
    with pytest.raises(InterventionError, match=r"intervention 'clonex' does not apply to DQN"):
        _model("DQN", [ClonEx()])
    with pytest.raises(InterventionError, match=r"exploration='best_return' lets earlier tasks' heads play, but "):
        _model("SAC", [ClonEx()])
    _model("SAC", [ClonEx(exploration="uniform")])  # cloning alone needs no heads
