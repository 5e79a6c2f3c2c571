"""Monitoring a training run: gradient norms from inside the train step, attention at epoch end,
both in the epoch reports and in a TensorBoard event file TensorBoard's own reader reads."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from msatune.augment.pipeline import make_datasets
from msatune.models.monitoring import ATTENTION_FILE, branch_of
from msatune.models.training import train_model
from tests.conftest import make_tiny_arrays

DIMS = {"text": 4, "audio": 3, "video": 2}
SMALL = {"model_dim": 8, "num_heads": 2, "ff_dim": 16, "n_layers_mod": 1, "n_layers_fuse": 1}


def _fixed_order(arrays: dict, batch: int) -> dict[str, tf.data.Dataset]:
    """Unshuffled batches, so a test can recompute each step's gradients."""
    def ds(split: str) -> tf.data.Dataset:
        a = arrays[split]
        x = {m: a[m] for m in ("text", "audio", "video")}
        return tf.data.Dataset.from_tensor_slices((x, a["labels"])).batch(batch)

    return {"train": ds("train"), "valid": ds("valid")}


def test_branch_rule_covers_every_family_and_names_the_shared_pool() -> None:
    from msatune.models.build import build_model

    seen = {}
    for family in ("baseline", "improved", "seqlevel"):
        model = build_model({"family": family, **SMALL}, DIMS, 5)
        seen[family] = {branch_of(v.path) for v in model.trainable_variables}
        for v in model.trainable_variables:  # a modality's branch holds only that modality's layers
            b = branch_of(v.path)
            if b in ("text", "audio", "video"):
                assert v.path.startswith(f"{b}_")
    assert seen["baseline"] == seen["seqlevel"] == {"text", "audio", "video", "fusion", "head"}
    assert seen["improved"] == {"text", "audio", "video", "fusion", "head", "shared"}  # attention_pool
    assert branch_of("attention_pool/query") == "shared"


