"""The hook protocol: auxiliary losses act on training, task and callback hooks fire."""

from __future__ import annotations

import pytest
import torch as th

import crl
from crl.hooks import GradientStep, HookDispatcher, TrainingHook
from crl.interventions import Intervention


class _ShrinkLastLayer(Intervention):
    """Auxiliary loss coef * ||W_out||^2 on DQN's output layer."""

    name = "test_shrink_last_layer"
    coef: float = 10.0

    def auxiliary_loss(self, algo, step: GradientStep):
        return self.coef * algo.q_net.q_net[-1].weight.pow(2).sum()


def _dqn(**kwargs):
    model = crl.DQN("MlpPolicy", "CartPole-v1", seed=1, learning_starts=100, **kwargs)
    model.learn(1000)
    return model


def test_auxiliary_loss_changes_training() -> None:
    plain = _dqn().q_net.q_net[-1].weight
    shrunk = _dqn(interventions=[_ShrinkLastLayer()]).q_net.q_net[-1].weight
    # Adam moves each weight by about lr per step, so the shrinkage is bounded but clear
    assert shrunk.norm() < 0.8 * plain.norm()


def test_auxiliary_loss_gradient_is_added_to_the_loss_gradient() -> None:
    """One hand-checked step: the gradient of the output weights gains 2 * coef * W."""
    model = crl.DQN("MlpPolicy", "CartPole-v1", seed=2, learning_starts=100, max_grad_norm=1e9)
    model.learn(200)
    layer = model.q_net.q_net[-1]
    grads = {}

    class _Spy(TrainingHook):
        def after_backward(self, algo, step: GradientStep) -> None:
            grads[len(grads)] = layer.weight.grad.clone()

    batch = model.replay_buffer.sample(32)
    model.replay_buffer.sample = lambda *args, **kwargs: batch  # the same minibatch in both runs
    weight_before = layer.weight.detach().clone()
    state = {k: v.clone() for k, v in model.policy.state_dict().items()}
    optimizer_state = model.policy.optimizer.state_dict()

    model._hooks = HookDispatcher([_Spy()])
    model.train(gradient_steps=1, batch_size=32)
    model.policy.load_state_dict(state)
    model.policy.optimizer.load_state_dict(optimizer_state)
    model._hooks = HookDispatcher([_ShrinkLastLayer(coef=3.0), _Spy()])
    model.train(gradient_steps=1, batch_size=32)

    th.testing.assert_close(grads[1] - grads[0], 2 * 3.0 * weight_before)


class _TaskLog(Intervention):
    name = "test_task_log"

    def model_post_init(self, context) -> None:
        self._events: list[tuple[str, int]] = []

    def on_task_start(self, algo, task_id: int) -> None:
        self._events.append(("start", task_id))

    def on_task_end(self, algo, task_id: int) -> None:
        self._events.append(("end", task_id))

    def on_rollout_end(self, algo) -> None:
        self._events.append(("rollout", algo.num_timesteps))


def test_task_hooks_reach_interventions() -> None:
    log = _TaskLog()
    model = crl.PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, interventions=[log])
    model.start_task(0)
    model.learn(128)
    model.end_task()
    model.start_task(1)
    assert log._events == [("start", 0), ("rollout", 64), ("rollout", 128), ("end", 0), ("start", 1)]
    assert model.current_task == 1


def test_end_task_without_a_task_is_an_error() -> None:
    with pytest.raises(ValueError, match="end_task\\(\\) needs a task_id"):
        crl.PPO("MlpPolicy", "CartPole-v1", n_steps=64).end_task()


def test_user_callbacks_still_run_beside_step_hooks() -> None:
    calls = []
    model = crl.PPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, interventions=[_TaskLog()])
    model.learn(64, callback=lambda _locals, _globals: calls.append(1) or True)
    assert len(calls) == 64


def test_hooks_fire_only_on_objects_that_override_them() -> None:
    dispatcher = HookDispatcher([_TaskLog(), _ShrinkLastLayer()])
    assert [type(h).__name__ for h in dispatcher._by_name["auxiliary_loss"]] == ["_ShrinkLastLayer"]
    assert [type(h).__name__ for h in dispatcher._by_name["on_task_start"]] == ["_TaskLog"]
    assert dispatcher._by_name["on_step"] == ()
    assert HookDispatcher([]).begin_gradient_step(None, 0, None) is None
