"""Curriculum files: every malformed file fails before training with one line naming the problem."""

from pathlib import Path

import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import _validate_metric
from stable_baselines3.common.utils import LinearSchedule

import crl
from crl.config import ConfigError
from crl.config.build import build_model, build_sequence
from crl.config.curriculum import (
    apply_overrides,
    load_curriculum,
    safe_dump,
    safe_load,
    set_path,
    task_metric,
    task_name_problem,
)

VALID = """\
algorithm: DQN
policy_options: {net_arch: [32, 32], activation: tanh}
hyperparameters: {learning_rate: lin_0.001, buffer_size: 1000, learning_starts: 50, batch_size: 16}
interventions: [layer_norm, {name: redo, tau: 0.1}]
metrics: {every: 100}
sequence: {preset: cartpole_permuted, options: {n_tasks: 2}, steps_per_task: 200}
evaluation: {every: 100, n_episodes: 2}
seeds: [0, 1]
"""


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _edit(**changes: object) -> str:
    data = yaml.safe_load(VALID)
    data.update(changes)
    return yaml.safe_dump(data)


def _build_error(tmp_path: Path, text: str) -> str:
    """The one-line error of building the model of curriculum ``text`` (written as ``c.yaml``)."""
    curriculum = load_curriculum(_write(tmp_path, text))
    with pytest.raises(ConfigError) as info:
        build_model(curriculum, build_sequence(curriculum), seed=0, source="c.yaml")
    return str(info.value)


def _agent(**changes: object) -> str:
    """A Continual World reference-agent curriculum, with ``changes``."""
    data: dict[str, object] = {
        "algorithm": "SAC",
        "agent": "continual_world_reference",
        "sequence": {"preset": "cw10", "steps_per_task": 100},
    }
    data.update(changes)
    return yaml.safe_dump(data)


def test_a_valid_curriculum_builds_its_sequence_and_model(tmp_path: Path) -> None:
    curriculum = load_curriculum(_write(tmp_path, VALID))
    assert [intervention["name"] for intervention in curriculum.interventions] == ["layer_norm", "redo"]
    assert curriculum.interventions[1]["tau"] == 0.1
    sequence = build_sequence(curriculum)
    assert len(sequence) == 2 and list(sequence.budgets) == [200, 200]
    model = build_model(curriculum, sequence, seed=1)
    assert isinstance(model, crl.DQN) and model.seed == 1
    assert isinstance(model.learning_rate, LinearSchedule) and model.lr_schedule(0.5) == pytest.approx(5e-4)
    assert model.buffer_size == 1000 and model.batch_size == 16
    assert [type(intervention).__name__ for intervention in model.interventions] == ["LayerNorm", "ReDo"]
    assert model.metrics_monitor is not None and model.metrics_monitor.config.every == 100
    assert model.policy_kwargs["activation"] == "tanh"


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    curriculum = load_curriculum(_write(tmp_path, VALID))
    reloaded = load_curriculum(_write(tmp_path, curriculum.to_yaml(), "config.yml"))
    assert reloaded == curriculum
    assert reloaded.tracking.tracking_uri == "sqlite:///mlflow.db"
    assert reloaded.interventions[0] == {"name": "layer_norm", "placement": "pre"}  # defaults made explicit


def test_overrides_are_yaml_scalars_at_a_key_path(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID)
    curriculum = load_curriculum(
        path, ["sequence.steps_per_task=300", "hyperparameters.gamma=0.9", "interventions.1.tau=0.2", "seeds=[3]"]
    )
    assert curriculum.sequence.steps_per_task == 300
    assert curriculum.hyperparameters["gamma"] == 0.9
    assert curriculum.interventions[1]["tau"] == 0.2
    assert curriculum.seeds == [3]
    assert load_curriculum(path, ["interventions.redo.tau=0.3"]).interventions[1]["tau"] == 0.3  # by name
    # a list index as error messages spell it
    assert load_curriculum(path, ["interventions[1].tau=0.4"]).interventions[1]["tau"] == 0.4
    assert load_curriculum(path, ["seeds[0]=7"]).seeds == [7, 1]  # the file has [0, 1]
    assert apply_overrides({}, ["a.b.c=yes"]) == {"a": {"b": {"c": True}}}
    assert apply_overrides({"a": [{"b": [1, 2]}]}, ["a[0].b[1]=5"]) == {"a": [{"b": [1, 5]}]}


