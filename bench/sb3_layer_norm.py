"""Plain SB3 with the LayerNorms of crl's ``LayerNorm()``: the reference that does the same arithmetic.

The throughput table's ``crl_ln_redo`` agent is crl with ``LayerNorm()`` and ``ReDo()``. Against plain
SB3 its ratio includes LayerNorm's own computation, which no hot-path shortcut removes. The ``sb3_ln``
agent is plain SB3 (its algorithm, policy and vec env) whose networks get the same LayerNorm layers in
the same places, so ``crl_ln_redo`` against ``sb3_ln`` compares the same arithmetic, with ReDo's
checks and recycling on crl's side. Without ReDo, crl's ``LayerNorm()`` run and this one train the
same parameters, bit for bit (``tests/test_throughput_bench.py``).
"""

from __future__ import annotations

import torch as th
from stable_baselines3 import SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.torch_layers import NatureCNN
from torch import nn

from crl.policies.layers import ArchitectureOptions

PRE_LAYER_NORM = ArchitectureOptions(layer_norm="pre")
"""What ``crl.interventions.LayerNorm()`` asks of crl's policies: a LayerNorm before every activation."""


def with_layer_norm(model: BaseAlgorithm) -> BaseAlgorithm:
    """``model`` (plain SB3, not trained yet) with a LayerNorm before every activation of its networks.

    Each stack is rewritten in place by crl's own rewrite, as crl's policies rewrite theirs when they
    are built: a NatureCNN's convolutions (normalised over channels, height and width) and its linear
    layer, and every other ``nn.Sequential`` (DQN's Q-network, SAC's actor and critics, PPO's policy and
    value networks). A LayerNorm starts as ones and zeros, so target networks stay equal to their
    online networks. The optimizers are made again, with the same settings, over their modules'
    parameters in module order, as crl's are made after its rewrite.
    """
    extractors = [module for module in model.policy.modules() if isinstance(module, NatureCNN)]
    for extractor in extractors:
        _rewrite_nature_cnn(extractor, model.observation_space.shape)  # type: ignore[arg-type]
    rewritten = [stack for extractor in extractors for stack in (extractor.cnn, extractor.linear)]
    for module in list(model.policy.modules()):
        if type(module) is nn.Sequential and all(module is not stack for stack in rewritten):
            PRE_LAYER_NORM.rewrite(module)
    for owner, attribute in _optimizers(model):
        optimizer = getattr(owner, attribute)
        setattr(owner, attribute, type(optimizer)(_optimized_parameters(owner, optimizer), **optimizer.defaults))
    return model


def _rewrite_nature_cnn(extractor: NatureCNN, observation_shape: tuple[int, ...]) -> None:
    example = th.zeros((1, *observation_shape))
    PRE_LAYER_NORM.rewrite(extractor.cnn, example)
    with th.no_grad():
        PRE_LAYER_NORM.rewrite(extractor.linear, extractor.cnn(example))


def _optimizers(model: BaseAlgorithm) -> list[tuple[nn.Module, str]]:
    """(module holding an optimizer, its attribute) of each of the model's optimizers."""
    if isinstance(model, SAC):
        return [(model.policy.actor, "optimizer"), (model.policy.critic, "optimizer")]
    return [(model.policy, "optimizer")]


def _optimized_parameters(module: nn.Module, optimizer: th.optim.Optimizer) -> list[nn.Parameter]:
    """The parameters of ``module`` that ``optimizer`` updates, with the LayerNorms of their stacks, in module order."""
    updated = {parameter for group in optimizer.param_groups for parameter in group["params"]}
    new_layer_norms = {
        parameter
        for stack in module.modules()
        if type(stack) is nn.Sequential and any(parameter in updated for parameter in stack.parameters())
        for layer in stack
        if isinstance(layer, nn.LayerNorm)
        for parameter in layer.parameters()
    }
    return [parameter for parameter in module.parameters() if parameter in updated or parameter in new_layer_norms]
