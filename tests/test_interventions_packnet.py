"""PackNet: weights shared out between tasks by pruning, each task's view evaluated (crl.interventions.packnet)."""

from __future__ import annotations

from typing import Any

import pytest
import torch as th
from test_interventions_consolidation import CASES, OFF_POLICY, _model, multi_head_sac
from test_sb3_equivalence import assert_same_training

import crl
from crl.interventions import InterventionError, PackNet
from crl.interventions.packnet import prune_task_weights
from crl.wrappers import permuted_observations


def test_pruning_frees_the_smallest_entries_the_task_owns() -> None:
    """Task 0 owns 5 entries, |w| sorted 0.05 0.1 0.2 0.3 0.5; fraction 1/2: threshold the 3rd (index
    2), 0.2; entries at most 0.2 are zeroed and go to task 1; the entry task 1 owned already stays."""
    weight = th.tensor([[0.1, -0.5, 0.3], [0.2, -0.05, 0.4]], dtype=th.float64)
    owner = th.tensor([[0, 0, 0], [0, 0, 1]])
    freed = prune_task_weights(weight, owner, task=0, prune_fraction=0.5)
    assert weight.tolist() == [[0.0, -0.5, 0.3], [0.0, 0.0, 0.4]]
    assert freed.tolist() == [[True, False, False], [True, True, False]]
    assert owner.tolist() == [[1, 0, 0], [1, 1, 1]]


def test_pruning_a_task_that_owns_nothing_changes_nothing() -> None:
    weight, owner = th.tensor([[1.0, 2.0]]), th.tensor([[0, 0]])
    prune_task_weights(weight, owner, task=1, prune_fraction=0.5)
    assert weight.tolist() == [[1.0, 2.0]] and owner.tolist() == [[0, 0]]


def _snapshot(model: Any) -> dict[str, th.Tensor]:
    return {name: p.detach().clone() for name, p in model.policy.named_parameters()}


def test_each_task_keeps_its_share_and_later_tasks_train_only_theirs() -> None:
    intervention = PackNet(n_tasks=3, retrain_steps=20)
    model = _model("DQN", [intervention])
    model.start_task(0)
    model.learn(200)
    target_before = {name: p.detach().clone() for name, p in model.policy.q_net_target.named_parameters()}
    model.end_task()
    owners = intervention._owners
    for name, owner in owners.items():  # the target network got the same pruning, and nothing else
        target = model.policy.q_net_target.get_parameter(name.removeprefix("q_net."))
        assert th.equal(target[owner == 1], th.zeros(int((owner == 1).sum())))
        assert th.equal(target[owner == 0], target_before[name.removeprefix("q_net.")][owner == 0])
    assert set(owners) == {"q_net.q_net.0.weight", "q_net.q_net.2.weight"}
    assert intervention._frozen == ["q_net.q_net.0.bias", "q_net.q_net.2.bias"]
    after_first = _snapshot(model)
    for name, owner in owners.items():
        n = owner.numel()
        assert int((owner == 0).sum()) == n - int(n * 2 / 3) - 1  # the largest third stays with task 0
        assert set(owner.unique().tolist()) == {0, 1}
        assert th.equal(after_first[name][owner == 1], th.zeros(int((owner == 1).sum())))
    assert model.logger.name_to_value["interventions/packnet/owned"] == pytest.approx(
        float(sum(int((o == 0).sum()) for o in owners.values())) / sum(o.numel() for o in owners.values())
    )

    model.start_task(1)
    model.learn(200, reset_num_timesteps=False)
    now = _snapshot(model)
    for name, owner in owners.items():
        assert th.equal(now[name][owner == 0], after_first[name][owner == 0])  # task 0's entries are kept
        assert not th.equal(now[name][owner == 1], after_first[name][owner == 1])  # task 1 trains its own
    for name in intervention._frozen:
        assert th.equal(now[name], after_first[name])  # biases train in the first task only


