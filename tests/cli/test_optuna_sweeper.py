"""The Optuna sweeper's reading of a search space: Hydra's sweep syntax into Optuna 5's distributions."""

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from detection.engine.settings import SettingsError
from hydra_plugins.detection_optuna_sweeper.optuna_sweeper import search_space, space_differences


def test_hydra_sweeps_become_optuna_distributions_and_plain_values_stay_overrides():
    space, fixed = search_space({"optimizer.lr": "tag(log, interval(1e-4, 1e-2))", "seed": "range(0, 3)"},
                                ["trainer.batch_size=choice(8,16)", "seed=0,1", "+extra=1", "model.x=interval(1, 4)"])
    assert space == {"optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True),
                     "seed": CategoricalDistribution([0, 1]),  # the command line wins over params
                     "trainer.batch_size": CategoricalDistribution([8, 16]),
                     "model.x": FloatDistribution(1.0, 4.0)}  # Hydra reads an interval's ends as floats
    assert fixed == ["+extra=1"]
    assert search_space({"seed": "range(0, 6, 2)"}, [])[0] == {"seed": IntDistribution(0, 4, step=2)}


def test_a_glob_is_refused_and_a_changed_space_is_named_key_by_key():
    with pytest.raises(SettingsError, match="not glob"):
        search_space(None, ["model=glob(*)"])
    from optuna.distributions import distribution_to_json
    before = {"optimizer.lr": distribution_to_json(FloatDistribution(1e-4, 1e-2, log=True))}
    now = {"optimizer.lr": distribution_to_json(FloatDistribution(1e-5, 1e-2, log=True)), "seed": before["optimizer.lr"]}
    lines = space_differences(before, now)
    assert len(lines) == 2 and lines[0].startswith("optimizer.lr: FloatDistribution(") and "low=1e-05" in lines[0]
    assert lines[1].startswith("seed: absent before")


def test_a_job_that_returns_nan_fails_its_trial_and_the_best_stays_finite():
    import math

    import optuna
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from hydra_plugins.detection_optuna_sweeper.optuna_sweeper import OptunaSweeper

    sweeper = OptunaSweeper(direction="maximize", metric="val/map", study_name="s", storage=None, n_trials=2,
                            n_jobs=1, max_failure_rate=0.0, sampler=OmegaConf.create({}), params=None)
    study = optuna.create_study(direction="maximize")
    for value in (math.nan, 0.25):
        sweeper.tell(study, study.ask(), JobReturn(status=JobStatus.COMPLETED, _return_value=value))
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert study.best_value == 0.25


@pytest.mark.parametrize("pruner", ["median", "successive_halving", "hyperband"])
def test_each_pruner_option_composes_into_an_optuna_pruner_and_the_default_has_none(pruner):
    import optuna
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        chosen = compose("train", overrides=["hparams_search=ssd_lr", f"hydra/sweeper/pruner={pruner}"],
                         return_hydra_config=True)
        default = compose("train", overrides=["hparams_search=ssd_lr"], return_hydra_config=True)
    assert isinstance(instantiate(chosen.hydra.sweeper.pruner), optuna.pruners.BasePruner)
    assert "pruner" not in default.hydra.sweeper
    assert default.hydra.sweeper.study_name == "ssd_lr_ssd512_resnet50_shapes"  # one study per experiment
