"""The report shows what training monitoring recorded: gradient-norm curves, the first spike beside
the stability criterion, modality weights and attention maps; a real study and ``msatune train``
leave them where TensorBoard reads them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from msatune.studies.cli import main
from msatune.studies.report.build import build_report
from msatune.studies.report.monitoring import TrialMonitoring, first_spike
from msatune.studies.store.connect import open_storage
from msatune.studies.store.workspace import Workspace
from tests.studies.tensorboard_events import read_event_scalars

PNG = b"\x89PNG\r\n\x1a\n"


def _tensors(log_dir: Path) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Every tensor summary of the event files in ``log_dir``, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    acc = ea.EventAccumulator(str(log_dir), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    return {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"]}


def test_spike_rule() -> None:
    mon = TrialMonitoring(0, epochs=[1, 2, 3, 4, 5], grad_mean=[1.0, 2.0, 1.5, 1.2, 9.0],
                          grad_max=[9.0, 3.0, 7.0, 8.0, 20.0])
    # epochs 1-2 have too few earlier epochs; epoch 3: 7 < 5 x median(1, 2); epoch 4: 8 > 5 x 1.5
    assert first_spike(mon) == {"epoch": 4, "max": 8.0, "median_mean": 1.5, "ratio": pytest.approx(8 / 1.5)}
    mon.grad_max[3] = 7.0
    assert first_spike(mon)["epoch"] == 5
    mon.grad_max[4] = 6.0
    assert first_spike(mon) is None


def _trial_dir(root: Path, number: int, val: list[float], means: list[float], maxes: list[float],
               weights: list[float] | None = None) -> Path:
    """A trial's Ray directory as a study leaves it: progress.csv with the monitoring columns,
    the checkpoint dir, and (with ``weights``) the best epoch's attention maps."""
    trial_dir = root / f"trial_{number}"
    ckpt = trial_dir / "checkpoint_000000"
    ckpt.mkdir(parents=True)
    cols = ["val_mae", "train_mae", "epoch", "grad_norm_mean", "grad_norm_max", "grad_norm_text_mean",
            "grad_norm_head_mean"] + (["modality_weight_text", "modality_weight_audio", "modality_weight_video"]
                                      if weights else [])
    with (trial_dir / "progress.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for e, (v, mean, top) in enumerate(zip(val, means, maxes, strict=True), start=1):
            w.writerow([v, v - 0.1, e, mean, top, mean / 2, mean / 3] + (weights if weights else []))
    labels = np.linspace(-3, 3, 10).astype(np.float32)
    np.savez(ckpt / "predictions.npz", test_pred=labels + 0.5, test_label=labels)
    if weights:
        monitor = trial_dir / "work" / "monitor"
        monitor.mkdir(parents=True)
        eye = np.stack([np.eye(4), np.full((4, 4), 0.25)]).astype(np.float32)
        np.savez(monitor / "attention.npz", epoch=np.int64(val.index(min(val)) + 1),
                 text_from_audio=eye, text_from_video=eye[::-1])
    return ckpt


def test_report_draws_gradients_and_attention_and_names_the_spike(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    ws = Workspace(tmp_path / "ws").ensure()
    storage = open_storage(ws.storage_url)
    study = optuna.create_study(study_name="mon", storage=storage)
    runs = ws.study_dir("mon") / "ray" / "run0"
    specs = [  # number, preset, val, mean norms, max norms, modality weights
        (0, "baseline", [1.6, 1.3, 1.5, 1.4], [2.0, 1.0, 1.0, 1.0], [3.0, 2.0, 2.0, 2.0], None),
        (1, None, [1.4, 1.1, 1.0, 1.2], [1.0, 0.8, 0.9, 3.0], [2.0, 1.5, 1.8, 9.0], [0.5, 0.3, 0.2]),
    ]
    for number, preset, val, means, maxes, weights in specs:
        ckpt = _trial_dir(runs, number, val, means, maxes, weights)
        attrs = {"checkpoint": str(ckpt), **({"preset": preset} if preset else {})}
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=min(val), params={}, distributions={},
                                     user_attrs=attrs, intermediate_values=dict(enumerate(val, start=1))))
    out = tmp_path / "r"
    assert main(["--workspace", str(ws.root), "report", "mon", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "gradients:" in printed and "attention:" in printed
    for name in ("gradients.png", "attention.png"):
        assert (out / name).read_bytes().startswith(PNG), name

    report = json.loads((out / "report.json").read_text())
    stab = report["criteria"]["stability"]
    # trial 1: epoch 4's max 9.0 > 5 x median(1.0, 0.8, 0.9); the baseline has none
    assert stab["spikes"] == {"best": {"epoch": 4, "max": 9.0, "median_mean": 0.9, "ratio": pytest.approx(10.0)},
                              "baseline": None}
    row = next(r for r in report["criteria_table"] if r["key"] == "stability")
    assert "best #1: spike at epoch 4" in row["numbers"] and "baseline #0: no spike in 4 epochs" in row["numbers"]
    mons = {m["trial"]: m for m in report["monitoring"]}
    assert mons[1]["grad_norm_max"] == [2.0, 1.5, 1.8, 9.0]
    assert mons[1]["branch_mean"]["head"] == pytest.approx([1 / 3, 0.8 / 3, 0.3, 1.0])
    assert mons[1]["modality_weights"] == {"text": 0.5, "audio": 0.3, "video": 0.2}
    assert mons[1]["attention_maps"] == ["text_from_audio", "text_from_video"] and mons[1]["attention_epoch"] == 3
    assert mons[0]["modality_weights"] is None and mons[0]["attention_maps"] == []
    page = (out / "report.html").read_text()
    assert "Gradient norms" in page and "Modality weights and attention" in page
    assert "spike at epoch 4" in page and "5x the median of the mean norms" in page


def test_a_real_study_records_gradient_norms_for_ray_tensorboard_and_the_report(tiny_study: dict,
                                                                                 tmp_path: Path) -> None:
    storage = open_storage(tiny_study["storage_url"])
    rep = build_report(storage, tiny_study["name"], tmp_path / "r",
                       ws=Workspace(Path(tiny_study["workspace"])))
    assert rep.figures["gradients"].read_bytes().startswith(PNG)
    shown = {m["trial"]: m for m in rep.payload["monitoring"]}
    study = optuna.load_study(study_name=tiny_study["name"], storage=storage)
    checked = 0
    for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        trial_dir = Path(t.user_attrs["checkpoint"]).parent
        with (trial_dir / "progress.csv").open(newline="") as fh:
            rows = {int(float(r["epoch"])): r for r in csv.DictReader(fh)}
        means = {e: float(r["grad_norm_mean"]) for e, r in rows.items()}
        assert all(float(r["grad_norm_max"]) >= means[e] > 0 for e, r in rows.items())
        assert any(k.startswith("grad_norm_text_") for k in next(iter(rows.values())))
        # Ray's TensorBoard scalars, and the trial's own event file (TensorBoard's reader)
        ray_events = read_event_scalars(sorted(trial_dir.glob("events.out.tfevents.*"))[-1])
        assert dict(ray_events["ray/tune/grad_norm_mean"]) == pytest.approx(means)
        own = _tensors(trial_dir / "work" / "monitor")
        assert {s: float(v) for s, v in own["grad_norm_mean"]} == pytest.approx(means, rel=1e-6)
        if t.number in shown:
            assert shown[t.number]["grad_norm_mean"] == pytest.approx([means[e] for e in sorted(means)])
            checked += 1
    assert checked >= 2


def test_msatune_train_seqlevel_writes_attention_tensorboard_reads(tiny_data: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    rc = main(["--workspace", str(tmp_path / "ws"), "train", "--data", str(tiny_data), "--preset", "seqlevel",
               "--epochs", "2", "--out", str(out), "--set", "model_dim=8", "--set", "num_heads=2",
               "--set", "ff_dim=16", "--set", "bidirectional_fusion=true"])
    assert rc == 0
    printed = capsys.readouterr().out
    lines = [ln for ln in printed.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2 and all("grad norm" in ln and "(max " in ln for ln in lines)
    assert f"tensorboard --logdir {out / 'monitor'}" in printed.replace("\n", "")
    tensors = _tensors(out / "monitor")
    for tag in ("grad_norm_mean", "grad_norm_fusion_max", "modality_weight_audio"):
        assert [s for s, _ in tensors[tag]] == [1, 2]
    for m in ("text_from_audio", "text_from_video", "audio_from_text", "video_from_text"):
        heads = tensors[f"attention_map/{m}"][-1][1]
        assert heads.ndim == 3 and heads.shape[0] == 2
        np.testing.assert_allclose(heads.sum(axis=-1), 1.0, atol=1e-4)
        assert [s for s, _ in tensors[f"attention/{m}"]] == [1, 2]