def test_an_unknown_key_that_looks_indexed_is_named_as_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_curriculum(_write(tmp_path, _edit(sequence={"steps_per_task": 100, "tasks[0]": {"env": "CartPole-v1"}})))
    assert "unknown key 'sequence.tasks[0]' (did you mean 'tasks'?)" in str(info.value)


MALFORMED: dict[str, tuple[str, str]] = {
    "hyperparameter of the wrong kind": (
        _edit(hyperparameters={"gamma": "high"}),
        "c.yaml: key 'hyperparameters.gamma' = 'high': gamma takes a number (SB3's default: 0.99)",
    ),
    "flag given a number": (
        _edit(hyperparameters={"optimize_memory_usage": 1}),
        "c.yaml: key 'hyperparameters.optimize_memory_usage' = 1: optimize_memory_usage takes true or false",
    ),
    "replay-buffer reset without a replay buffer": (
        _edit(algorithm="PPO", hyperparameters={}, interventions=[], continual={"reset_replay_buffer": True}),
        "c.yaml: key 'continual.reset_replay_buffer' = True: PPO has no replay buffer; allowed only with DQN or SAC",
    ),
    "unknown top-level key": (
        VALID + "seed: 3\n",
        "c.yaml: unknown key 'seed' (did you mean 'seeds'?)",
    ),
    "unknown nested key": (
        _edit(evaluation={"evry": 100}),
        "c.yaml: unknown key 'evaluation.evry' (did you mean 'every'?)",
    ),
    "wrong type": (
        _edit(evaluation={"every": "often"}),
        "c.yaml: key 'evaluation.every' = 'often': Input should be a valid integer",
    ),
    "a list where a mapping of lists was begun": (
        _edit(policy_options={"net_arch": {"pi": [64], "vf": "x"}}),
        "c.yaml: key 'policy_options.net_arch.vf' = 'x': Input should be a valid list",
    ),
    "a value none of a union's scalars takes": (
        _edit(sequence={"tasks": [{"env": "CartPole-v1", "kwargs": {"x": [1]}}], "steps_per_task": 100}),
        "c.yaml: key 'sequence.tasks[0].kwargs.x' = [1]: Input should be a valid boolean, a valid integer, a valid "
        "number or a valid string",
    ),
    "negative budget": (
        _edit(sequence={"tasks": [{"env": "CartPole-v1", "budget": -5}]}),
        "c.yaml: key 'sequence.tasks[0].budget' = -5: Input should be greater than 0",
    ),
    "unknown algorithm": (
        _edit(algorithm="DDPG"),
        "c.yaml: key 'algorithm' = 'DDPG': Input should be 'DQN', 'PPO', 'SAC', 'QRDQN', 'TQC' or 'CrossQ'",
    ),
    "unknown env": (
        _edit(sequence={"tasks": [{"env": "CartPol-v1", "budget": 100}]}),
        "c.yaml: key 'sequence.tasks[0].env' = 'CartPol-v1': not a registered gymnasium env "
        "(did you mean 'CartPole-v1'?)",
    ),
    "unavailable Atari mode": (
        _edit(sequence={"tasks": [{"atari": "Breakout", "mode": 3, "budget": 100}]}),
        "c.yaml: 'sequence.tasks[0]': mode=3 is not available for Breakout; available modes: [0, 4, 8,",
    ),
    "unknown intervention": (
        _edit(interventions=["layer_norms"]),
        "c.yaml: interventions[0]: unknown intervention 'layer_norms'",
    ),
    "unknown intervention parameter": (
        _edit(interventions=[{"name": "redo", "taux": 0.1}]),
        "c.yaml: interventions[0]: intervention 'redo' has no parameter(s) ['taux']",
    ),
    "invalid intervention parameter": (
        _edit(interventions=[{"name": "layer_norm", "placement": "middle"}]),
        "c.yaml: interventions[0]: intervention 'layer_norm': parameter placement='middle'",
    ),
    "unknown hyperparameter": (
        _edit(hyperparameters={"learning_rte": 0.001}),
        "c.yaml: unknown key 'hyperparameters.learning_rte' (did you mean 'learning_rate'?); DQN takes:",
    ),
    "bad schedule string": (
        _edit(hyperparameters={"learning_rate": "linear_0.001"}),
        "c.yaml: key 'hyperparameters.learning_rate' = 'linear_0.001': not a schedule",
    ),
    "schedule where none is taken": (
        _edit(hyperparameters={"batch_size": "lin_32"}),
        "c.yaml: key 'hyperparameters.batch_size' = 'lin_32': batch_size takes no schedule",
    ),
    "unknown preset": (
        _edit(sequence={"preset": "cartpole_permute"}),
        "c.yaml: key 'sequence.preset' = 'cartpole_permute': unknown preset (did you mean 'cartpole_permuted'?)",
    ),
    "unknown preset option": (
        _edit(sequence={"preset": "cartpole_permuted", "options": {"ntasks": 2}}),
        "c.yaml: unknown key 'sequence.options.ntasks' (did you mean 'n_tasks'?)",
    ),
    "metrics value of another type": (
        _edit(metrics={"every": True}),
        "c.yaml: key 'metrics.every' = True: Input should be a valid integer",
    ),
    "float for an integer hyperparameter": (
        _edit(hyperparameters={"batch_size": 64.5}),
        "c.yaml: key 'hyperparameters.batch_size' = 64.5: batch_size takes int (Input should be a valid integer",
    ),
    "string for an optional number": (
        _edit(algorithm="PPO", hyperparameters={"target_kl": "abc"}),
        "c.yaml: key 'hyperparameters.target_kl' = 'abc': target_kl takes float | None (Input should be a valid",
    ),
    "string for an object": (
        _edit(algorithm="SAC", hyperparameters={"action_noise": "bogus"}),
        "c.yaml: key 'hyperparameters.action_noise' = 'bogus': action_noise takes "
        "stable_baselines3.common.noise.ActionNoise | None (an object of that class, which a YAML file cannot give)",
    ),
    "unknown metrics key": (
        _edit(metrics={"evry": 100}),
        "c.yaml: unknown key 'metrics.evry' (did you mean 'every'?)",
    ),
    "unknown policy activation": (
        _edit(policy_options={"activation": "relu6"}),
        "c.yaml: key 'policy_options.activation' = 'relu6': Input should be",
    ),
    "intervention for another algorithm": (
        _edit(algorithm="SAC", hyperparameters={}, interventions=["pfo"]),
        "c.yaml: interventions[0]: 'pfo' does not apply to SAC",
    ),
    "neither preset nor tasks": (
        _edit(sequence={"steps_per_task": 100}),
        "c.yaml: 'sequence' needs exactly one of 'preset' or 'tasks'",
    ),
    "repeated seeds": (
        _edit(seeds=[0, 0]),
        "c.yaml: key 'seeds' = [0, 0]: seeds must be distinct",
    ),
    "YAML syntax error": (
        VALID + "evaluation: {every: 100\n",
        "c.yaml: invalid YAML (line",
    ),
    "python object tag": (
        VALID + "policy: !!python/object/apply:os.system ['echo pwned']\n",
        "c.yaml: invalid YAML (line 9, column 9): could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system'",
    ),
    "reference agent with another algorithm": (
        _agent(algorithm="DQN"),
        "c.yaml: key 'agent' = 'continual_world_reference' is a SAC agent; set 'algorithm: SAC'",
    ),
    "reference agent on another sequence": (
        _agent(sequence={"preset": "cartpole_permuted"}),
        "c.yaml: key 'agent' = 'continual_world_reference' needs 'sequence.preset' in ['cw10', 'cw20']",
    ),
    "reference agent with policy options": (
        _agent(policy_options={"net_arch": [64]}, n_envs=2),
        "c.yaml: key 'agent' = 'continual_world_reference' fixes n_envs, policy_options; remove the key(s)",
    ),
    "reference agent with an unknown hyperparameter": (
        _agent(hyperparameters={"random_step": 10}),
        "c.yaml: unknown key 'hyperparameters.random_step' (did you mean 'random_steps'?)",
    ),
    "unknown agent": (
        _agent(agent="cw_reference"),
        "c.yaml: key 'agent' = 'cw_reference': Input should be 'continual_world_reference'",
    ),
    "number given as a string": (
        _edit(evaluation={"every": "100"}),
        "c.yaml: key 'evaluation.every' = '100': Input should be a valid integer",
    ),
    "step count given as a float": (
        _edit(sequence={"preset": "cartpole_permuted", "steps_per_task": 200.0}),
        "c.yaml: key 'sequence.steps_per_task' = 200.0: Input should be a valid integer",
    ),
    "flag given as a word": (
        _edit(checkpoint={"at_task_end": "yes"}),
        "c.yaml: key 'checkpoint.at_task_end' = 'yes': Input should be a valid boolean",
    ),
    "preset option of the wrong type": (
        _edit(sequence={"preset": "cartpole_permuted", "options": {"n_tasks": "zero"}}),
        "c.yaml: key 'sequence.options.n_tasks' = 'zero': Input should be a valid integer (the preset takes int)",
    ),
    "intervention parameter given as a string": (
        _edit(interventions=[{"name": "redo", "tau": "0.1"}]),
        "c.yaml: key 'interventions[0].tau' = '0.1': Input should be a valid number",
    ),
    "mapping for a hyperparameter that takes none": (
        _edit(hyperparameters={"gamma": {"value": 0.9}}),
        "c.yaml: key 'hyperparameters.gamma' = {'value': 0.9}: gamma takes no mapping; mappings go to *_kwargs keys",
    ),
    "keyword arguments that are not a mapping": (
        _edit(hyperparameters={"replay_buffer_kwargs": 3}),
        "c.yaml: key 'hyperparameters.replay_buffer_kwargs' = 3: replay_buffer_kwargs takes a mapping of arguments",
    ),
    "not a mapping": (
        "- DQN\n- PPO\n",
        "c.yaml: a curriculum is a mapping of keys, got list",
    ),
    "task name MLflow cannot store": (
        _edit(sequence={"tasks": [{"env": "CartPole-v1", "name": "g=10"}], "steps_per_task": 100}),
        "c.yaml: key 'sequence.tasks[0].name' = 'g=10': '=' cannot be in its MLflow metric 'continual/0_g=10'; "
        "a task name may only contain letters, digits, underscores (_), dashes (-), periods (.), spaces",
    ),
    "task name MLflow would read as another path": (
        _edit(sequence={"tasks": [{"env": "CartPole-v1"}, {"env": "CartPole-v1", "name": "a/"}], "steps_per_task": 9}),
        "c.yaml: key 'sequence.tasks[1].name' = 'a/': MLflow reads its metric 'continual/1_a/' as a file path, "
        "which would become 'continual/1_a'",
    ),
    "empty experiment name": (
        _edit(tracking={"experiment": ""}),
        "c.yaml: key 'tracking.experiment' = '': String should have at least 1 character",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_curricula_fail_with_one_line(tmp_path: Path, case: str) -> None:
    text, expected = MALFORMED[case]
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_curriculum(path)
    message = str(info.value).replace(str(tmp_path) + "/", "")
    assert message.startswith(expected), message
    assert "\n" not in message


def test_scientific_notation_is_a_float_and_kwargs_take_a_mapping(tmp_path: Path) -> None:
    text = VALID.replace("learning_rate: lin_0.001", "learning_rate: 1e-3, replay_buffer_kwargs: {}")
    curriculum = load_curriculum(_write(tmp_path, text), ["hyperparameters.gamma=9.9e-1"])
    assert curriculum.hyperparameters["learning_rate"] == 0.001
    assert curriculum.hyperparameters["gamma"] == 0.99
    assert curriculum.hyperparameters["replay_buffer_kwargs"] == {}
    assert load_curriculum(_write(tmp_path, curriculum.to_yaml(), "config.yml")) == curriculum


TRICKY_STRINGS = ["1e3", "+2E-3", ".5e1", "yes", "off", "null", "~", "0x10", "0o17", "010", "1_000", ".inf", "1:30"]
"""Strings that crl's loader reads as another type when written plain (``1e3`` as a float: YAML 1.2's
rule, which PyYAML's dumper does not know)."""


def test_the_resolved_config_keeps_strings_that_look_like_other_types(tmp_path: Path) -> None:
    data = yaml.safe_load(VALID)
    names = [text for text in TRICKY_STRINGS if text not in {"+2E-3", "~", "1:30"}]  # MLflow allows the others
    tasks = [{"env": "CartPole-v1", "name": name} for name in names]
    tasks[0]["kwargs"] = {text: text for text in TRICKY_STRINGS}
    data.update(sequence={"tasks": tasks, "steps_per_task": 100, "name": "1e3"}, tracking={"experiment": "2e5"})
    curriculum = load_curriculum(_write(tmp_path, safe_dump(data)))  # yaml.safe_dump would write 1e3 plain
    assert curriculum.sequence.tasks is not None
    assert [task.name for task in curriculum.sequence.tasks] == names
    reloaded = load_curriculum(_write(tmp_path, curriculum.to_yaml(), "config.yml"))
    assert reloaded == curriculum
    for data in ({"key": TRICKY_STRINGS}, {text: text for text in TRICKY_STRINGS}):
        assert safe_load(safe_dump(data)) == data


@pytest.mark.parametrize(
    "name",
    ["CartPole-v1", "ALE/Pong-v5", "mod:Env-v0", "short episodes", "g9.8-l0.5", "é", "", "...", "a/b",
     "g=10", "(x)", "a,b", "$", "g1e+20", "a//b", "a/./b", "a/../b", "a/", "a/.", "x" * 238, "x" * 239],
)  # fmt: skip
def test_task_names_are_refused_exactly_when_mlflow_refuses_their_metric(name: str) -> None:
    # The installed MLflow's own check: a change of its rule shows here.
    try:
        _validate_metric(task_metric(0, name), 0.0, 0, 0)
        mlflow_refuses = False
    except MlflowException:
        mlflow_refuses = True
    assert (task_name_problem(0, name) is not None) == mlflow_refuses


def test_the_reference_agent_takes_its_protocol_unless_the_file_sets_a_key(tmp_path: Path) -> None:
    text = _agent(hyperparameters={"random_steps": 50}, evaluation={"n_episodes": 2})
    curriculum = load_curriculum(_write(tmp_path, text))
    assert curriculum.evaluation.n_episodes == 2  # the file's
    assert curriculum.evaluation.deterministic is False  # REFERENCE_PROTOCOL's from here on
    assert curriculum.continual.reset_replay_buffer and curriculum.continual.reset_optimizers
    assert load_curriculum(_write(tmp_path, VALID)).continual.reset_replay_buffer is False
    assert load_curriculum(_write(tmp_path, curriculum.to_yaml(), "config.yml")) == curriculum


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^.*nothere\.yaml: no such file$"):
        load_curriculum(tmp_path / "nothere.yaml")


def test_mismatched_spaces_fail_when_the_sequence_is_built(tmp_path: Path) -> None:
    text = _edit(sequence={"tasks": [{"env": "CartPole-v1"}, {"env": "Acrobot-v1"}], "steps_per_task": 100})
    curriculum = load_curriculum(_write(tmp_path, text))
    with pytest.raises(ConfigError) as info:
        build_sequence(curriculum, "c.yaml")
    message = str(info.value)
    assert message.startswith(  # 4 and 6 observation features: no padding of vectors
        "c.yaml: sequence: tasks '0-CartPole-v1' and '1-Acrobot-v1' have observation spaces that cannot be unified: "
        "0-CartPole-v1: Box("
    )
    assert message.endswith("(6,), float32)")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (dict(hyperparameters={"device": "gpu0"}), "c.yaml: DQN: Invalid device string: 'gpu0'"),
        (
            dict(sequence={"preset": "cartpole_permuted", "options": {"env_id": "CartPol-v1"}, "steps_per_task": 100}),
            "c.yaml: sequence: env_id='CartPol-v1': gymnasium cannot make it (NameNotFound: Environment `CartPol` "
            "doesn't exist.",
        ),
        (
            dict(sequence={"preset": "minatar_cycle", "options": {"games": []}, "steps_per_task": 100}),
            "c.yaml: sequence: games=[] names no game; available: ['Asterix', 'Breakout',",
        ),
    ],
)
def test_values_the_builders_refuse_fail_with_one_line(tmp_path: Path, edit: dict, expected: str) -> None:
    curriculum = load_curriculum(_write(tmp_path, _edit(**edit)))
    with pytest.raises(ConfigError) as info:
        build_model(curriculum, build_sequence(curriculum, "c.yaml"), seed=0, source="c.yaml")
    assert str(info.value).startswith(expected) and "\n" not in str(info.value), str(info.value)


