"""Which task head explores a new task: the exploration of ClonEx-SAC (Wolczyk et al. 2022).

Continual World's SAC takes uniformly random actions for the first steps of every task. Wolczyk et
al. ("Disentangling Transfer in Continual Reinforcement Learning", NeurIPS 2022) let the policy of an
earlier task act instead: each warm-up episode of a new task is played by one task head of a
multi-head policy, chosen by a rule (``kind``). Their best rule, ``best_return``, plays each earlier
task's head once and then the head whose episodes returned the most on the new task. The rules are
those of the authors' ``ExplorationHelper``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

ExplorationKind = Literal[
    "uniform", "current", "previous", "uniform_previous", "uniform_previous_or_current", "best_return", "best_success"
]
"""``uniform``: random actions (Continual World's, no head acts); ``current``: the new task's own head;
``previous``: the last task's head; ``uniform_previous``: an earlier task's head drawn uniformly per
episode; ``uniform_previous_or_current``: the same, the new task's head among them; ``best_return``
and ``best_success``: every earlier task's head once, then the head with the highest mean episode
return (success) on the new task so far."""


class HeadExploration:
    """Chooses the head that plays each warm-up episode of one task, and keeps what the episodes scored.

    Random choices draw from numpy's global generator, as training's other random choices do.

    :param kind: the rule (:data:`ExplorationKind`, not ``uniform``)
    :param earlier: the heads of the tasks learned before this one, in their order
    :param current: this task's head
    """

    def __init__(self, kind: ExplorationKind, earlier: Sequence[int], current: int) -> None:
        if kind == "uniform" or not earlier:
            raise ValueError(f"exploration kind {kind!r} with earlier heads {list(earlier)}: no head explores")
        self.kind = kind
        self.earlier = list(earlier)
        self.current = current
        self.returns: dict[int, list[float]] = {head: [] for head in [*self.earlier, current]}
        self.successes: dict[int, list[bool]] = {head: [] for head in self.returns}

    def choose(self) -> int:
        """The head that plays the next episode."""
        if self.kind == "current":
            return self.current
        if self.kind == "previous":
            return self.earlier[-1]
        if self.kind == "uniform_previous":
            return self.earlier[np.random.randint(len(self.earlier))]
        if self.kind == "uniform_previous_or_current":
            candidates = [*self.earlier, self.current]
            return candidates[np.random.randint(len(candidates))]
        untried = [head for head in self.earlier if not self.returns[head]]
        if untried:
            return untried[0]
        scores = self.returns if self.kind == "best_return" else self.successes
        # The authors sort (score, position) pairs in decreasing order: a tie goes to the later task.
        _, position = max((float(np.mean(scores[head])), position) for position, head in enumerate(self.earlier))
        return self.earlier[position]

    def record(self, head: int, episode_return: float, success: bool) -> None:
        """An episode that ``head`` played ended with ``episode_return`` (and ``success``)."""
        self.returns[head].append(episode_return)
        self.successes[head].append(success)


class ExplorationEpisodes:
    """The head playing each environment's current warm-up episode, and the episode's return so far.

    :param exploration: the task's head choices
    :param n_envs: the number of environments
    """

    def __init__(self, exploration: HeadExploration, n_envs: int) -> None:
        self.exploration = exploration
        self.heads: list[int | None] = [None] * n_envs
        self.returns = np.zeros(n_envs)
        self.successes = np.zeros(n_envs, dtype=bool)

    def heads_for_step(self) -> np.ndarray:
        """The acting head of every environment, choosing one for each episode that starts."""
        for env, head in enumerate(self.heads):
            if head is None:
                self.heads[env] = self.exploration.choose()
        return np.asarray(self.heads)

    def observe(self, rewards: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]]) -> None:
        """Add a step's rewards; an ended episode's score goes to the head that played it."""
        self.returns += rewards
        self.successes |= np.asarray([bool(info.get("success", False)) for info in infos])
        for env in np.flatnonzero(dones):
            head = self.heads[env]
            if head is not None:
                self.exploration.record(head, float(self.returns[env]), bool(self.successes[env]))
            self.heads[env] = None
            self.returns[env], self.successes[env] = 0.0, False