def test_retraining_moves_only_the_kept_entries() -> None:
    def pruned_then(retrain_steps: int) -> tuple[dict[str, th.Tensor], PackNet]:
        intervention = PackNet(n_tasks=2, retrain_steps=retrain_steps)
        model = _model("DQN", [intervention], seed=1)
        model.learn(200)
        model.end_task(0)
        return _snapshot(model), intervention

    without, _ = pruned_then(0)
    retrained, intervention = pruned_then(30)
    for name, owner in intervention._owners.items():
        assert th.equal(retrained[name][owner == 1], th.zeros(int((owner == 1).sum())))  # the freed stay 0
        assert not th.equal(retrained[name][owner == 0], without[name][owner == 0])
    for name in intervention._frozen:
        assert th.equal(retrained[name], without[name])


def test_evaluating_a_task_shows_the_network_that_solved_it() -> None:
    """Task 0's view after two more tasks computes exactly what the network computed at task 0's end."""
    intervention = PackNet(n_tasks=3, retrain_steps=10)
    model = _model("DQN", [intervention])
    observations = th.randn(32, 4, generator=th.Generator().manual_seed(0))
    model.start_task(0)
    model.learn(150)
    model.end_task()
    at_first_end = model.q_net(observations).detach()
    for task in (1, 2):
        model.start_task(task)
        model.learn(150, reset_num_timesteps=False)
        model.end_task()
    trained, trained_outputs = _snapshot(model), model.q_net(observations).detach()
    with model.evaluating(0):
        assert th.equal(model.q_net(observations), at_first_end)
    with model.evaluating(2):  # the last task's view: every entry
        assert th.equal(model.q_net(observations), trained_outputs)
    assert all(th.equal(value, trained[name]) for name, value in _snapshot(model).items())  # restored after
    assert not th.equal(trained_outputs, at_first_end)


def test_a_tasks_view_holds_the_batch_norms_running_statistics_of_its_end() -> None:
    """CrossQ's actor in evaluation mode (running statistics): task 0's view after two more tasks is the
    network at task 0's end, though the later tasks' training moved the statistics."""
    intervention = PackNet(n_tasks=3, retrain_steps=10)
    model = _model("CrossQ", [intervention])
    observations = th.randn(32, 3, generator=th.Generator().manual_seed(0))

    def acting() -> th.Tensor:
        model.policy.set_training_mode(False)
        return model.actor(observations, deterministic=True).detach()

    model.start_task(0)
    model.learn(150)
    model.end_task()
    at_first_end = acting()
    statistics = [buffer.clone() for buffer in model.actor.buffers()]
    for task in (1, 2):
        model.start_task(task)
        model.learn(150, reset_num_timesteps=False)
        model.end_task()
    trained_statistics, trained_outputs = [buffer.clone() for buffer in model.actor.buffers()], acting()
    assert not all(th.equal(now, then) for now, then in zip(trained_statistics, statistics, strict=True))
    with model.evaluating(0):
        assert th.equal(acting(), at_first_end)
    with model.evaluating(2):
        assert th.equal(acting(), trained_outputs)
    assert all(th.equal(now, kept) for now, kept in zip(model.actor.buffers(), trained_statistics, strict=True))


def test_the_view_is_restored_when_an_evaluation_fails() -> None:
    intervention = PackNet(n_tasks=2, retrain_steps=0)
    model = _model("DQN", [intervention])
    model.learn(100)
    model.end_task(0)
    trained = _snapshot(model)
    with pytest.raises(RuntimeError, match="evaluation failed"), model.evaluating(0):
        raise RuntimeError("evaluation failed")
    assert all(th.equal(value, trained[name]) for name, value in _snapshot(model).items())


@pytest.mark.parametrize("case", list(CASES))
def test_every_algorithm_shares_out_its_acting_network(case: str) -> None:
    family = case.split("_")[0]
    intervention = PackNet(n_tasks=2, retrain_steps=0 if family == "PPO" else 10)
    model = _model(case, [intervention])
    model.learn(128)
    model.end_task(0)
    acting = {"DQN": "q_net.", "QRDQN": "quantile_net."}.get(family, "actor." if family != "PPO" else "")
    assert intervention._owners and all(name.startswith(acting) for name in intervention._owners)
    assert not any("critic" in name or "value" in name or "target" in name for name in intervention._owners)
    before = _snapshot(model)
    model.start_task(1)
    model.learn(128, reset_num_timesteps=False)
    after = _snapshot(model)
    for name, owner in intervention._owners.items():
        assert th.equal(after[name][owner == 0], before[name][owner == 0])


