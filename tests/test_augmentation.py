"""DrQ random shift: the shift itself on constructed images, its draws, and a DQN run on Atari modes."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import SpacesEnv
from gymnasium import spaces
from torch.nn import functional as F

import crl
from crl.config import ConfigError
from crl.config.curriculum import validate_curriculum
from crl.interventions import InterventionError, RandomShift
from crl.interventions.augmentation import random_shift


def _drq_reference(images: th.Tensor, offsets: th.Tensor, pad: int) -> th.Tensor:
    """DrQ as written: replicate-pad by ``pad``, crop the original size at each image's offset."""
    height, width = images.shape[-2:]
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="replicate")
    crops = [padded[b, :, oy : oy + height, ox : ox + width] for b, (oy, ox) in enumerate(offsets.tolist())]
    return th.stack(crops).to(images.dtype)


def test_shift_moves_pixels_and_repeats_the_border() -> None:
    image = th.arange(16, dtype=th.uint8).reshape(1, 1, 4, 4)
    # out[i, j] = x[clamp(i + 1), clamp(j - 2)]: the content moves up one row and right two columns
    shifted = random_shift(image, th.tensor([[1, -2]]))
    expected = th.tensor([[4, 4, 4, 5], [8, 8, 8, 9], [12, 12, 12, 13], [12, 12, 12, 13]], dtype=th.uint8)
    assert th.equal(shifted[0, 0], expected)


def test_shift_equals_drqs_replicate_pad_and_crop() -> None:
    generator = th.Generator().manual_seed(0)
    images = th.randint(0, 256, (6, 4, 12, 10), generator=generator, dtype=th.uint8)
    offsets = th.randint(0, 9, (6, 2), generator=generator)
    assert th.equal(random_shift(images, offsets - 4), _drq_reference(images, offsets, pad=4))
    channels_last = random_shift(images.permute(0, 2, 3, 1), offsets - 4, channels_first=False)
    assert th.equal(channels_last.permute(0, 3, 1, 2), _drq_reference(images, offsets, pad=4))


def _random_shift(env: gym.Env, pad: int = 4, seed: int | None = 0) -> RandomShift:
    """The intervention as set up by a DQN on image observations."""
    algo = crl.DQN("CnnPolicy", env, seed=seed, buffer_size=100, interventions=[RandomShift(pad=pad)])
    return algo.interventions[0]  # type: ignore[return-value]


def test_augmented_batch_keeps_shape_and_dtype_and_shifts_within_the_pad(image_env) -> None:
    shift = _random_shift(image_env(), pad=4)
    model_space = (4, 84, 84)  # SB3 transposes the frames to channels first
    # An image whose every pixel is distinct: (row, column) can be read back from the value.
    rows, cols = th.meshgrid(th.arange(84), th.arange(84), indexing="ij")
    codes = (rows * 84 + cols).to(th.int32)
    images = codes.expand(64, 4, 84, 84).clone()
    shifted = shift.shift(images)
    assert shifted.shape == images.shape and shifted.dtype == th.int32
    # The centre pixel moved by (dy, dx), read back per image, within [-4, 4] along both axes.
    centre = shifted[:, 0, 42, 42]
    dy, dx = centre // 84 - 42, centre % 84 - 42
    assert dy.abs().max() <= 4 and dx.abs().max() <= 4
    assert len(set(zip(dy.tolist(), dx.tolist(), strict=True))) > 10  # samples of one batch get different shifts
    assert (shifted == shifted[:, :1]).all()  # stacked frames of a sample move together
    frames = th.randint(0, 256, (8, *model_space), dtype=th.uint8)
    augmented = shift.shift(frames)
    assert augmented.shape == frames.shape and augmented.dtype == th.uint8


