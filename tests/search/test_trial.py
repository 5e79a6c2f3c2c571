"""One trial, outside Ray: the same config trains the same in any process state."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow
def test_a_trial_trains_the_same_whether_or_not_another_ran_before_it(tiny_data: Path) -> None:
    """A reused Ray actor runs trials one after another in one process: the earlier trial's seed
    must not leak into the next one's shuffle order (TF mixes the global seed into op seeds)."""
    from msatune.augment.dataset import load_dataset
    from msatune.search.config import resolve_config
    from msatune.search.trial import run_trial

    data = load_dataset(tiny_data)
    small = ["model_dim=16", "ff_dim=32", "num_heads=2", "n_layers_mod=1", "batch_size=8", "patience=0"]
    config = resolve_config("improved", small, epochs=2)
    first = [h["val_mae"] for h in run_trial(config, data).result.history]
    run_trial({**config, "seed": 7}, data)
    again = [h["val_mae"] for h in run_trial(config, data).result.history]
    assert again == first
