"""The metrics monitor: the plasticity suite computed during training and logged through SB3's logger.

:class:`MetricsMonitor` is a :class:`~crl.hooks.TrainingHook` that ``crl.DQN/PPO/SAC/QRDQN/TQC`` add after the
interventions when given ``metrics=``. It acts only at the ``train()`` calls that start once
``every`` environment steps have passed since the last measurement; at every other call its hooks
return after one comparison, and nothing of it runs in the per-environment-step path.

At a measurement:

- during ``train()``, the gradient norm of every gradient step is read from the real update
  (``step.grad_norm``: the value returned by the clipping where the algorithm clips, else one
  total-norm computation) and averaged per loss; a loss that ``train()`` did not optimise (CrossQ's
  actor, updated every ``policy_delay``-th gradient step) is read at its next gradient step in the
  same ``learn()`` call, and recorded then;
- after ``train()``, the fixed probe batch (drawn at the first measurement, see
  :func:`~crl.metrics.probe_batch.draw_probe_batch`) goes through the networks in eval mode for the
  feature metrics, the weights are compared with the previous measurement's, and, on their own
  cadences, the plasticity probe, the Hessian's top eigenvalue and GraMa are computed;
- every value is recorded with ``algo.logger.record`` (it reaches every output format at SB3's next
  ``dump``, or at the end of ``learn()`` if SB3 does not dump again) and kept in
  :attr:`MetricsMonitor.latest`.

Nothing a measurement does reaches training: no optimizer, gradient or train/eval flag is left
changed, the probe batch is drawn with a private generator, and every random draw happens on a
forked torch generator, so a run with metrics ends with the same parameters as one without.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import torch as th

from crl.hooks import GradientStep, TrainingHook
from crl.metrics.config import MetricsConfig
from crl.metrics.grama import grama_metrics
from crl.metrics.hessian import training_loss_eigenvalues
from crl.metrics.probe import fresh_copy, network_output, plasticity_probe
from crl.metrics.probe_batch import draw_probe_batch, probe_batch_ready
from crl.metrics.suite import PREFIX, WHOLE, feature_metrics, metric_name, network_parameters, snapshot, weight_metrics

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.type_aliases import PyTorchObs

    from crl.policies.base import ContinualPolicyMixin


class _Cadence:
    """Due at the first check at or after each multiple of ``every`` environment steps (and at the first).

    The steps are the model's ``lifetime_timesteps``, which never restart: the continual loop calls
    ``learn(reset_num_timesteps=True)`` at every task, and each task's first ``train()`` falls on the
    same ``num_timesteps``, so a clock that restarted with it would miss every task after the first.
    """

    def __init__(self, every: int | None) -> None:
        self.every = every
        self.next_at = 0

    def due(self, timesteps: int) -> bool:
        return self.every is not None and timesteps >= self.next_at

    def done(self, timesteps: int) -> None:
        assert self.every is not None
        self.next_at = (timesteps // self.every + 1) * self.every


class MetricsMonitor(TrainingHook):
    """Computes the plasticity metric suite every ``config.every`` environment steps and logs it.

    Its state (the probe batch, the last weights, the cadences) is pickled with the model, so a
    loaded model goes on measuring on the same probe batch.

    :param config: what to compute and how often
    """

    def __init__(self, config: MetricsConfig | None = None) -> None:
        self.config = config if config is not None else MetricsConfig()
        self.latest: dict[str, float] = {}
        """The values of the last measurement, by logged name."""
        self.latest_timesteps: int | None = None
        """``lifetime_timesteps`` at the last measurement: environment steps over every ``learn()`` call."""
        self.measurements = 0
        """How many measurements were taken."""
        self.probe_batch: Any = None
        """The fixed probe batch (SB3 buffer samples), drawn at the first measurement."""
        self._suite = _Cadence(self.config.every)
        self._probe = _Cadence(self.config.plasticity_probe_every)
        self._hessian = _Cadence(self.config.hessian_every)
        self._grama = _Cadence(self.config.grama_every)
        self._measuring = False
        self._grad_norms: dict[str, list[float]] = defaultdict(list)
        self._awaited: set[str] = set()
        """Losses whose ``grad_norm`` the last measurement waits for: its ``train()`` did not optimise them
        (CrossQ's actor, updated every ``policy_delay``-th gradient step)."""
        self._previous_weights: dict[str, list[th.Tensor]] | None = None

    def on_train_start(self, algo: BaseAlgorithm) -> None:
        self._measuring = self._suite.due(algo.lifetime_timesteps) and (  # type: ignore[attr-defined]
            self.probe_batch is not None or probe_batch_ready(algo, self.config.probe_batch_size)
        )

    def after_backward(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        if self._measuring:
            self._grad_norms[step.loss_name].append(step.grad_norm)
        elif self._awaited and step.loss_name in self._awaited:
            # The measurement's norm of a loss its train() did not optimise: this step's, the next one that does.
            self._awaited.remove(step.loss_name)
            name = metric_name(step.loss_name, WHOLE, "grad_norm")
            self.latest[name] = step.grad_norm
            algo.logger.record(name, self.latest[name])

    def on_train_end(self, algo: BaseAlgorithm) -> None:
        if not self._measuring:
            return
        self._measuring = False
        optimised = {loss for loss, norms in self._grad_norms.items() if norms}
        values = self.measure(algo)
        for name, value in values.items():
            algo.logger.record(name, value)
        self._awaited = set(algo.loss_names) - optimised  # type: ignore[attr-defined]

    def on_training_end(self, algo: BaseAlgorithm) -> None:
        self._awaited.clear()  # a norm of the next learn() call would not be this measurement's
        # A measurement after SB3's last dump of this learn() would otherwise never be written.
        if any(name.startswith(f"{PREFIX}/") for name in algo.logger.name_to_value):
            algo.logger.dump(algo.num_timesteps)

    def measure(self, algo: BaseAlgorithm) -> dict[str, float]:
        """Compute the suite now (the regular cadence calls this after ``train()``) and return it."""
        timesteps = algo.lifetime_timesteps  # type: ignore[attr-defined]
        seed = self._seed(algo)
        if self.probe_batch is None:
            self.probe_batch = draw_probe_batch(algo, self.config.probe_batch_size, seed)
        policy: ContinualPolicyMixin = algo.policy  # type: ignore[assignment]
        batch = self.probe_batch
        was_training = policy.training  # type: ignore[attr-defined]
        policy.set_training_mode(False)  # type: ignore[attr-defined]
        try:
            values = feature_metrics(policy, batch.observations, batch.actions, self.config.dormant_tau)
            parameters = network_parameters(policy)
            values.update(weight_metrics(parameters, self._previous_weights))
            self._previous_weights = snapshot(parameters)
            # The norms of the update just measured; a later measure() must not report them again.
            grad_norms, self._grad_norms = self._grad_norms, defaultdict(list)
            values.update(
                {metric_name(loss, WHOLE, "grad_norm"): sum(n) / len(n) for loss, n in grad_norms.items() if n}
            )
            if self._probe.due(timesteps):
                values.update(self._plasticity_probes(algo, seed))
                self._probe.done(timesteps)
            if self._hessian.due(timesteps):
                eigenvalues = training_loss_eigenvalues(algo, batch, self.config.hessian_iterations, seed)
                values.update({metric_name(loss, WHOLE, "hessian_top_eig"): e for loss, e in eigenvalues.items()})
                self._hessian.done(timesteps)
            if self._grama.due(timesteps):
                values.update(grama_metrics(algo, batch, self.config.grama_tau, seed))
                self._grama.done(timesteps)
        finally:
            policy.set_training_mode(was_training)  # type: ignore[attr-defined]
        self._suite.done(timesteps)
        self.latest, self.latest_timesteps = values, timesteps
        self.measurements += 1
        return values

    def _plasticity_probes(self, algo: BaseAlgorithm, seed: int) -> dict[str, float]:
        policy: ContinualPolicyMixin = algo.policy  # type: ignore[assignment]
        return plasticity_probes(
            policy,
            algo.algorithm_family,  # type: ignore[attr-defined]
            self.probe_batch.observations,
            self.probe_batch.actions,
            epochs=self.config.plasticity_probe_epochs,
            batch_size=self.config.plasticity_probe_batch_size or algo.batch_size,  # type: ignore[attr-defined]
            seed=seed,
        )

    def _seed(self, algo: BaseAlgorithm) -> int:
        if self.config.seed is not None:
            return self.config.seed
        return algo.seed if algo.seed is not None else 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A monitor saved before a setting existed gets its default (and the cadence it needs).
        state["config"] = MetricsConfig(**vars(state["config"]))
        state.setdefault("_grama", _Cadence(state["config"].grama_every))
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"MetricsMonitor({self.config!r})"


def plasticity_probes(
    policy: ContinualPolicyMixin,
    algorithm_family: str,
    observations: PyTorchObs,
    actions: th.Tensor | None,
    epochs: int,
    batch_size: int,
    seed: int,
) -> dict[str, float]:
    """``plasticity_probe`` of every trained network, against one fresh policy, by logged name."""
    fresh = fresh_copy(policy, seed)
    return {
        metric_name(network, WHOLE, "plasticity_probe"): plasticity_probe(
            policy,
            network,
            network_output(algorithm_family, network),
            policy._to_tensor(observations),
            None if actions is None else policy._to_tensor(actions),
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            fresh=fresh,
        )
        for network in policy.network_prefixes()
    }
