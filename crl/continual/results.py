"""The record of one run through a task sequence: a performance matrix, tasks x evaluation points."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ContinualResult:
    """Every task's performance at every evaluation point of one run.

    ``performance[i, j]`` is task ``i``'s performance (success rate or mean return, see ``measure``)
    at the evaluation made after ``eval_steps[j]`` environment steps of the whole sequence. Task ``i``
    is trained on the steps ``(task_starts[i], task_ends[i]]``; the loop evaluates at every task's end.

    :param sequence: the sequence's name
    :param task_names: one name per task, in training order
    :param budgets: environment steps per task
    :param measure: ``"success_rate"`` or ``"mean_return"``
    :param eval_steps: global environment step of each evaluation point, increasing
    :param performance: array of shape ``(n_tasks, n_points)``
    :param seed: the run's seed, if known
    """

    sequence: str
    task_names: tuple[str, ...]
    budgets: tuple[int, ...]
    measure: str
    eval_steps: np.ndarray
    performance: np.ndarray
    seed: int | None = None
    _ends: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "task_names", tuple(self.task_names))
        object.__setattr__(self, "budgets", tuple(int(budget) for budget in self.budgets))
        object.__setattr__(self, "eval_steps", np.asarray(self.eval_steps, dtype=np.int64))
        object.__setattr__(self, "performance", np.asarray(self.performance, dtype=np.float64))
        object.__setattr__(self, "_ends", np.cumsum(self.budgets, dtype=np.int64))
        n_tasks, n_points = len(self.task_names), len(self.eval_steps)
        if len(self.budgets) != n_tasks:
            raise ValueError(f"budgets has {len(self.budgets)} entries for {n_tasks} tasks")
        if self.performance.shape != (n_tasks, n_points):
            raise ValueError(
                f"performance has shape {self.performance.shape}, expected (n_tasks, n_points) = {(n_tasks, n_points)}"
            )
        if n_points and np.any(np.diff(self.eval_steps) <= 0):
            raise ValueError(f"eval_steps must increase, got {self.eval_steps.tolist()}")

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    @property
    def task_ends(self) -> np.ndarray:
        """Global step at which each task's training ends."""
        return self._ends

    @property
    def task_starts(self) -> np.ndarray:
        """Global step at which each task's training starts."""
        return self._ends - np.asarray(self.budgets, dtype=np.int64)

    def column_at(self, step: int) -> int:
        """Index of the evaluation point made at global step ``step``."""
        (matches,) = np.nonzero(self.eval_steps == step)
        if matches.size == 0:
            raise ValueError(f"no evaluation at step {step}; evaluation steps: {self.eval_steps.tolist()}")
        return int(matches[0])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``from_dict`` inverts it)."""
        return {
            "sequence": self.sequence,
            "task_names": list(self.task_names),
            "budgets": list(self.budgets),
            "measure": self.measure,
            "eval_steps": self.eval_steps.tolist(),
            "performance": self.performance.tolist(),
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContinualResult:
        return cls(**data)

    def save(self, path: str | Path) -> None:
        """Write the result as JSON (``.json``) or as a numpy archive (``.npz``)."""
        path = Path(path)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict(), indent=1))
        elif path.suffix == ".npz":
            data = self.to_dict()
            arrays = {key: np.asarray(np.nan if value is None else value) for key, value in data.items()}
            np.savez(path, **arrays)  # type: ignore[arg-type]
        else:
            raise ValueError(f"save path must end in .json or .npz, got {str(path)!r}")

    @classmethod
    def load(cls, path: str | Path) -> ContinualResult:
        """Read a result written by :meth:`save`."""
        path = Path(path)
        if path.suffix == ".json":
            return cls.from_dict(json.loads(path.read_text()))
        if path.suffix == ".npz":
            with np.load(path) as archive:
                data = {key: archive[key] for key in archive.files}
            seed = data.pop("seed")
            return cls(
                sequence=str(data["sequence"]),
                task_names=tuple(str(name) for name in data["task_names"]),
                budgets=tuple(int(budget) for budget in data["budgets"]),
                measure=str(data["measure"]),
                eval_steps=data["eval_steps"],
                performance=data["performance"],
                seed=None if np.isnan(seed) else int(seed),
            )
        raise ValueError(f"load path must end in .json or .npz, got {str(path)!r}")
