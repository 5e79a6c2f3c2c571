"""Failures end as FAIL with a reason while the study goes on; fake GPUs are scheduled right."""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from msatune.augment.dataset import load_dataset
from msatune.search.search_settings import SearchSettings
from msatune.studies.runs import launch
from msatune.studies.store.connect import open_storage
from msatune.studies.store.workspace import Workspace


def faulty_trainable(config: dict, data=None, poisoned=None) -> None:
    """Trial 2 raises; trial 3 trains on features that overflow (a real NaN loss); others train."""
    from msatune.search.trainable import train_trial

    if config["seed"] == 2:
        raise RuntimeError("injected failure for the test")
    train_trial(config, data=poisoned if config["seed"] == 3 else data)


def poison(data):
    """The same dataset with train features so large that the first layer overflows to inf/NaN."""
    train = data.splits["train"]
    big = dataclasses.replace(train, text=np.full_like(train.text, 3e38))
    return dataclasses.replace(data, splits={**data.splits, "train": big})


def test_a_raising_trial_and_a_nan_trial_fail_with_reasons_and_the_study_goes_on(
    tmp_path: Path, tiny_data: Path, tiny_space_file: Path, ray_session
) -> None:
    from functools import partial

    ws = Workspace(tmp_path).ensure()
    storage = open_storage(ws.storage_url)
    data = load_dataset(tiny_data)
    opts = SearchSettings(trials=5, max_epochs=2, grace_period=2, reduction_factor=2,
                         cpus_per_trial=1.0, seed=0, max_failures=0)
    launch(ws, storage, "faults", opts, data_dir=tiny_data, space_file=tiny_space_file,
           trainable=partial(faulty_trainable, poisoned=poison(data)))
    trials = {t.number: t for t in optuna.load_study(study_name="faults", storage=ws.storage_url).trials}
    assert trials[2].state == TrialState.FAIL
    assert "injected failure for the test" in trials[2].user_attrs["fail_reason"]
    assert trials[3].state == TrialState.FAIL
    assert "non-finite" in trials[3].user_attrs["fail_reason"]
    others = [t for n, t in trials.items() if n not in (2, 3)]
    assert len(others) == 3 and all(t.state == TrialState.COMPLETE for t in others)
    assert all(np.isfinite(t.value) for t in others)


