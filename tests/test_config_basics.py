"""Schedules and error messages shared by curriculum and study files."""

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from crl.config import describe_validation_error, is_schedule, parse_schedule


def test_linear_schedule_goes_from_start_to_zero() -> None:
    schedule = parse_schedule("lin_0.001")
    assert schedule(1.0) == pytest.approx(0.001)
    assert schedule(0.25) == pytest.approx(0.00025)
    assert schedule(0.0) == 0.0
    assert parse_schedule("lin_1e-3")(0.5) == pytest.approx(5e-4)


@pytest.mark.parametrize("text", ["lin_", "linear_0.1", "lin_0.1; import os", "__import__('os')", "0.1"])
def test_non_schedules_are_rejected(text: str) -> None:
    assert not is_schedule(text)
    with pytest.raises(ValueError, match="not a schedule"):
        parse_schedule(text)


class _Task(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env: str
    budget: int


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    algorithm: str
    tasks: list[_Task]


def _message(data: dict) -> str:
    with pytest.raises(ValidationError) as info:
        _File.model_validate(data)
    return describe_validation_error(info.value, _File, "c.yaml")


def test_unknown_key_names_its_path_and_a_suggestion() -> None:
    message = _message({"algorithm": "DQN", "tasks": [{"env": "CartPole-v1", "budgte": 10}]})
    assert message.startswith("c.yaml: unknown key 'tasks[0].budgte' (did you mean 'budget'?)")
    assert "allowed keys here: env, budget" in message
    assert "\n" not in message


def test_wrong_type_and_missing_key() -> None:
    message = _message({"algorithm": "DQN", "tasks": [{"env": "CartPole-v1", "budget": "ten"}]})
    assert message.startswith("c.yaml: key 'tasks[0].budget' = 'ten': Input should be a valid integer")
    assert _message({"tasks": []}) == "c.yaml: missing required key 'algorithm'"
