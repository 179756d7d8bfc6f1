"""When event-like interventions (resets, shrink & perturb, optimizer resets) act."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, PrivateAttr, model_validator

from crl.interventions.base import Intervention

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm


class ScheduledIntervention(Intervention):
    """An intervention that acts at scheduled moments: every N env steps, at listed steps, at task boundaries.

    Step-based moments count the environment steps of the model's whole training
    (``lifetime_timesteps``: over every ``learn()`` call, so over a task sequence whose loop restarts
    ``num_timesteps`` at each task). They are checked after each ``train()`` call (so the next collection already uses
    the changed networks, and PPO never trains on a rollout collected by a different network); their
    resolution is the algorithm's training frequency. A task boundary is the start of every task but
    the first one started (``algo.start_task``). Subclasses implement :meth:`apply`.

    :param every: act every ``every`` environment steps (``None``: never)
    :param at_steps: act once when the environment-step count reaches each of these
    :param at_task_boundaries: act when a new task starts
    """

    every: int | None = Field(default=None, gt=0)
    at_steps: list[int] = Field(default_factory=list)
    at_task_boundaries: bool = True

    _periods_done: int = PrivateAttr(default=0)
    _last_timesteps: int = PrivateAttr(default=0)
    _tasks_started: int = PrivateAttr(default=0)
    _events: int = PrivateAttr(default=0)

    @model_validator(mode="after")
    def _check_steps(self) -> ScheduledIntervention:
        if any(step <= 0 for step in self.at_steps):
            raise ValueError(f"at_steps={self.at_steps} must hold positive environment-step counts")
        return self

    def apply(self, algo: BaseAlgorithm, reason: str) -> None:
        """Act now. ``reason`` is ``"every"``, ``"at_steps"`` or ``"task"``."""
        raise NotImplementedError

    def _act(self, algo: BaseAlgorithm, reason: str) -> None:
        self.apply(algo, reason)
        self._events += 1
        self.record(algo, "events", self._events)

    def on_train_end(self, algo: BaseAlgorithm) -> None:
        now = algo.lifetime_timesteps  # type: ignore[attr-defined]
        due = None
        if self.every is not None and now // self.every > self._periods_done:
            self._periods_done = now // self.every
            due = "every"
        if any(self._last_timesteps < step <= now for step in self.at_steps):
            due = due or "at_steps"
        self._last_timesteps = now
        if due is not None:
            self._act(algo, due)

    def on_task_start(self, algo: BaseAlgorithm, task_id: int) -> None:
        if self.at_task_boundaries and self._tasks_started > 0:
            self._act(algo, "task")
        self._tasks_started += 1
