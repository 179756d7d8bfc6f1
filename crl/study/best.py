"""The best trial's configuration as a curriculum file that ``python -m crl.train`` runs as it is."""

from __future__ import annotations

from pathlib import Path

import optuna

from crl.study.config import StudyConfig
from crl.study.progress import best_trials


def write_best(config: StudyConfig, study: optuna.Study, path: Path) -> optuna.trial.FrozenTrial | None:
    """Write the best complete trial's curriculum (resolved, every default filled in) to ``path``.

    :return: the best trial, or ``None`` when no trial has completed (nothing is written)
    """
    best = best_trials(study.get_trials(deepcopy=False), study.direction)
    if not best:
        return None
    trial = best[0]
    curriculum = config.trial_curriculum(config.space.from_params(trial.params))
    objective = config.spec.objective
    measure = objective.key if objective.measure == "metric" else objective.measure
    parameters = "\n".join(f"#   {path}: {value!r}" for path, value in trial.params.items())
    header = (
        f"# The best configuration of study {config.name!r} ({config.source}): trial {trial.number},\n"
        f"# {measure} = {trial.value:.6g} ({objective.aggregate} over seeds {curriculum.seeds}; "
        f"{study.direction.name.lower()}d).\n"
        f"# Its parameters:\n{parameters}\n"
        f"# Written by crl.study; train it with: python -m crl.train {path}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + curriculum.to_yaml())
    return trial