def test_same_seed_gives_same_shifts_from_a_private_generator(image_env) -> None:
    first, second, other = (_random_shift(image_env(), seed=seed) for seed in (3, 3, 4))
    torch_state = th.random.get_rng_state()
    draws = first.sample_shifts(32)
    assert th.equal(th.random.get_rng_state(), torch_state)  # the run's own random stream is untouched
    assert th.equal(draws, second.sample_shifts(32))
    assert not th.equal(draws, other.sample_shifts(32))
    assert draws.min() == -4 and draws.max() == 4  # all shifts in the pad are drawn


def test_the_generator_is_saved_with_the_model(tmp_path, image_env) -> None:
    model = crl.DQN(
        "CnnPolicy", image_env((36, 36, 4)), seed=1, buffer_size=100, learning_starts=10, interventions=["random_shift"]
    )
    model.interventions[0].sample_shifts(5)
    model.save(tmp_path / "model.zip")
    loaded = crl.DQN.load(tmp_path / "model.zip")
    assert th.equal(loaded.interventions[0].sample_shifts(7), model.interventions[0].sample_shifts(7))


def test_replay_batches_are_shifted_for_training(monkeypatch, image_env) -> None:
    """DQN trains on shifted observations and next observations, each shifted independently."""
    model = crl.DQN(
        "CnnPolicy",
        image_env((36, 36, 4)),
        seed=0,
        buffer_size=200,
        learning_starts=32,
        batch_size=8,
        interventions=["random_shift"],
    )
    seen: list[tuple[th.Tensor, th.Tensor]] = []
    original = RandomShift.transform_batch

    def spy(self, algo, batch):
        shifted = original(self, algo, batch)
        seen.append((batch, shifted))
        return shifted

    monkeypatch.setattr(RandomShift, "transform_batch", spy)
    model.learn(48)
    assert len(seen) == model._n_updates > 0
    batch, shifted = seen[-1]
    assert not th.equal(batch.observations, shifted.observations)
    assert not th.equal(batch.next_observations, shifted.next_observations)
    # Both are uint8 copies of the same shape; the stored replay data is left as it was.
    assert shifted.observations.dtype == batch.observations.dtype == th.uint8
    assert shifted.next_observations.shape == batch.next_observations.shape == (8, 4, 36, 36)
    assert th.equal(batch.actions, shifted.actions) and th.equal(batch.rewards, shifted.rewards)


def test_ppo_minibatches_are_shifted(monkeypatch, image_env) -> None:
    model = crl.PPO(
        "CnnPolicy", image_env((36, 36, 4)), n_steps=16, batch_size=8, n_epochs=1, interventions=["random_shift"]
    )
    calls: list[int] = []
    monkeypatch.setattr(RandomShift, "shift", lambda self, images: calls.append(len(images)) or images)
    model.learn(16)
    assert calls == [8, 8]  # observations only: a rollout has no next observations


def test_non_image_observations_are_rejected() -> None:
    with pytest.raises(InterventionError, match=r"'random_shift' shifts images, but the observation space is Box\("):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=["random_shift"])
    vectors = SpacesEnv(spaces.Dict({"a": spaces.Box(-1, 1, (3,)), "b": spaces.Box(-1, 1, (2, 2))}))
    with pytest.raises(InterventionError, match=r"observation space is Dict\(.*or a Dict with such a key"):
        crl.DQN("MultiInputPolicy", vectors, buffer_size=100, interventions=["random_shift"])


def _frames_and_position(channels: int = 2) -> SpacesEnv:
    frames = spaces.Box(0, 255, (36, 36, channels), np.uint8)
    keys = {"frames": frames, "more": frames, "position": spaces.Box(-1, 1, (2,), np.float32)}
    return SpacesEnv(spaces.Dict(keys))