def test_a_policy_that_does_not_fit_fails_when_the_model_is_built(tmp_path: Path) -> None:
    curriculum = load_curriculum(_write(tmp_path, _edit(policy="CnnPolicy")))
    with pytest.raises(ConfigError, match=r"^c\.yaml: DQN: ") as info:
        build_model(curriculum, build_sequence(curriculum), seed=0, source="c.yaml")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("seeds", "--set 'seeds': write key.path=value"),
        ("evaluation.every=[1", "--set 'evaluation.every=[1': the value is not valid YAML"),
        ("interventions.5.tau=1", "--set 'interventions.5.tau=1': 'interventions[5]' needs a list index in [0, 2)"),
        ("evaluation.evry=5", "c.yaml: unknown key 'evaluation.evry' (did you mean 'every'?)"),
    ],
)
def test_bad_overrides(tmp_path: Path, override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_curriculum(_write(tmp_path, VALID), [override])
    assert str(info.value).replace(str(tmp_path) + "/", "").startswith(expected), str(info.value)


def test_an_intervention_in_short_form_takes_parameters_by_position_as_by_name() -> None:
    data = {"interventions": ["redo", "layer_norm"]}
    apply_overrides(data, ["interventions.0.tau=0.2", "interventions.layer_norm.placement=post"])
    assert data == {"interventions": [{"name": "redo", "tau": 0.2}, {"name": "layer_norm", "placement": "post"}]}


def test_only_a_name_that_several_items_share_is_sent_to_their_positions() -> None:
    # A missing item has no position either: no hint to use one.
    with pytest.raises(ValueError) as info:
        set_path({"interventions": []}, "interventions.redo.tau", 0.1)
    assert str(info.value) == "'interventions.redo': no item named 'redo' in []"
    with pytest.raises(ValueError, match=r"2 items named 'redo' in \['redo', 'redo'\]; address it by position instead"):
        set_path({"interventions": ["redo", "redo"]}, "interventions.redo.tau", 0.1)


MULTI_HEAD = {
    "policy": "MultiHeadPolicy",
    "policy_options": {"net_arch": [16], "n_quantiles": 5},
    "hyperparameters": {"learning_starts": 50, "batch_size": 16},
    "interventions": [],
    "metrics": None,
    "sequence": {
        "tasks": [{"env": "Pendulum-v1"}, {"env": "Pendulum-v1", "kwargs": {"g": 5.0}}, {"env": "Pendulum-v1"}],
        "task_id_in_obs": True,
        "steps_per_task": 100,
    },
}
"""A TQC curriculum with one head per task id (three tasks)."""


def test_a_multi_head_policy_gets_one_head_per_task_id_unless_set(tmp_path: Path) -> None:
    for algorithm, policy_class in (
        ("TQC", crl.policies.MultiHeadTQCPolicy),
        ("CrossQ", crl.policies.MultiHeadCrossQPolicy),
    ):
        options = MULTI_HEAD["policy_options"] if algorithm == "TQC" else {"net_arch": [16]}
        curriculum = load_curriculum(
            _write(tmp_path, _edit(**{**MULTI_HEAD, "policy_options": options}, algorithm=algorithm))
        )
        model = build_model(curriculum, build_sequence(curriculum), seed=0)
        assert type(model.policy) is policy_class and model.policy.n_heads == 3
        assert model.policy.actor.mu.out_features == 3
    cartpoles = {
        "tasks": [{"env": "CartPole-v1"}, {"env": "CartPole-v1"}],
        "task_id_in_obs": True,
        "steps_per_task": 100,
    }
    curriculum = load_curriculum(_write(tmp_path, _edit(policy="MultiHeadPolicy", sequence=cartpoles)))  # DQN
    model = build_model(curriculum, build_sequence(curriculum), seed=0)
    assert type(model.policy) is crl.policies.MultiHeadDQNPolicy and model.policy.n_heads == 2
    ppo = _edit(policy="MultiHeadPolicy", algorithm="PPO", hyperparameters={"n_steps": 64}, sequence=cartpoles)
    model = build_model(load_curriculum(_write(tmp_path, ppo)), build_sequence(curriculum), seed=0)
    assert type(model.policy) is crl.policies.MultiHeadActorCriticPolicy and model.policy.value_net.out_features == 2
    text = _edit(**{**MULTI_HEAD, "policy_options": {"n_heads": 3, "first_layer": "layer_norm_tanh"}}, algorithm="SAC")
    curriculum = load_curriculum(_write(tmp_path, text))
    model = build_model(curriculum, build_sequence(curriculum), seed=0)
    assert model.policy.n_heads == 3 and model.policy.first_layer == "layer_norm_tanh"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            dict(algorithm="CrossQ", policy="CnnPolicy", interventions=[]),
            "key 'policy' = 'CnnPolicy' is not a policy of CrossQ; allowed: MlpPolicy, MultiHeadPolicy",
        ),
        (
            dict(policy_options={"n_heads": 2}),
            "key 'policy_options.n_heads' is an option of 'policy: MultiHeadPolicy', "
            "not of 'MlpPolicy'; remove it or set the policy",
        ),
        (
            dict(algorithm="SAC", policy_options={"first_layer": "layer_norm_tanh"}, interventions=[]),
            "key 'policy_options.first_layer' is an option of 'policy: MultiHeadPolicy'",
        ),
    ],
)
def test_a_policy_the_algorithm_has_not_or_its_options_elsewhere_are_refused(
    tmp_path: Path, edit: dict, expected: str
) -> None:
    path = _write(tmp_path, _edit(**edit))
    with pytest.raises(ConfigError) as info:
        load_curriculum(path)
    assert str(info.value).startswith(f"{path}: {expected}"), str(info.value)


