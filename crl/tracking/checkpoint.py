"""Checkpoints of a run through a task sequence: everything :func:`crl.learn_continual` needs to continue it.

A checkpoint is a directory ``<root>/<run_id>/task<i>-step<n>/`` (task ``i``, ``n`` of its steps done) holding

- ``model.zip``: ``model.save`` (the interventions' and the metrics monitor's state are pickled with the model),
- ``replay_buffer.pkl``: ``model.save_replay_buffer`` (off-policy algorithms),
- ``state.pkl``: the position in the sequence (task, steps done in it, the evaluations so far), the
  random states (python ``random``, numpy's global generator, torch's CPU generator), the training env
  mid-task when it round-trips through pickle (its episodes then continue bitwise; otherwise the
  resumed task starts a fresh episode), the evaluation envs likewise (else the resumed run evaluates
  on freshly seeded ones), the values SB3's logger holds between two dumps, the MLflow run id and seed.

An env round-trips when it pickles and its unpickled copy holds the same simulator state. Meta-World's
envs (Continual World) pickle without error but rebuild their MuJoCo simulator on unpickling and put
back only joint positions and velocities (``mocap_pos``, ``ctrl``, ``time`` are lost): continuing such
an episode would be physically inconsistent, so they count as envs that cannot be pickled.

``<root>/<run_id>/latest`` names the newest complete checkpoint. A checkpoint is written into a
staging directory beside its final one and renamed into place, and ``latest`` is replaced atomically
after that, so a process killed while saving leaves the previous checkpoint in place -- also when the
new checkpoint has the previous one's name (a Ctrl-C at the rollout start right after a task-end
checkpoint).
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import torch as th
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from crl.algorithms import ContinualAlgorithm
from crl.continual.loop import ContinualPosition

LATEST = "latest"
STAGING_SUFFIX = ".staging"
"""A checkpoint is written into ``.<name>.staging`` beside its final directory ``<name>``, then renamed."""
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

    The checkpoint is complete in a staging directory before it replaces anything, so a kill while
    saving leaves ``latest`` naming a complete checkpoint.

    :param root: the checkpoints' root directory
    :param model: the model in a consistent state (at a rollout's start or between tasks)
    :param position: where the run is (its ``env`` is ignored: the model's env is saved)
    """
    run_directory = root / run_id
    directory = run_directory / f"task{position.task}-step{position.steps_done}"
    staging = _staging(directory)
    shutil.rmtree(staging, ignore_errors=True)  # left by a process killed while saving
    staging.mkdir(parents=True)
    model.save(staging / "model.zip")  # type: ignore[attr-defined]
    if isinstance(model, OffPolicyAlgorithm):
        model.save_replay_buffer(staging / "replay_buffer.pkl")
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
    (staging / "state.pkl").write_bytes(cloudpickle.dumps(state))
    _install(staging, directory)
    # Older checkpoints, and staging directories a process killed while saving left behind.
    for previous in [*run_directory.glob("task*-step*"), *run_directory.glob(f".task*-step*{STAGING_SUFFIX}")]:
        if previous != directory:
            shutil.rmtree(previous, ignore_errors=True)
    return directory


def _staging(directory: Path) -> Path:
    """Where the checkpoint ``directory`` is written before it is renamed into place."""
    return directory.with_name(f".{directory.name}{STAGING_SUFFIX}")


def _install(staging: Path, directory: Path) -> None:
    """Rename the complete checkpoint ``staging`` to ``directory`` and point ``latest`` at it.

    ``latest`` names a complete checkpoint at every moment: the previous one until the new one is in
    place; when the new one replaces a checkpoint of the same name, the new one under its staging name
    while the old one is removed (:func:`latest_checkpoint` follows a staging name to its final name
    once renamed).
    """
    latest = directory.parent / LATEST
    if directory.exists():
        # A directory cannot be renamed over a non-empty one: remove the old one while `latest` names the new one.
        _replace_atomically(latest, staging.name)
        shutil.rmtree(directory)
    os.rename(staging, directory)
    _replace_atomically(latest, directory.name)


def _pickled(envs: VecEnv | list[VecEnv] | None) -> bytes | None:
    """``envs`` pickled, or ``None`` when they cannot be (a simulator's or emulator's handle) or do not
    round-trip (their unpickled copy's simulator state differs, as Meta-World's does)."""
    if envs is None:
        return None
    try:
        data: bytes = cloudpickle.dumps(envs)
    except PICKLE_ERRORS:
        return None
    return data if _round_trips(envs, data) else None


def _round_trips(envs: VecEnv | list[VecEnv], data: bytes) -> bool:
    """Whether ``data`` (``envs`` pickled) unpickles into envs with the same simulator state.

    Only MuJoCo simulators are compared: the state of other envs lives in plain Python and numpy
    attributes, which pickle restores exactly. Envs without one are not unpickled (it costs time).
    """
    states = _simulator_states(envs)
    if not states:
        return True
    try:
        copy = pickle.loads(data)
    except (*PICKLE_ERRORS, EOFError, pickle.UnpicklingError, ImportError):
        return False  # pickles but does not unpickle: not saved, as an env that does not pickle
    try:
        copied = _simulator_states(copy)
        return len(copied) == len(states) and all(np.array_equal(a, b) for a, b in zip(states, copied, strict=True))
    finally:
        for env in copy if isinstance(copy, list) else [copy]:
            env.close()


def _simulator_states(envs: VecEnv | list[VecEnv]) -> list[np.ndarray]:
    """The full integration state (``mj_getState``: time, qpos, qvel, act, ctrl, mocap, warm start, ...)
    of every MuJoCo simulator in ``envs`` (a VecEnv or a list of them)."""
    mujoco = sys.modules.get("mujoco")
    if mujoco is None:  # no MuJoCo env can exist without the module loaded
        return []
    states = []
    for vec_env in envs if isinstance(envs, list) else [envs]:
        for env in vec_env.get_attr("unwrapped"):
            model, data = getattr(env, "model", None), getattr(env, "data", None)
            if isinstance(model, mujoco.MjModel) and isinstance(data, mujoco.MjData):
                spec = mujoco.mjtState.mjSTATE_INTEGRATION
                state = np.empty(mujoco.mj_stateSize(model, spec))
                mujoco.mj_getState(model, data, state, spec)
                states.append(state)
    return states


def _replace_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def latest_checkpoint(root: Path, run_id: str) -> Path | None:
    """The newest complete checkpoint of ``run_id`` under ``root``, if any."""
    pointer = root / run_id / LATEST
    if not pointer.is_file():
        return None
    directory = root / run_id / pointer.read_text().strip()
    if not directory.is_dir() and directory.name.startswith(".") and directory.name.endswith(STAGING_SUFFIX):
        # Killed after renaming a replacing checkpoint into place but before pointing `latest` at it.
        directory = directory.with_name(directory.name[1 : -len(STAGING_SUFFIX)])
    return directory


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
