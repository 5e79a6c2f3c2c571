"""One trial, outside Ray: the same config trains the same in any process state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.mark.slow
def test_a_trial_trains_the_same_whether_or_not_another_ran_before_it(tiny_data: Path) -> None:
    """A reused Ray actor runs trials one after another in one process: the earlier trial's seed
    must not leak into the next one's shuffle order (TF mixes the global seed into op seeds)."""
    from msatune.augment.dataset import load_dataset
    from msatune.search.trial import run_trial
    from msatune.search.trial_config import resolve_config

    data = load_dataset(tiny_data)
    small = ["model_dim=16", "ff_dim=32", "num_heads=2", "n_layers_mod=1", "batch_size=8", "patience=0"]
    config = resolve_config("improved", small, epochs=2)
    first = [h["val_mae"] for h in run_trial(config, data).result.history]
    run_trial({**config, "seed": 7}, data)
    again = [h["val_mae"] for h in run_trial(config, data).result.history]
    assert again == first


@pytest.mark.slow
def test_a_search_trial_checkpoints_weights_on_improvement_and_predicts_test_once(
    tiny_data: Path, tmp_path: Path
) -> None:
    """The checkpoint reported on an improving epoch holds weights + validation predictions;
    the last epoch's report carries the best epoch's weights again with test predicted once."""
    from msatune.augment.dataset import load_dataset
    from msatune.models.checkpoint import (
        load_checkpoint,
        missing_predictions,
        read_checkpoint_meta,
        read_predictions,
    )
    from msatune.models.training import predict
    from msatune.search.trial import build_pipelines, run_trial
    from msatune.search.trial_config import resolve_config

    data = load_dataset(tiny_data)
    small = ["model_dim=16", "ff_dim=32", "num_heads=2", "n_layers_mod=1", "batch_size=8", "patience=0",
             "lr_schedule=constant", "learning_rate=0.003"]
    config = resolve_config("improved", small, epochs=4)
    seen = []

    def on_epoch(report, extra):
        ckpt = extra.get("checkpoint")
        seen.append((report.epoch, report.improved, report.last,
                     missing_predictions(ckpt) if ckpt else None, report.valid_predictions))

    outcome = run_trial(config, data, on_epoch=on_epoch, checkpoint_every_improvement=True,
                        checkpoint_dir=tmp_path / "ckpt")
    best = outcome.result.best_epoch
    for epoch, improved, last, missing, _ in seen:
        if last:
            assert missing == ()
        elif improved:
            assert missing == ("test",), epoch
        else:
            assert missing is None, epoch  # nothing written, nothing reported
    assert seen[-1][2]
    ckpt = tmp_path / "ckpt"
    _, meta = read_checkpoint_meta(ckpt)
    assert meta["best_epoch"] == best
    preds = read_predictions(ckpt)
    # the best epoch's validation pass, and test predicted with the same (best) weights
    np.testing.assert_array_equal(preds["valid_pred"], seen[best][4])
    model, _, _ = load_checkpoint(ckpt)
    datasets = build_pipelines(config, data)
    np.testing.assert_allclose(preds["valid_pred"], predict(model, datasets["valid"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(preds["test_pred"], predict(model, datasets["test"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outcome.predictions["test_pred"], preds["test_pred"])


def test_the_rung_signal_ranks_by_training_mae_early_and_adds_validation_later() -> None:
    """ASHA's first rung (epoch 3) compares training MAE alone: a configuration that fits well
    but whose small validation split still spikes is not cut for the spike; from epoch 9 the
    best validation MAE so far counts half (benchmarks/README.md, rung_fidelity on 3 structures)."""
    from msatune.search.trainable import rung_score

    fits_spiky = {"best_val_mae": 2.4, "train_mae": 0.7}  # fits; validation still noisy
    flat = {"best_val_mae": 1.3, "train_mae": 1.2}  # near the constant predictor
    for epoch in (1, 2, 3):
        assert rung_score(**fits_spiky, epoch=epoch) == 0.7
        assert rung_score(**fits_spiky, epoch=epoch) < rung_score(**flat, epoch=epoch)
    assert rung_score(**fits_spiky, epoch=9) == rung_score(**fits_spiky, epoch=27) == pytest.approx(1.55)
    assert rung_score(**fits_spiky, epoch=9) > rung_score(**flat, epoch=9)
    ramp = [rung_score(**fits_spiky, epoch=e) for e in range(3, 10)]
    assert ramp == sorted(ramp) and len(set(ramp)) == len(ramp)  # the validation share grows each epoch