def test_gradient_norms_are_the_steps_norms_and_leave_training_unchanged() -> None:
    """At a vanishing learning rate every step sees the initial weights: the recorded per-epoch
    mean and max must be those of the gradients recomputed batch by batch."""
    import keras

    arrays = make_tiny_arrays(sizes=(24, 8, 4))
    config = {"family": "baseline", **SMALL, "dropout": 0.0, "adaptive_fusion": False, "loss": "mae", "epochs": 2, "patience": 0,
              "warmup_epochs": 0, "batch_size": 8, "learning_rate": 1e-30, "seed": 3}
    reports = []
    result = train_model(config, _fixed_order(arrays, 8), DIMS, on_epoch=reports.append)
    model = result.model
    per_step = []
    for x, y in _fixed_order(arrays, 8)["train"]:
        with tf.GradientTape() as tape:
            loss = model.loss(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        by_branch: dict[str, float] = {}
        for g, v in zip(grads, model.trainable_variables, strict=True):
            by_branch[branch_of(v.path)] = by_branch.get(branch_of(v.path), 0.0) + float(tf.reduce_sum(g * g))
        per_step.append({"": sum(by_branch.values()) ** 0.5, **{f"{b}_": s ** 0.5 for b, s in by_branch.items()}})
    assert len(per_step) == 3
    for report, kept in zip(reports, result.monitor, strict=True):
        assert report.monitor == kept
        for key in ("", "text_", "audio_", "video_", "fusion_", "head_"):
            norms = [s[key] for s in per_step]
            assert kept[f"grad_norm_{key}mean"] == pytest.approx(np.mean(norms), rel=1e-4)
            assert kept[f"grad_norm_{key}max"] == pytest.approx(max(norms), rel=1e-4)
        assert not any(k.startswith("modality_weight") for k in kept)  # no adaptive fusion: no probe

    # Monitoring observes only: the same run without it trains the same weights.
    keras.backend.clear_session()
    plain = train_model({**config, "learning_rate": 0.01}, _fixed_order(arrays, 8), DIMS, monitor=False)
    keras.backend.clear_session()
    watched = train_model({**config, "learning_rate": 0.01}, _fixed_order(arrays, 8), DIMS)
    assert plain.monitor == [{}, {}] and watched.history == plain.history
    for a, b in zip(watched.model.get_weights(), plain.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # the optimizer gets its own apply back
    assert "apply" not in watched.model.optimizer.__dict__


def _accumulator(log_dir: Path):
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(log_dir), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    return acc


def test_seqlevel_attention_and_gradients_reach_tensorboard(tmp_path: Path) -> None:
    from tensorboard.util import tensor_util

    arrays = make_tiny_arrays(sizes=(16, 12, 4), seq_len=6)
    datasets = make_datasets(arrays, batch_size=8, seed=0, eval_batch_size=5, drop_last_partial=True)
    config = {"family": "seqlevel", **SMALL, "bidirectional_fusion": True, "epochs": 3, "patience": 0,
              "warmup_epochs": 0, "batch_size": 8, "learning_rate": 0.01}
    reports = []
    result = train_model(config, datasets, DIMS, seq_len=6, on_epoch=reports.append, monitor_dir=tmp_path)

    acc = _accumulator(tmp_path)
    tags = acc.Tags()
    maps = ("text_from_audio", "text_from_video", "audio_from_text", "video_from_text")
    # TF2 summaries are tensors with their plugin's name: images for TensorBoard's image tab
    assert {f"attention/{m}" for m in maps} | {f"attention_map/{m}" for m in maps} <= set(tags["tensors"])
    assert {acc.SummaryMetadata(f"attention/{m}").plugin_data.plugin_name for m in maps} == {"images"}
    assert acc.SummaryMetadata("grad_norm_mean").plugin_data.plugin_name == "scalars"
    for key in ("grad_norm_mean", "grad_norm_max", "grad_norm_fusion_max", "modality_weight_text"):
        events = acc.Tensors(key)
        assert [e.step for e in events] == [1, 2, 3]  # 1-based epochs, as Ray reports them
        got = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in events]
        assert got == pytest.approx([r.monitor[key] for r in reports], rel=1e-6)
    for r in reports:
        w = [r.monitor[f"modality_weight_{m}"] for m in ("text", "audio", "video")]
        assert sum(w) == pytest.approx(1.0, abs=1e-5) and min(w) > 0
        assert r.monitor["grad_norm_max"] >= r.monitor["grad_norm_mean"] > 0
    for m in maps:
        heads = tensor_util.make_ndarray(acc.Tensors(f"attention_map/{m}")[-1].tensor_proto)
        assert heads.shape == (2, 6, 6)  # (heads, query steps, context steps)
        np.testing.assert_allclose(heads.sum(axis=-1), 1.0, atol=1e-4)  # each query's weights
        images = acc.Tensors(f"attention/{m}")
        assert [e.step for e in images] == [1, 2, 3]
        width, height, png = tensor_util.make_ndarray(images[-1].tensor_proto)
        assert (int(width), int(height)) == (6, 6) and png.startswith(b"\x89PNG")

    # attention.npz holds the best epoch's maps: those of the returned (best) model on valid
    with np.load(tmp_path / ATTENTION_FILE) as saved:
        assert int(saved["epoch"]) == result.best_epoch + 1
        probe = result.model.attention_probe()
        sums, n = None, 0
        for x, _ in datasets["valid"]:
            out = np.asarray(probe(x, training=False)["text<-audio"], np.float64)
            sums = out.sum(axis=0) + (0 if sums is None else sums)
            n += out.shape[0]
        np.testing.assert_allclose(saved["text_from_audio"], sums / n, rtol=1e-4, atol=1e-6)


def test_improved_family_reports_its_adaptive_fusion_weights(tmp_path: Path) -> None:
    arrays = make_tiny_arrays(sizes=(16, 6, 4))
    datasets = make_datasets(arrays, batch_size=8, seed=0, eval_batch_size=4, drop_last_partial=True)
    config = {"family": "improved", **SMALL, "epochs": 2, "patience": 0, "warmup_epochs": 0,
              "batch_size": 8, "learning_rate": 0.01}
    result = train_model(config, datasets, DIMS, monitor_dir=tmp_path)
    for epoch in result.monitor:
        w = [epoch[f"modality_weight_{m}"] for m in ("text", "audio", "video")]
        assert sum(w) == pytest.approx(1.0, abs=1e-5)
        assert epoch["grad_norm_shared_mean"] > 0
    # the probe's text/audio/video order, from the model's text/video/audio fusion tokens
    x = next(iter(datasets["valid"]))[0]
    fusion = result.model.get_layer("fusion_weights")
    import keras

    tokens = keras.Model(result.model.inputs, fusion.output)(x, training=False)
    probed = result.model.attention_probe()(x, training=False)["modality_weights"]
    np.testing.assert_allclose(np.asarray(probed), np.asarray(tokens)[:, [0, 2, 1]], rtol=1e-6)
    assert "attention_map/text_from_audio" not in _accumulator(tmp_path).Tags()["tensors"]


def _graph_names() -> Counter:
    """Every traced graph alive, by name without its numeric suffixes (``while_cond_2078``); not
    Keras' ``scratch_graph`` s (its shape inference when a functional model is built)."""
    import gc

    from tensorflow.python.framework.func_graph import FuncGraph

    names = (re.sub(r"_\d+", "", o.name) for o in gc.get_objects() if isinstance(o, FuncGraph))
    return Counter(n for n in names if n != "scratch_graph")


@pytest.mark.parametrize("family", ["improved", "seqlevel"])
def test_validation_and_the_attention_probe_are_one_traced_pass(family: str) -> None:
    """A monitored epoch probes attention in its validation pass: no graph beyond an unmonitored
    run's (the probe was a second traced forward pass, run again every epoch), and the trial's
    test predictions reuse that graph. Monitoring still only observes: the same history and
    predictions as the unmonitored run, bit for bit, and those of the model's own forward pass."""
    import keras

    from msatune.models.prediction import predict

    arrays = make_tiny_arrays(sizes=(16, 6, 5), seq_len=6)
    config = {"family": family, **SMALL, "epochs": 2, "patience": 0, "warmup_epochs": 0, "batch_size": 8,
              "learning_rate": 0.01}
    runs = {}
    for monitor in (False, True):
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)  # the shuffle's seed is global + op seed (search.trial.build_pipelines)
        datasets = make_datasets(arrays, batch_size=8, seed=0, eval_batch_size=4, drop_last_partial=True)
        before, reports = _graph_names(), []
        result = train_model(config, datasets, DIMS, seq_len=6, on_epoch=reports.append, monitor=monitor)
        test = predict(result.model, datasets["test"])
        runs[monitor] = (result, reports, test, _graph_names() - before)
    (plain, plain_reports, plain_test, plain_graphs), (watched, reports, test, graphs) = runs[False], runs[True]
    assert all(r.monitor["modality_weight_text"] > 0 for r in reports)  # the probe ran every epoch
    assert graphs == plain_graphs, graphs - plain_graphs
    assert result.model._msatune_forward.experimental_get_tracing_count() == 1
    assert watched.history == plain.history
    for a, b in zip(reports, plain_reports, strict=True):
        np.testing.assert_array_equal(a.valid_predictions, b.valid_predictions)
    np.testing.assert_array_equal(test, plain_test)