def test_a_multi_head_policy_on_a_sequence_without_task_ids_fails_when_the_model_is_built(tmp_path: Path) -> None:
    sequence = {**MULTI_HEAD["sequence"], "task_id_in_obs": False}
    assert _build_error(tmp_path, _edit(**{**MULTI_HEAD, "sequence": sequence}, algorithm="SAC")) == (
        "c.yaml: key 'policy' = 'MultiHeadPolicy' chooses a head by the one-hot task id in each "
        "observation, which sequence 'curriculum' does not give; set 'sequence.task_id_in_obs: true'"
    )


@pytest.mark.parametrize("n_heads", [1, 5])
def test_multi_head_policy_options_with_another_number_of_heads_than_task_ids_are_refused(
    tmp_path: Path, n_heads: int
) -> None:
    """The heads are chosen by the last n_heads entries: with 1 every task would train head 0, with 5 the
    choice would read two of Pendulum's observations as task ids."""
    text = _edit(**{**MULTI_HEAD, "policy_options": {"n_heads": n_heads}}, algorithm="SAC")
    assert _build_error(tmp_path, text) == (
        f"c.yaml: key 'policy_options.n_heads' = {n_heads}: the heads are chosen by the last n_heads entries of "
        "each observation, and sequence 'curriculum' gives a one-hot task id of 3; leave n_heads out or set it to 3"
    )


