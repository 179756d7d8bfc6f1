"""Every curriculum shipped in ``curricula/`` validates and states its budget and wall time."""

from pathlib import Path

import pytest
from torch import nn

from crl.config.build import build_model, build_sequence
from crl.config.curriculum import load_curriculum
from crl.continual.continual_world import ContinualWorldSAC
from crl.interventions import AGEM, EWC, SAM, ClonEx, LayerNorm, PackNet, Reset
from crl.policies import MultiHeadTQCPolicy
from crl.policies.layers import CReLU

CURRICULA = sorted((Path(__file__).parents[1] / "curricula").glob("*.yaml"))


def test_curricula_are_shipped() -> None:
    assert {path.stem for path in CURRICULA} >= {
        "default",
        "minatar_switch",
        "space_invaders_modes",
        "freeway_modes",
        "cw10",
        "cw20",
        "cw10_smoke",
        "cw20_ewc",
        "cw20_agem",
        "cw20_packnet",
        "cw10_clonex",
        "minatar_plastic",
    }


def test_minatar_plastic_builds_plastics_ingredients_on_the_minatar_switch() -> None:
    curricula = Path(__file__).parents[1] / "curricula"
    plastic = load_curriculum(curricula / "minatar_plastic.yaml")
    switch = load_curriculum(curricula / "minatar_switch.yaml")
    assert plastic.sequence == switch.sequence and plastic.hyperparameters == switch.hyperparameters
    model = build_model(plastic, build_sequence(plastic), seed=0)
    assert [type(intervention) for intervention in model.interventions] == [LayerNorm, SAM, Reset]
    assert any(isinstance(module, CReLU) for module in model.q_net.modules())
    assert any(isinstance(module, nn.LayerNorm) for module in model.q_net.modules())


@pytest.mark.parametrize("path", CURRICULA, ids=lambda path: path.name)
def test_shipped_curriculum_validates(path: Path) -> None:
    header = path.read_text().split("\n\n")[0].lower()
    assert "budget:" in header and "estimated cpu wall time" in header
    curriculum = load_curriculum(path)
    assert curriculum.sequence.preset is not None or curriculum.sequence.tasks


def test_cw10_smoke_builds_the_reference_agent() -> None:
    curriculum = load_curriculum(Path(__file__).parents[1] / "curricula" / "cw10_smoke.yaml")
    sequence = build_sequence(curriculum)
    model = build_model(curriculum, sequence, seed=0)
    assert isinstance(model, ContinualWorldSAC) and model.seed == 0
    assert model.random_steps == 500 and model.learning_starts == 500 and model.buffer_size == 20_000
    assert model.policy.actor.n_heads == 10 and model.gradient_steps == 50  # the agent's, not SB3's defaults
    assert list(sequence.budgets) == [2000] * 10 and sequence.measure == "success_rate"


def test_cw10_tqc_builds_a_multi_head_tqc_with_cws_first_layer() -> None:
    curriculum = load_curriculum(Path(__file__).parents[1] / "curricula" / "cw10_tqc.yaml")
    model = build_model(curriculum, build_sequence(curriculum), seed=0)
    assert isinstance(model.policy, MultiHeadTQCPolicy) and model.policy.n_heads == 10
    assert model.policy.first_layer == "layer_norm_tanh" and model.policy.critic.qf0[-1].out_features == 10 * 25
    assert curriculum.continual.reset_replay_buffer and curriculum.continual.reset_optimizers


def test_cw20_ewc_adds_ewc_with_cws_coefficient_to_the_reference_agent() -> None:
    curriculum = load_curriculum(Path(__file__).parents[1] / "curricula" / "cw20_ewc.yaml")
    model = build_model(curriculum, build_sequence(curriculum), seed=0)
    assert isinstance(model, ContinualWorldSAC) and model.policy.actor.n_heads == 20
    (ewc,) = model.interventions
    assert isinstance(ewc, EWC) and ewc.coef == 1e4 and not ewc.critic
    assert (ewc.importance_batches, ewc.importance_batch_size) == (10, 256)


def test_cw20_agem_adds_agem_with_cws_settings_to_the_reference_agent() -> None:
    curriculum = load_curriculum(Path(__file__).parents[1] / "curricula" / "cw20_agem.yaml")
    model = build_model(curriculum, build_sequence(curriculum), seed=0)
    assert isinstance(model, ContinualWorldSAC) and model.policy.actor.n_heads == 20
    (agem,) = model.interventions
    assert isinstance(agem, AGEM) and (agem.episodic_mem_per_task, agem.episodic_batch_size) == (10_000, 128)
    assert curriculum.continual.reset_replay_buffer  # the memory is drawn before each task's buffer is emptied


def test_cw20_packnet_shares_the_actor_out_over_the_twenty_tasks() -> None:
    curriculum = load_curriculum(Path(__file__).parents[1] / "curricula" / "cw20_packnet.yaml")
    sequence = build_sequence(curriculum)
    model = build_model(curriculum, sequence, seed=0)
    (packnet,) = model.interventions
    assert isinstance(packnet, PackNet) and (packnet.n_tasks, packnet.retrain_steps) == (None, 100_000)
    assert not packnet.critic
    packnet.check_sequence(len(sequence))  # what learn_continual does before training
    assert packnet.n_tasks == 20


def test_cw10_clonex_adds_cloning_and_best_return_exploration_to_the_reference_agent() -> None:
    curriculum = load_curriculum(Path(__file__).parents[1] / "curricula" / "cw10_clonex.yaml")
    model = build_model(curriculum, build_sequence(curriculum), seed=0)
    assert isinstance(model, ContinualWorldSAC) and model.policy.actor.n_heads == 10 and model.random_steps == 10_000
    (clonex,) = model.interventions
    assert isinstance(clonex, ClonEx) and (clonex.coef, clonex.exploration) == (100.0, "best_return")
    assert (clonex.episodic_mem_per_task, clonex.episodic_batch_size, clonex.critic) == (10_000, 128, False)
    assert curriculum.continual.reset_replay_buffer  # the memory is drawn before each task's buffer is emptied