def test_training_goes_on_with_one_warning_when_the_event_file_cannot_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # what a venv without tensorboard does (TensorFlow 2.21 no longer installs it): tf.summary
    # raises at the first write; the training, its metrics and its checkpointable model survive
    from tensorflow.python.summary.tb_summary import TBNotInstalledError

    def missing(*args: object, **kwargs: object) -> None:
        raise TBNotInstalledError("TensorBoard is not installed, missing implementation for summary.scalar")

    monkeypatch.setattr(tf.summary, "scalar", missing)
    arrays = make_tiny_arrays(sizes=(16, 6, 4))
    datasets = make_datasets(arrays, batch_size=8, seed=0, eval_batch_size=4, drop_last_partial=True)
    config = {"family": "improved", **SMALL, "epochs": 3, "patience": 0, "warmup_epochs": 0,
              "batch_size": 8, "learning_rate": 0.01}
    with caplog.at_level("WARNING", logger="msatune.models.monitoring"):
        result = train_model(config, datasets, DIMS, monitor_dir=tmp_path / "monitor")
    assert result.epochs_trained == 3
    assert len(result.monitor) == 3
    assert all(e["grad_norm_mean"] > 0 for e in result.monitor)  # still measured, only not written
    warnings = [r.getMessage() for r in caplog.records if r.name == "msatune.models.monitoring"]
    assert len(warnings) == 1 and "pip install tensorboard" in warnings[0] and "TBNotInstalledError" in warnings[0]