def gpu_probe(config: dict, data=None) -> None:
    """Stay alive long enough to overlap, report the devices Ray gave this trial."""
    import os
    import time

    from ray import tune

    time.sleep(6.0)  # long enough to overlap even while 8 actors start on a loaded 2-core machine
    value = 1.0 + config["dropout"]
    tune.report({"val_mae": value, "best_val_mae": value, "rung_mae": value,
                 "final": True, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")})


def run_gpu_study(tmp_path: Path, tiny_data: Path, tiny_space_file: Path, gpus: float, cpus: float,
                  trials: int) -> list[optuna.trial.FrozenTrial]:
    ws = Workspace(tmp_path).ensure()
    storage = open_storage(ws.storage_url)
    opts = SearchSettings(trials=trials, max_epochs=1, grace_period=1, cpus_per_trial=cpus,
                         gpus_per_trial=gpus, seed=0)
    launch(ws, storage, "gpus", opts, data_dir=tiny_data, space_file=tiny_space_file, trainable=gpu_probe)
    return optuna.load_study(study_name="gpus", storage=ws.storage_url).trials


def overlapping(trials: list[optuna.trial.FrozenTrial]) -> int:
    """The largest number of trials running at the same moment (from the store's timestamps)."""
    events = sorted(itertools.chain.from_iterable(
        ((t.datetime_start, 1), (t.datetime_complete, -1)) for t in trials), key=lambda e: (e[0], e[1]))
    now = best = 0
    for _, delta in events:
        now += delta
        best = max(best, now)
    return best


def test_one_gpu_per_trial_runs_four_at_once_on_four_distinct_devices(
    tmp_path: Path, tiny_data: Path, tiny_space_file: Path, ray_session
) -> None:
    trials = run_gpu_study(tmp_path, tiny_data, tiny_space_file, gpus=1, cpus=0.5, trials=4)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    devices = [t.user_attrs["cuda_visible_devices"] for t in trials]
    assert sorted(devices) == ["0", "1", "2", "3"]
    assert overlapping(trials) == 4


def test_half_a_gpu_per_trial_puts_two_trials_on_each_device(
    tmp_path: Path, tiny_data: Path, tiny_space_file: Path, ray_session
) -> None:
    trials = run_gpu_study(tmp_path, tiny_data, tiny_space_file, gpus=0.5, cpus=0.25, trials=8)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    devices = [t.user_attrs["cuda_visible_devices"] for t in trials]
    assert all(d in {"0", "1", "2", "3"} for d in devices)
    per_device = {d: overlapping([t for t in trials if t.user_attrs["cuda_visible_devices"] == d])
                  for d in set(devices)}
    assert max(per_device.values()) == 2  # two trials share a device at once, never three
    assert overlapping(trials) > 4  # more trials at once than devices


def cpu_probe(config: dict, data=None, out: str = "") -> None:
    """A trial's TensorFlow set up as a real trial's is; what this process saw, to ``out``/SEED.json."""
    import json

    from ray import tune

    from msatune.search.trainable import assigned_cpus, assigned_gpus, configure_tensorflow

    before = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    configure_tensorflow(assigned_cpus(), assigned_gpus())
    seen = {"gpus_assigned": assigned_gpus(), "before": before,
            "after": os.environ.get("CUDA_VISIBLE_DEVICES", "unset")}
    Path(out, f"{config['seed']}.json").write_text(json.dumps(seen))
    value = 1.0 + config["dropout"]
    tune.report({"val_mae": value, "best_val_mae": value, "rung_mae": value, "final": True})


def test_a_trial_given_no_gpu_hides_the_gpus_ray_left_visible(
    tmp_path: Path, tiny_data: Path, tiny_space_file: Path, ray_session
) -> None:
    """--gpus-per-trial 0 on a machine with GPUs (4 fake ones here): Ray (2.60 here) no longer empties
    CUDA_VISIBLE_DEVICES for a trial it gives no GPU, so TensorFlow would put every CPU trial on
    GPU 0; configure_tensorflow hides them."""
    import json
    from functools import partial

    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        pytest.skip("CUDA_VISIBLE_DEVICES is empty for the whole test session: nothing left visible to hide")
    ws = Workspace(tmp_path / "ws").ensure()
    seen_dir = tmp_path / "seen"
    seen_dir.mkdir()
    opts = SearchSettings(trials=2, max_epochs=1, grace_period=1, cpus_per_trial=1.0, gpus_per_trial=0.0, seed=0)
    launch(ws, open_storage(ws.storage_url), "cpu", opts, data_dir=tiny_data, space_file=tiny_space_file,
           trainable=partial(cpu_probe, out=str(seen_dir)))
    trials = optuna.load_study(study_name="cpu", storage=ws.storage_url).trials
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    seen = [json.loads(p.read_text()) for p in sorted(seen_dir.glob("*.json"))]
    assert len(seen) == 2
    for s in seen:
        assert s["gpus_assigned"] == 0.0
        # what Ray left: the driver's value (unset here), i.e. every GPU visible
        assert s["before"] == os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        assert s["after"] == ""  # what TensorFlow was then given: no GPU


class _FakeConfig:
    """tf.config's device calls, recorded (no GPU on the test machine)."""

    def __init__(self, gpus: list[str]) -> None:
        self.gpus, self.visible, self.growth = gpus, None, []
        self.threading = self
        self.experimental = self

    def set_intra_op_parallelism_threads(self, n: int) -> None:
        pass

    def set_inter_op_parallelism_threads(self, n: int) -> None:
        pass

    def list_physical_devices(self, kind: str) -> list[str]:
        return list(self.gpus) if kind == "GPU" else []

    def set_visible_devices(self, devices: list, kind: str) -> None:
        self.visible = (list(devices), kind)

    def set_memory_growth(self, device: str, on: bool) -> None:
        self.growth.append((device, on))


@pytest.mark.parametrize(("gpus", "visible", "growth", "env"), [
    (0.0, ([], "GPU"), [], ""),  # a CPU trial in Ray: no GPU, also when CUDA already listed them
    (0.5, None, [("gpu0", True)], "0"),  # a GPU trial: its GPU, growing memory (shared)
    (None, None, [("gpu0", True)], "0"),  # outside Ray (msatune train): TensorFlow's default
])
def test_configure_tensorflow_gives_a_trial_its_gpus_only(monkeypatch: pytest.MonkeyPatch, gpus, visible,
                                                          growth, env) -> None:
    import tensorflow as tf

    from msatune.search import trainable

    fake = _FakeConfig(["gpu0"])
    monkeypatch.setattr(tf, "config", fake)
    monkeypatch.setattr(trainable, "_TF_CONFIGURED", False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    trainable.configure_tensorflow(1.0, gpus)
    assert (fake.visible, fake.growth) == (visible, growth)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == env


@pytest.mark.parametrize("gpus", [1.5, -1])
def test_bad_gpu_requests_are_user_errors(gpus: float) -> None:
    from msatune.errors import UserError

    with pytest.raises(UserError, match="--gpus-per-trial"):
        SearchSettings(trials=1, gpus_per_trial=gpus).validate()
