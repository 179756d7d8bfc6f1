"""Interventions together: composition, determinism, save/load and resuming, CReLU widths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch as th
from torch import nn

import crl
from crl.interventions import (
    AGEM,
    EWC,
    MAS,
    PFO,
    SAM,
    TRAC,
    AdaptiveReplayRatio,
    ClonEx,
    ContinualBackprop,
    L2Init,
    L2Previous,
    LayerNorm,
    NormalizeAndProject,
    PackNet,
    Parseval,
    PlasticityInjection,
    RandomShift,
    ReDo,
    ReGraMa,
    Reset,
    ResetOptimizer,
    ShrinkPerturb,
    WeightClipping,
    WeightDecay,
    registered_interventions,
)
from crl.interventions.agem import EpisodicMemory

PPO_KWARGS = dict(n_steps=128, batch_size=64, seed=0)
DQN_KWARGS = dict(learning_starts=100, train_freq=1, seed=0)
SAC_KWARGS = dict(learning_starts=100, batch_size=32, policy_kwargs=dict(net_arch=[16]), seed=0)
FAMILIES = {"DQN": ("CartPole-v1", DQN_KWARGS), "PPO": ("CartPole-v1", PPO_KWARGS), "SAC": ("Pendulum-v1", SAC_KWARGS)}


def test_layer_norm_weight_decay_redo_and_pfo_compose_in_one_ppo_run() -> None:
    interventions = [LayerNorm(), WeightDecay(weight_decay=1e-3), ReDo(every=128, tau=0.5), PFO(coef=1.0)]
    model = crl.PPO("MlpPolicy", "CartPole-v1", interventions=interventions, **PPO_KWARGS)
    model.learn(512)
    logged = model.logger.name_to_value
    assert "interventions/pfo/loss" in logged
    assert interventions[2]._total > 0  # tau 0.5 recycles some units
    assert sum(isinstance(m, nn.LayerNorm) for m in model.policy.modules()) == 4
    assert all(th.isfinite(p).all() for p in model.policy.parameters())


def _dqn_run(seed: int) -> list[th.Tensor]:
    interventions = [
        ReDo(every=100, tau=0.5),
        ShrinkPerturb(every=150),
        ContinualBackprop(maturity=20, replacement_rate=0.01),
    ]
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=interventions, **{**DQN_KWARGS, "seed": seed})
    model.learn(300)
    return [p.detach().clone() for p in model.policy.parameters()]


def test_same_seed_same_run_and_another_seed_another_run() -> None:
    first, again, other = _dqn_run(0), _dqn_run(0), _dqn_run(1)
    assert all(th.equal(p, q) for p, q in zip(first, again, strict=True))
    assert not all(th.equal(p, q) for p, q in zip(first, other, strict=True))


# Each intervention configured so that it has acted (and holds state) within a short run.
CASES = {
    "weight_decay": ("DQN", WeightDecay()),
    "l2_init": ("DQN", L2Init()),
    "pfo": ("PPO", PFO()),
    "reset": ("DQN", Reset(parts="head", every=100)),
    "shrink_perturb": ("DQN", ShrinkPerturb(every=100)),
    "redo": ("DQN", ReDo(every=100, tau=0.5)),
    "regrama": ("SAC", ReGraMa(every=100, tau=0.5)),
    "plasticity_injection": ("DQN", PlasticityInjection(at_step=150)),
    "continual_backprop": ("DQN", ContinualBackprop(maturity=20, replacement_rate=0.01)),
    "adaptive_replay_ratio": ("DQN", AdaptiveReplayRatio(check_every=2, gap=1.0)),
    "reset_optimizer": ("DQN", ResetOptimizer(every=100)),
    "layer_norm": ("DQN", LayerNorm()),
    "normalize_and_project": ("SAC", NormalizeAndProject(every=2)),
    "random_shift": ("DQN", RandomShift()),
    "l2_previous": ("DQN", L2Previous()),
    "ewc": ("PPO", EWC(critic=True, importance_batches=2, importance_batch_size=16)),
    "mas": ("DQN", MAS(importance_batches=2, importance_batch_size=16)),
    "agem": ("PPO", AGEM(episodic_mem_per_task=50, episodic_batch_size=16)),
    "packnet": ("DQN", PackNet(n_tasks=3, retrain_steps=10)),
    "clonex": ("SAC", ClonEx(exploration="uniform", episodic_mem_per_task=50, episodic_batch_size=16)),
    "weight_clipping": ("SAC", WeightClipping(kappa=1.0)),
    "parseval": ("PPO", Parseval()),
    "sam": ("SAC", SAM()),
    "trac": ("SAC", TRAC()),
}
IMAGES = {"random_shift"}
TASK_END = {"l2_previous", "ewc", "mas", "agem", "packnet", "clonex"}
"""Cases that act at a task's end (consolidation, episodic memory, pruning), called after the run."""
"""Cases that need image observations (a small random-frame env with a CNN policy)."""


