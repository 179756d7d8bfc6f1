"""Plasticity injection (Nikishin et al. 2023, "Deep RL with Plasticity Injection")."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, PrivateAttr, model_validator
from torch import nn

from crl.interventions.base import Intervention, InterventionError
from crl.interventions.network import (
    check_hidden_layers,
    check_single_chain,
    fresh_policy,
    put_head,
    take_head,
    target_networks,
    unit_layers,
)
from crl.interventions.redo import check_networks
from crl.optim import add_parameters, algorithm_optimizers, optimizer_of
from crl.policies.layers import InjectedHead

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm


class PlasticityInjection(Intervention):
    """Once, replace each network's head ``h`` by ``h_old(x) + h_new(x) - h_new_frozen(x)``.

    ``h_old`` is the trained head (frozen from then on), ``h_new`` a fresh head with the algorithm's
    initialisation (trained, registered with the optimizer of ``h_old``), ``h_new_frozen`` its frozen
    copy. At injection the outputs are unchanged and the number of trainable parameters is the same;
    the encoder keeps receiving gradients through every branch. Target networks get the same
    structure, with their own ``h_old`` and copies of ``h_new``. Used as a diagnostic: if injection
    improves return, the agent had lost plasticity.

    The structure is re-created in ``on_setup`` when a saved model that was injected is loaded (SB3
    builds the networks before it loads their parameters). Compose with care: ReDo and continual
    backprop do not recycle units inside an injected head.

    :param at_step: inject after the first ``train()`` at or past this environment step of the whole
        training (``lifetime_timesteps``: over every ``learn()`` call, so over a task sequence)
    :param at_task: inject when this task starts (``algo.start_task``)
    :param head_layers: k, the number of final layers forming the head; k > 1 needs them to be the
        end of one ``nn.Sequential`` (DQN's and SAC critics' MLPs; not PPO's or SAC's actor)
    :param networks: the trained networks to inject into (default: all)
    """

    name = "plasticity_injection"
    needs_crl_policy: ClassVar[bool] = True

    at_step: int | None = Field(default=None, gt=0)
    at_task: int | None = Field(default=None, ge=0)
    head_layers: int = Field(default=1, gt=0)
    networks: list[str] | None = None

    _injected: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _one_moment(self) -> PlasticityInjection:
        if (self.at_step is None) == (self.at_task is None):
            raise ValueError(
                f"give exactly one of at_step, at_task (got at_step={self.at_step}, at_task={self.at_task})"
            )
        return self

    def on_setup(self, algo: BaseAlgorithm) -> None:
        check_networks(self.name, self.networks, algo)
        heads = self._head_paths(algo)
        if self._injected:  # a loaded model: rebuild the structure its saved parameters have
            self._inject(algo, heads, fresh=False)

    def on_train_end(self, algo: BaseAlgorithm) -> None:
        if self.at_step is not None and not self._injected and algo.lifetime_timesteps >= self.at_step:  # type: ignore[attr-defined]
            self.inject(algo)

    def on_task_start(self, algo: BaseAlgorithm, task_id: int) -> None:
        if self.at_task == task_id and not self._injected:
            self.inject(algo)

    def inject(self, algo: BaseAlgorithm) -> None:
        """Inject now."""
        self._inject(algo, self._head_paths(algo), fresh=True)
        self._injected = True
        self.record(algo, "injected", 1)

    def _head_paths(self, algo: BaseAlgorithm) -> list[tuple[str, int]]:
        """``(path, k)`` per head: a module path and, for k > 1, the number of Sequential items replaced."""
        policy = algo.policy
        paths = {id(module): name for name, module in policy.named_modules()}
        heads: list[tuple[str, int]] = []
        networks = self.networks or list(policy.network_prefixes())  # type: ignore[operator]
        check_hidden_layers(self.name, policy, networks, "an encoder below the head it replaces")  # type: ignore[arg-type]
        for network in networks:
            layers = unit_layers(policy, [network])  # type: ignore[arg-type]
            # The last hidden layer's outgoing layers are the head; k > 1 also replaces k - 1 hidden layers.
            check_single_chain(self.name, policy, layers[max(len(layers) - self.head_layers + 1, 0) :])
            outputs = [paths[id(module)] for module in layers[-1].outgoing] if layers else []
            # A layer shared with another network (PPO's CNN with net_arch=[]) is read by its heads too.
            own = policy.output_layers().get(network, [])  # type: ignore[operator]
            outputs = [path for path in outputs if path in own] if own else outputs
            if self.head_layers == 1:
                heads.extend((path, 1) for path in outputs if (path, 1) not in heads)
                continue
            first = layers[-(self.head_layers - 1)].incoming if len(layers) >= self.head_layers - 1 else None
            parent_path = outputs[0].rpartition(".")[0] if len(outputs) == 1 else ""
            parent = policy.get_submodule(parent_path) if parent_path else None
            if first is None or not isinstance(parent, nn.Sequential) or first not in list(parent):
                raise InterventionError(
                    f"intervention 'plasticity_injection': head_layers={self.head_layers} does not fit network "
                    f"{network!r}: its last {self.head_layers} layers are not the end of one nn.Sequential; "
                    "use head_layers=1"
                )
            start = list(parent).index(first)
            heads.append((f"{parent_path}.{start}", len(parent) - start))
        return heads

    def _inject(self, algo: BaseAlgorithm, heads: list[tuple[str, int]], fresh: bool) -> None:
        policy = algo.policy
        source = fresh_policy(policy) if fresh else policy
        optimizers = algorithm_optimizers(algo)
        for path, length in heads:
            old = take_head(policy, path, length)
            new = copy.deepcopy(take_head(source, path, length))
            owner = optimizer_of(optimizers, next(iter(old.parameters())))
            head = InjectedHead(old, new)
            put_head(policy, path, length, head)
            if owner is not None:
                add_parameters(owner, new.parameters())
            root, _, rest = path.partition(".")
            targets = target_networks(policy)
            if root in targets and hasattr(policy, targets[root]):
                target_path = f"{targets[root]}.{rest}"
                target_old = take_head(policy, target_path, length)
                put_head(policy, target_path, length, InjectedHead(target_old, copy.deepcopy(new)))
