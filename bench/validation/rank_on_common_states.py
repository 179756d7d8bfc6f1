"""Is a PPO actor's feature rank low because of the network, or because its rollouts are monotonous?

``python -m bench.validation.rank_on_common_states [--tracking-uri URI] RUN_NAME RUN_NAME ...``

For finished child runs of ``validation/ppo_epochs_pfo`` (e.g. ``epochs_4-seed0 epochs_32-seed0``): loads
each final model, collects 2,048 MinAtar Breakout states with it (stochastic policy), and prints the
``pca_rank`` of the observations, of the actor's last hidden layer on the agent's own states, and of
that layer on a common state set (the first 1,024 states of every agent). Equal state diversity and a
still-lower rank on common states mean the network, not the data, lost rank.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch as th
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

import crl
from bench.validation.__main__ import DEFAULT_TRACKING_URI
from crl.metrics.functions import gram_singular_values, rank_metrics_from_singular_values
from crl.wrappers.minatar import minatar_env

STATES = 2_048


def visited_states(model: crl.PPO, seed: int = 0) -> np.ndarray:
    """``STATES`` observations of MinAtar Breakout met by ``model``'s stochastic policy."""
    env = minatar_env("Breakout")
    observation, _ = env.reset(seed=seed)
    states = []
    for _ in range(STATES):
        states.append(observation)
        action, _ = model.predict(observation, deterministic=False)
        observation, _, terminated, truncated, _ = env.step(int(action))
        if terminated or truncated:
            observation, _ = env.reset()
    return np.asarray(states, dtype=np.float32)


def last_hidden_layer(model: crl.PPO, states: np.ndarray) -> th.Tensor:
    policy = model.policy
    with th.no_grad():
        features = policy.extract_features(th.as_tensor(states), policy.pi_features_extractor)
        return policy.mlp_extractor.policy_net(features)


def pca_rank(matrix: th.Tensor) -> int:
    return int(rank_metrics_from_singular_values(gram_singular_values(matrix), matrix.shape[0])["pca_rank"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="child run names, e.g. epochs_4-seed0")
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    args = parser.parse_args()
    th.set_num_threads(1)
    client = MlflowClient(tracking_uri=args.tracking_uri)
    experiment = client.get_experiment_by_name("validation/ppo_epochs_pfo")
    if experiment is None:
        raise SystemExit(f"no experiment validation/ppo_epochs_pfo at {args.tracking_uri}")
    by_name = {run.data.tags[MLFLOW_RUN_NAME]: run for run in client.search_runs([experiment.experiment_id])}
    models, states = {}, {}
    with tempfile.TemporaryDirectory() as directory:
        for name in args.runs:
            path = client.download_artifacts(by_name[name].info.run_id, "model.zip", directory)
            models[name] = crl.PPO.load(path, device="cpu")
            states[name] = visited_states(models[name])
    common = np.concatenate([own[: STATES // 2] for own in states.values()])
    for name, model in models.items():
        own = states[name]
        observations = th.as_tensor(own.reshape(len(own), -1))
        print(
            f"{name}: observations pca_rank {pca_rank(observations)}, "
            f"last hidden layer pca_rank on own states {pca_rank(last_hidden_layer(model, own))}, "
            f"on common states {pca_rank(last_hidden_layer(model, common))}"
        )


if __name__ == "__main__":
    main()
