"""Checkpoints of a run through a task sequence: everything :func:`crl.learn_continual` needs to continue it.

A checkpoint is a directory ``<root>/<run_id>/task<i>-step<n>/`` (task ``i``, ``n`` of its steps done) holding

- ``model.zip``: ``model.save`` (the interventions' and the metrics monitor's state are pickled with the model),
- ``replay_buffer.pkl``: ``model.save_replay_buffer`` (off-policy algorithms),
- ``state.pkl``: the position in the sequence (task, steps done in it, the evaluations so far), the
  random states (python ``random``, numpy's global generator, torch's CPU generator), the training env
  mid-task when it can be pickled (its episodes then continue bitwise; otherwise the resumed task
  starts a fresh episode), the evaluation envs likewise (else the resumed run evaluates on freshly
  seeded ones), the values SB3's logger holds between two dumps, the MLflow run id and seed.

``<root>/<run_id>/latest`` names the newest complete checkpoint; it is replaced atomically after the
checkpoint is written, so a process killed while saving leaves the previous checkpoint in place.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import torch as th
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from crl.algorithms import ContinualAlgorithm
from crl.continual.loop import ContinualPosition

LATEST = "latest"
LOGGER_STATE = ("name_to_value", "name_to_count", "name_to_excluded")
PICKLE_ERRORS = (pickle.PicklingError, TypeError, AttributeError, ValueError, RuntimeError)
"""What pickling an env that holds a simulator or emulator handle raises."""


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    :param model: the model, with its replay buffer, random states restored
    :param position: where to continue (with the pickled env mid-task, where there is one)
    :param run_id: the MLflow run it belongs to
    :param seed: the run's seed
    :param logger_state: SB3's logger values recorded since its last dump (``name_to_value``, ``name_to_count``,
        ``name_to_excluded``), to put back into the new logger
    """

    model: ContinualAlgorithm
    position: ContinualPosition
    run_id: str
    seed: int
    logger_state: dict[str, dict[str, Any]]

    def restore_logger_state(self) -> None:
        """Put the logged-but-not-dumped values into the model's (new) logger."""
        for name, values in self.logger_state.items():
            getattr(self.model.logger, name).update(values)  # type: ignore[attr-defined]


def save_checkpoint(root: Path, model: ContinualAlgorithm, position: ContinualPosition, run_id: str, seed: int) -> Path:
    """Write a checkpoint of ``model`` at ``position`` under ``root / run_id`` and return its directory.

    :param root: the checkpoints' root directory
    :param model: the model in a consistent state (at a rollout's start or between tasks)
    :param position: where the run is (its ``env`` is ignored: the model's env is saved)
    """
    run_directory = root / run_id
    directory = run_directory / f"task{position.task}-step{position.steps_done}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    model.save(directory / "model.zip")  # type: ignore[attr-defined]
    if isinstance(model, OffPolicyAlgorithm):
        model.save_replay_buffer(directory / "replay_buffer.pkl")
    state = {
        "model_class": type(model),
        "position": replace(position, env=None, eval_envs=None),
        "env": _pickled(model.get_env()) if position.steps_done else None,  # type: ignore[attr-defined]
        "eval_envs": _pickled(position.eval_envs),
        "random": (random.getstate(), np.random.get_state(), th.get_rng_state()),
        # SB3's save does not keep the spaces' generators; the action space's draws the random actions.
        "action_space_random": model.action_space.np_random.bit_generator.state,  # type: ignore[attr-defined]
        "logger": {name: dict(getattr(model.logger, name)) for name in LOGGER_STATE},  # type: ignore[attr-defined]
        "run_id": run_id,
        "seed": seed,
    }
    (directory / "state.pkl").write_bytes(cloudpickle.dumps(state))
    _replace_atomically(run_directory / LATEST, directory.name)
    for previous in run_directory.glob("task*-step*"):
        if previous != directory:
            shutil.rmtree(previous, ignore_errors=True)
    return directory


def _pickled(envs: object) -> bytes | None:
    """``envs`` pickled, or ``None`` when they cannot be (a simulator's or emulator's handle)."""
    if envs is None:
        return None
    try:
        return cloudpickle.dumps(envs)  # type: ignore[no-any-return]
    except PICKLE_ERRORS:
        return None


def _replace_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def latest_checkpoint(root: Path, run_id: str) -> Path | None:
    """The newest complete checkpoint of ``run_id`` under ``root``, if any."""
    pointer = root / run_id / LATEST
    return root / run_id / pointer.read_text().strip() if pointer.is_file() else None


def load_checkpoint(directory: Path) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`; restores the global random states.

    The model comes without an env: :func:`crl.learn_continual` sets one (the checkpoint's mid-task env
    where there is one) when given the returned position.
    """
    state = pickle.loads((directory / "state.pkl").read_bytes())
    model = state["model_class"].load(directory / "model.zip", device="cpu")
    if isinstance(model, OffPolicyAlgorithm):
        model.load_replay_buffer(directory / "replay_buffer.pkl")
    position: ContinualPosition = state["position"]
    if state["env"] is not None:
        position = replace(position, env=pickle.loads(state["env"]))
    if state["eval_envs"] is not None:
        position = replace(position, eval_envs=pickle.loads(state["eval_envs"]))
    python_state, numpy_state, torch_state = state["random"]
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    th.set_rng_state(torch_state)
    model.action_space.np_random.bit_generator.state = state["action_space_random"]
    return Checkpoint(model, position, state["run_id"], state["seed"], state["logger"])