def test_each_image_key_of_dict_observations_is_shifted_with_its_own_draw() -> None:
    shift = crl.DQN(
        "MultiInputPolicy", _frames_and_position(), seed=5, buffer_size=100, interventions=[RandomShift(pad=3)]
    ).interventions[0]
    generator = th.Generator().manual_seed(0)
    frames, more = (th.randint(0, 256, (6, 2, 36, 36), generator=generator, dtype=th.uint8) for _ in range(2))
    position = th.rand((6, 2), generator=generator)
    shifted = shift.shift_observations({"frames": frames, "more": more, "position": position})
    draws = th.Generator().manual_seed(5)  # the algorithm's seed; the keys in order
    expected = [random_shift(images, th.randint(-3, 4, (6, 2), generator=draws)) for images in (frames, more)]
    assert th.equal(shifted["frames"], expected[0]) and th.equal(shifted["more"], expected[1])
    assert not th.equal(shifted["frames"], frames)
    assert shifted["position"] is position


@pytest.mark.parametrize("algorithm", ["DQN", "PPO", "SAC"])
def test_dict_observations_with_images_train_with_the_shift(monkeypatch, algorithm: str) -> None:
    env = _frames_and_position()
    if algorithm == "SAC":
        env.action_space = spaces.Box(-1, 1, (2,), np.float32)
    settings = {"PPO": dict(n_steps=16, batch_size=8, n_epochs=1)}.get(
        algorithm, dict(buffer_size=100, learning_starts=16, batch_size=8)
    )
    model = getattr(crl, algorithm)(
        "MultiInputPolicy", env, seed=0, interventions=["random_shift"],
        policy_kwargs=dict(features_extractor_kwargs=dict(cnn_output_dim=8), net_arch=[8]), **settings,
    )  # fmt: skip
    seen: list[th.Size] = []
    original = RandomShift.shift

    def spy(self, images: th.Tensor, channels_first: bool | None = None) -> th.Tensor:
        seen.append(images.shape)
        return original(self, images, channels_first)

    monkeypatch.setattr(RandomShift, "shift", spy)
    model.learn(32)
    assert seen and all(shape[1:] == (2, 36, 36) for shape in seen)  # image keys only, channels first
    # frames and more; off-policy: of the next observations too; PPO: 2 minibatches of 8 per epoch
    batches, per_batch = (2 * model._n_updates, 2) if algorithm == "PPO" else (model._n_updates, 4)
    assert len(seen) == per_batch * batches


def test_dqn_with_augmentation_trains_on_an_atari_mode_sequence() -> None:
    from crl.wrappers.atari import atari_modes

    sequence = atari_modes("SpaceInvaders", [0, 1], steps_per_task=150)
    model = crl.DQN(
        "CnnPolicy",
        sequence.make_vec_env(0, seed=0),
        seed=0,
        buffer_size=300,
        learning_starts=50,
        batch_size=16,
        interventions=[{"name": "random_shift", "pad": 4}],
    )
    assert model.observation_space.shape == (4, 84, 84) and model.observation_space.dtype == np.uint8
    before = {key: value.clone() for key, value in model.policy.state_dict().items()}
    for task, budget in enumerate(sequence.budgets):
        model.set_env(sequence.make_vec_env(task, seed=task))
        model.start_task(task)
        model.learn(budget)
        model.end_task()
    assert model._n_updates > 0
    after = model.policy.state_dict()
    assert all(th.isfinite(value).all() for value in after.values())
    assert not th.equal(after["q_net.q_net.0.weight"], before["q_net.q_net.0.weight"])


def test_a_curriculum_takes_the_intervention() -> None:
    data = {
        "algorithm": "DQN",
        "policy": "CnnPolicy",
        "interventions": [{"name": "random_shift", "pad": 2}],
        "sequence": {"tasks": [{"atari": "SpaceInvaders", "mode": 0, "budget": 100}]},
    }
    assert validate_curriculum(data).interventions == [{"name": "random_shift", "pad": 2}]
    with pytest.raises(
        ConfigError,
        match=r"^c.yaml: interventions\[0\]: intervention 'random_shift': parameter "
        r"pad=-1: Input should be greater than 0$",
    ):
        validate_curriculum({**data, "interventions": [{"name": "random_shift", "pad": -1}]}, source="c.yaml")