def test_a_preset_takes_the_task_id_and_a_multi_head_policy_with_it(tmp_path: Path) -> None:
    sequence = {"preset": "cartpole_permuted", "options": {"n_tasks": 3}, "steps_per_task": 200, "task_id_in_obs": True}
    curriculum = load_curriculum(_write(tmp_path, _edit(policy="MultiHeadPolicy", sequence=sequence)))
    tasks = build_sequence(curriculum)
    assert tasks.task_id_in_obs and tasks.observation_space.shape == (7,)
    model = build_model(curriculum, tasks, seed=0)
    assert type(model.policy) is crl.policies.MultiHeadDQNPolicy and model.policy.n_heads == 3


def test_a_task_id_beside_atari_frames_takes_a_multi_input_or_multi_head_policy(tmp_path: Path) -> None:
    """Real ALE modes: the frames and the task id are a dict, which MultiInputPolicy and MultiHeadPolicy read."""
    tasks = [{"atari": "Breakout", "mode": mode} for mode in (0, 4)]
    sequence = {"tasks": tasks, "steps_per_task": 100, "task_id_in_obs": True}
    hyperparameters = {"buffer_size": 100, "learning_starts": 50}
    text = _edit(policy="CnnPolicy", policy_options={}, hyperparameters=hyperparameters, sequence=sequence)
    assert _build_error(tmp_path, text) == (
        "c.yaml: key 'policy' = 'CnnPolicy': sequence 'curriculum' gives dict observations with keys "
        "['observation', 'task_id'] (the task id beside observations that are not flat); use MultiInputPolicy or "
        "MultiHeadPolicy"
    )
    text = _edit(
        policy="MultiHeadPolicy", policy_options={"n_heads": 3}, hyperparameters=hyperparameters, sequence=sequence
    )
    assert _build_error(tmp_path, text) == (
        "c.yaml: key 'policy_options.n_heads' = 3: the heads are chosen by the 'task_id' key of each observation, "
        "and sequence 'curriculum' gives a one-hot task id of 2; leave n_heads out or set it to 2"
    )
    for policy, policy_class in (("MultiInputPolicy", "MultiInputPolicy"), ("MultiHeadPolicy", "MultiHeadDQNPolicy")):
        text = _edit(policy=policy, policy_options={}, hyperparameters=hyperparameters, sequence=sequence)
        curriculum = load_curriculum(_write(tmp_path, text))
        model = build_model(curriculum, build_sequence(curriculum), seed=0)
        assert type(model.policy).__name__ == policy_class
        assert set(model.observation_space.spaces) == {"observation", "task_id"}
        assert model.observation_space["observation"].shape == (4, 84, 84)  # the frame stack, channels first