def test_every_registered_intervention_is_covered() -> None:
    assert set(CASES) == {name for name in registered_interventions() if not name.startswith("test_")}


@pytest.mark.parametrize("name", list(CASES))
def test_state_survives_save_load_and_resuming(name: str, tmp_path: Path, image_env) -> None:
    family, intervention = CASES[name]
    env_id, kwargs = FAMILIES[family]
    policy, env = ("CnnPolicy", image_env((36, 36, 1))) if name in IMAGES else ("MlpPolicy", env_id)
    model = getattr(crl, family)(policy, env, interventions=[intervention], **kwargs)
    model.learn(300)
    if name in TASK_END:
        model.end_task(0)
    path = tmp_path / "model.zip"
    model.save(path)
    loaded = getattr(crl, family).load(path, env=model.get_env())
    restored = loaded.interventions[0]
    assert type(restored) is type(intervention) and restored.model_dump() == intervention.model_dump()
    for key, value in (intervention.__pydantic_private__ or {}).items():
        if key not in (*type(intervention).transient, "_owner"):  # the owner is the loading model
            _assert_same(getattr(restored, key), value, key)
    if family == "PPO":
        obs = th.as_tensor(model.rollout_buffer.observations[:8])
        assert th.equal(loaded.policy.predict_values(obs), model.policy.predict_values(obs))
    elif family == "SAC":
        obs = th.as_tensor(model.replay_buffer.observations[:8, 0])
        assert th.equal(loaded.actor(obs, deterministic=True), model.actor(obs, deterministic=True))
    else:
        obs = th.as_tensor(model.replay_buffer.observations[:8, 0])
        assert th.equal(loaded.q_net(obs), model.q_net(obs))
    loaded.learn(200, reset_num_timesteps=False)  # resumes
    assert loaded.num_timesteps >= model.num_timesteps + 200


def _assert_same(restored: object, original: object, key: str) -> None:
    if isinstance(original, th.Tensor):
        assert isinstance(restored, th.Tensor) and th.equal(restored, original), key
    elif isinstance(original, th.Generator):
        assert isinstance(restored, th.Generator) and th.equal(restored.get_state(), original.get_state()), key
    elif isinstance(original, dict):
        assert isinstance(restored, dict) and restored.keys() == original.keys(), key
        for sub in original:
            _assert_same(restored[sub], original[sub], f"{key}.{sub}")
    elif isinstance(original, list) and original and isinstance(original[0], th.Tensor):
        assert len(restored) == len(original), key  # type: ignore[arg-type]
    elif isinstance(original, tuple):  # e.g. SB3's buffer samples in A-GEM's memory
        assert type(restored) is type(original), key
        for index, (kept, given) in enumerate(zip(restored, original, strict=True)):  # type: ignore[call-overload]
            _assert_same(kept, given, f"{key}[{index}]")
    elif isinstance(original, EpisodicMemory):
        assert isinstance(restored, EpisodicMemory) and len(original) > 0, key
        _assert_same(restored.samples, original.samples, f"{key}.samples")
    else:
        assert restored == original, key


def test_crelu_halve_width_keeps_the_width_each_layer_passes_on() -> None:
    plain = crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[64, 64]))
    crelu = crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[64, 64], activation="crelu"))
    halved = crl.DQN(
        "MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[64, 64], activation="crelu", crelu_halve_width=True)
    )
    shapes = [tuple(m.weight.shape) for m in halved.q_net.q_net if isinstance(m, nn.Linear)]
    assert shapes == [(32, 4), (32, 64), (2, 64)]
    count = [sum(p.numel() for p in m.q_net.parameters()) for m in (plain, crelu, halved)]
    assert count == [4610, 8834, 2370]
    assert halved.q_net(th.zeros(3, 4)).shape == (3, 2)
    with pytest.raises(ValueError, match="crelu_halve_width=True needs even hidden widths"):
        crl.DQN(
            "MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[63], activation="crelu", crelu_halve_width=True)
        )
    with pytest.raises(ValueError, match="crelu_halve_width=True needs activation='crelu'"):
        crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(crelu_halve_width=True))
