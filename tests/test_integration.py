"""Sequences, interventions and metrics together, as a researcher combines them."""

from typing import Any

import numpy as np
from stable_baselines3.common.logger import KVWriter, Logger

import crl
from crl.interventions import ReDo, Reset
from crl.wrappers import synthetic


class _Memory(KVWriter):
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, Any]]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.rows.append((step, dict(key_values)))

    def close(self) -> None:
        pass


def test_continual_dqn_with_interventions_and_metrics() -> None:
    sequence = synthetic.permuted_observations(n_tasks=3, steps_per_task=600)
    model = crl.DQN(
        "MlpPolicy",
        sequence.make_vec_env(0),
        learning_starts=100,
        train_freq=4,
        seed=0,
        policy_kwargs=dict(net_arch=[32, 32]),
        interventions=[crl.LayerNorm(), ReDo(every=200), Reset(parts="head")],
        metrics={"every": 300, "probe_batch_size": 64},
    )
    memory = _Memory()
    model.set_logger(Logger(folder=None, output_formats=[memory]))

    result = crl.learn_continual(model, sequence, eval_every=300, n_eval_episodes=2)

    assert result.performance.shape[0] == 3
    assert np.isfinite(result.performance).all()
    logged = {key for _, values in memory.rows for key in values}
    assert "plasticity/q_net/all/dormant_ratio" in logged
    assert "plasticity/q_net/layer0/srank" in logged
    assert "interventions/redo/recycled" in logged
    # The head (last Linear of the Q-network, 32 x 2 + 2 parameters) was reset at both task switches.
    resets = [
        values["interventions/reset/parameters_reset"]
        for _, values in memory.rows
        if "interventions/reset/parameters_reset" in values
    ]
    assert resets == [66, 66]
