"""Which families a study searches (``launch --family``): conditional model keys, the presets a
study starts with, space files that ask for a key no searched family reads, and the CLI's refusals."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from msatune.errors import UserError
from msatune.search.space import default_space, space_families
from msatune.search.space_file import example_space_toml, load_space
from msatune.search.trial_config import PRESETS, SEARCH_FAMILIES, validate_config
from msatune.studies.queries import PRESET_FAMILIES, trial_family
from msatune.studies.runs import enqueue_presets
from tests.conftest import one_line_error, run_in

SEQLEVEL_ONLY = ("bidirectional_fusion", "pooling_method")
NOT_SEQLEVEL = ("l2", "adaptive_fusion")


def sampled(family: str, n: int = 30) -> list[optuna.trial.FrozenTrial]:
    """``n`` random-sampled trials of ``family``'s default space (their params are what was sampled)."""
    space = default_space(max_epochs=9, seed=0, first_rung=3, family=family)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(n):
        trial = study.ask()
        config = space.sample(trial)
        validate_config({k: v for k, v in config.items() if not k.startswith("_")})
        study.tell(trial, 1.0)
    return study.trials


def test_each_family_samples_only_the_keys_its_models_read() -> None:
    improved = sampled("improved")
    assert all(trial_family(t) == "improved" for t in improved)
    assert not any(k in t.params for t in improved for k in (*SEQLEVEL_ONLY, "family"))
    assert all("l2" in t.params for t in improved)

    seq = sampled("seqlevel")
    assert all(trial_family(t) == "seqlevel" for t in seq)
    assert all(set(SEQLEVEL_ONLY) <= set(t.params) for t in seq)
    assert not any(k in t.params for t in seq for k in NOT_SEQLEVEL)
    assert {t.params["pooling_method"] for t in seq} == {"mean", "attention"}

    mixed = sampled("all", 40)
    by_family: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in mixed:
        by_family.setdefault(t.params["family"], []).append(t)
        assert trial_family(t) == t.params["family"]
    assert set(by_family) == {"improved", "seqlevel"}
    assert not any(k in t.params for t in by_family["improved"] for k in SEQLEVEL_ONLY)
    assert all(set(SEQLEVEL_ONLY) <= set(t.params) for t in by_family["seqlevel"])
    assert not any(k in t.params for t in by_family["seqlevel"] for k in NOT_SEQLEVEL)


def test_a_study_starts_with_the_presets_of_the_families_it_searches() -> None:
    for family, (_, presets) in SEARCH_FAMILIES.items():
        study = optuna.create_study()
        enqueue_presets(study, family)
        assert [t.user_attrs["preset"] for t in study.trials] == list(presets)
    assert SEARCH_FAMILIES["improved"][1] == ("baseline", "improved")  # the default is unchanged
    assert PRESET_FAMILIES == {name: p["family"] for name, p in PRESETS.items()}


def test_the_seqlevel_preset_is_their_recipe_and_stays_itself_inside_a_study() -> None:
    seq = validate_config(PRESETS["seqlevel"])
    assert (seq["model_dim"], seq["num_heads"], seq["ff_dim"], seq["n_layers_mod"], seq["n_layers_fuse"]) == (
        128, 4, 256, 2, 1)
    assert (seq["optimizer"], seq["learning_rate"], seq["loss"], seq["batch_size"]) == ("adam", 1e-4, "mae", 32)
    assert (seq["early_stop_metric"], seq["patience"], seq["plateau_factor"], seq["plateau_patience"]) == (
        "val_mae", 15, 0.5, 7)
    bal = validate_config(PRESETS["balanced"])
    assert (bal["family"], bal["dropout"], bal["l2"], bal["batch_size"], bal["clipnorm"]) == (
        "baseline", 0.2, 0.001, 8, 0.5)
    # enqueued into an `all` study, each preset trains exactly its recipe
    space = default_space(max_epochs=9, seed=0, first_rung=3, family="all")
    study = optuna.create_study()
    enqueue_presets(study, "all")
    for name in SEARCH_FAMILIES["all"][1]:
        config = space.sample(study.ask())
        recipe = {k: v for k, v in PRESETS[name].items() if k not in ("epochs", "seed")}
        assert {k: config[k] for k in recipe} == recipe, name


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.toml"
    p.write_text(text)
    return p


def test_a_key_no_searched_family_reads_is_refused_in_a_space_file(tmp_path: Path) -> None:
    f = write(tmp_path, '[pooling_method]\nchoices = ["mean", "attention"]\n')
    with pytest.raises(UserError, match=r"key 'pooling_method': only the seqlevel family reads it.*improved"):
        load_space(f, 9, 0, 3)
    assert "pooling_method" in load_space(f, 9, 0, 3, family="seqlevel").distributions
    assert "pooling_method" in load_space(f, 9, 0, 3, family="all").distributions
    both = write(tmp_path, '[family]\nchoices = ["improved", "seqlevel"]\n[pooling_method]\nvalue = "attention"\n')
    assert space_families(load_space(both, 9, 0, 3)) == ("improved", "seqlevel")
    l2 = write(tmp_path, "[l2]\nlow = 1e-4\nhigh = 1e-2\n")
    with pytest.raises(UserError, match="key 'l2': only the baseline, improved family reads it"):
        load_space(l2, 9, 0, 3, family="seqlevel")
    with pytest.raises(UserError, match="--family 'xattn' is not a family msatune searches"):
        load_space(l2, 9, 0, 3, family="xattn")


@pytest.mark.parametrize("family", list(SEARCH_FAMILIES))
def test_each_familys_example_file_reads_back_as_its_default_space(tmp_path: Path, family: str) -> None:
    f = write(tmp_path, example_space_toml(family))
    loaded = load_space(f, 9, 0, 3)  # no --family: the file says which
    default = default_space(9, 0, 3, family)
    assert loaded.distributions == default.distributions
    assert space_families(loaded) == space_families(default)


def test_cli_refuses_an_unknown_family_and_a_foreign_key_in_one_line(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    one_line_error(run_in(ws, "launch", "s", "--family", "xattn"),
                   "--family 'xattn' is not a family msatune searches; choose one of improved, seqlevel, all")
    assert not ws.exists()  # nothing written
    f = write(tmp_path, "[bidirectional_fusion]\nvalue = true\n")
    one_line_error(run_in(ws, "launch", "s", "--space", f, "--family", "improved"),
                   "key 'bidirectional_fusion': only the seqlevel family reads it", tf_noise=True)
    assert not ws.exists()
    r = run_in(ws, "space", "--check", f, "--family", "seqlevel")
    assert r.returncode == 0, r.stderr
