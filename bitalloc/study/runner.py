"""Create or resume a study and run trials until it holds ``n_trials`` finished ones.

Every worker (``run`` or ``worker``, on one machine or several) opens the same RDB study; Optuna gives
each trial number to exactly one worker. A study interrupted mid-trial resumes: the stale RUNNING trial
is failed by the heartbeat and retried, finished trials are kept.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

from bitalloc.models.loading import LoadedModel, load_model, state_hash
from bitalloc.study.definition import StudyDefinition
from bitalloc.study.objective import Objective
from bitalloc.study.space import label
from bitalloc.study.storage import open_storage


def load_study_model(definition: StudyDefinition) -> LoadedModel:
    """The definition's model, cut to its first ``layers`` decoder layers when that is set."""
    loaded = load_model(definition.model)
    if not definition.layers:
        return loaded
    model = loaded.model
    model.model.layers = model.model.layers[: definition.layers]
    model.config.num_hidden_layers = definition.layers
    if getattr(model.config, "layer_types", None) is not None:
        model.config.layer_types = model.config.layer_types[: definition.layers]
    name = f"{loaded.name}[:{definition.layers}]"
    return LoadedModel(model=model, tokenizer=loaded.tokenizer, name=name, model_hash=state_hash(model))


def _sampler(definition: StudyDefinition):
    import optuna

    if definition.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=definition.seed, population_size=8)
    if definition.sampler == "random":
        return optuna.samplers.RandomSampler(seed=definition.seed)
    return optuna.samplers.TPESampler(seed=definition.seed, n_startup_trials=8, multivariate=True)


def open_study(definition: StudyDefinition, *, storage_url: str | None = None):
    """Create the study (enqueueing its baselines once) or load it as it stands."""
    import optuna

    storage = open_storage(storage_url or definition.storage_url, grace_s=definition.grace_s)
    directions = ["minimize"] * len(definition.objectives)
    try:
        study = optuna.load_study(study_name=definition.name, storage=storage, sampler=_sampler(definition))
    except KeyError:
        study = optuna.create_study(
            study_name=definition.name,
            storage=storage,
            directions=directions,
            sampler=_sampler(definition),
            load_if_exists=True,
        )
        if not study.user_attrs.get("baselines_enqueued"):
            study.set_user_attr("baselines_enqueued", True)
            study.set_user_attr("objectives", list(definition.objectives))
            for base in definition.baselines:
                study.enqueue_trial(
                    {k: label(tuple(v) if isinstance(v, list) else v) for k, v in base.items()}
                )
    return study


def finished(study) -> int:
    """Trials that completed or were pruned."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def run_study(
    definition: StudyDefinition,
    *,
    n_trials: int | None = None,
    storage_url: str | None = None,
    loaded: LoadedModel | None = None,
    max_minutes: float | None = None,
    on_trial: Callable[[object, float], None] | None = None,
) -> int:
    """Run trials until the study holds ``n_trials`` (default: the definition's) finished trials, or
    exactly ``n_trials`` more when called as a worker with an explicit count; start no new trial after
    ``max_minutes`` (a long study runs in chunks and resumes); ``on_trial(trial, seconds)`` after each.
    Returns the trials run."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = open_study(definition, storage_url=storage_url)
    objective = Objective(definition, loaded or load_study_model(definition))
    ran, deadline = 0, None if max_minutes is None else time.monotonic() + 60 * max_minutes
    while (n_trials is not None and ran < n_trials) or (
        n_trials is None and finished(study) < definition.n_trials
    ):
        if deadline is not None and time.monotonic() > deadline:
            break
        started = time.monotonic()
        callbacks = [] if on_trial is None else [lambda _, t, t0=started: on_trial(t, time.monotonic() - t0)]
        study.optimize(objective, n_trials=1, catch=(), callbacks=callbacks)
        ran += 1
    return ran