def test_critic_true_shares_out_the_critics_too() -> None:
    intervention = PackNet(n_tasks=2, retrain_steps=5, critic=True)
    model = _model("SAC", [intervention])
    model.learn(100)
    model.end_task(0)
    assert any(name.startswith("critic.") for name in intervention._owners)
    assert not any(name.startswith("critic_target.") for name in intervention._owners)


def test_the_first_task_trains_as_without_packnet() -> None:
    reference = _model("SAC")
    reference.learn(200)
    candidate = _model("SAC", [PackNet(n_tasks=2)])
    candidate.learn(200)
    assert_same_training(reference, candidate)


def test_task_heads_train_freely() -> None:
    intervention = PackNet(n_tasks=2, retrain_steps=0)
    model = multi_head_sac([intervention])
    model.learn(100)
    model.end_task(0)
    heads = tuple(f"{path}." for path in model.policy.task_heads())
    assert intervention._owners and not any(name.startswith(heads) for name in intervention._owners)
    assert not any(name.startswith(heads) for name in intervention._frozen)


class _RecordingPackNet(PackNet):
    evaluated: list[int] = []

    def on_evaluation_start(self, algo: Any, task_id: int) -> None:
        self.evaluated.append(task_id)
        super().on_evaluation_start(algo, task_id)


def test_learn_continual_evaluates_each_task_through_its_view() -> None:
    sequence = permuted_observations("CartPole-v1", n_tasks=3, steps_per_task=120)
    intervention = _RecordingPackNet(n_tasks=3, retrain_steps=10)
    model = crl.DQN("MlpPolicy", sequence.make_vec_env(0), interventions=[intervention], seed=0,
                    learning_starts=50, batch_size=16, buffer_size=1000)  # fmt: skip
    crl.learn_continual(model, sequence, eval_every=120, n_eval_episodes=1)
    assert intervention.evaluated == [0, 1, 2] * 3
    assert {int(owner.max()) for owner in intervention._owners.values()} == {2}


def test_the_task_count_comes_from_the_sequence_when_not_given() -> None:
    sequence = permuted_observations("CartPole-v1", n_tasks=2, steps_per_task=100)
    intervention = PackNet(retrain_steps=5)
    model = crl.DQN("MlpPolicy", sequence.make_vec_env(0), interventions=[intervention], seed=0, **OFF_POLICY)
    crl.learn_continual(model, sequence, eval_every=100, n_eval_episodes=1)
    assert intervention.n_tasks == 2 and intervention._owners
    unknown = PackNet()
    model = _model("DQN", [unknown])
    model.learn(60)
    with pytest.raises(InterventionError, match=r"task 0 ends, but n_tasks is not known; give n_tasks"):
        model.end_task(0)


def test_a_wrong_task_count_is_refused_before_training() -> None:
    sequence = permuted_observations("CartPole-v1", n_tasks=3, steps_per_task=100)
    model = crl.DQN("MlpPolicy", sequence.make_vec_env(0), interventions=[PackNet(n_tasks=2)], seed=0)
    with pytest.raises(InterventionError, match=r"intervention 'packnet': n_tasks=2, but the sequence has 3 tasks"):
        crl.learn_continual(model, sequence, eval_every=100)
    assert model.num_timesteps == 0
    with pytest.raises(InterventionError, match=r"task 2 starts, but n_tasks=2"):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=[PackNet(n_tasks=2)]).start_task(2)


def test_invalid_configurations_are_refused() -> None:
    with pytest.raises(InterventionError, match=r"'packnet': parameter n_tasks=0: Input should be greater"):
        crl.interventions.make_intervention({"name": "packnet", "n_tasks": 0})
    with pytest.raises(InterventionError, match=r"PPO keeps only its last rollout to retrain on; set retrain_steps=0"):
        crl.PPO("MlpPolicy", "CartPole-v1", interventions=[PackNet(n_tasks=2)])
    with pytest.raises(InterventionError, match=r"critic=True, but DQN has no critic"):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=[PackNet(n_tasks=2, critic=True)])
