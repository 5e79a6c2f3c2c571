"""A kept compiled step (models.step_cache) trains exactly like a fresh build, and saves the trace."""

from __future__ import annotations

import numpy as np
import pytest

from msatune.augment.pipeline import make_datasets
from msatune.models.step_cache import StepCache, graph_key
from msatune.models.training import train_model
from tests.conftest import make_tiny_arrays

DIMS = {"text": 4, "audio": 3, "video": 2}
#: the improved recipe's frame at tiny size: cosine warm-up, dropout, AdamW, clipnorm, Huber, L2
CONFIG = {"family": "improved", "model_dim": 8, "num_heads": 2, "ff_dim": 16, "n_layers_mod": 1,
          "n_layers_fuse": 1, "adaptive_fusion": True, "dropout": 0.3, "l2": 1e-3, "optimizer": "adamw",
          "weight_decay": 0.01, "clipnorm": 1.0, "loss": "huber", "huber_delta": 0.8,
          "lr_schedule": "cosine", "warmup_epochs": 1, "cosine_epochs": 0, "learning_rate": 3e-3,
          "epochs": 4, "patience": 0, "batch_size": 8}


def _datasets(n_train: int, seed: int) -> dict:
    arrays = make_tiny_arrays(sizes=(n_train, 11, 9), seed=seed)
    return make_datasets(arrays, batch_size=8, seed=seed, eval_batch_size=5, drop_last_partial=True)


def _train(config: dict, n_train: int, cache: StepCache | None, data_seed: int = 0):
    import keras

    keras.utils.set_random_seed(int(config["seed"]))  # as search.trial.build_pipelines does
    result = train_model(config, _datasets(n_train, data_seed), DIMS, step_cache=cache)
    history = [{k: v for k, v in row.items()} for row in result.history]
    weights = [np.copy(w) for w in result.model.get_weights()]
    return result, history, weights, result.monitor


def _same(a, b) -> None:
    (_, hist_a, w_a, mon_a), (_, hist_b, w_b, mon_b) = a, b
    assert len(hist_a) == len(hist_b)
    for row_a, row_b in zip(hist_a, hist_b, strict=True):
        for key in row_a:
            assert row_b[key] == pytest.approx(row_a[key], rel=1e-6, abs=1e-7), key
    for x, y in zip(w_a, w_b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    for m_a, m_b in zip(mon_a, mon_b, strict=True):  # gradient norms: the accumulators were reset
        assert m_a.keys() == m_b.keys()
        for key in m_a:
            assert m_b[key] == pytest.approx(m_a[key], rel=1e-5), key


def test_a_run_on_a_kept_step_trains_as_a_fresh_build_and_does_not_trace():
    cache = StepCache()
    first = _train({**CONFIG, "seed": 1}, 40, cache)
    assert first[0].traces >= 1 and len(cache) == 0  # nothing kept until the caller hands it back
    cache.keep(first[0].compiled)

    # The next fold of this configuration: other seed, other data, another number of steps per
    # epoch (48 samples: 6 batches, the first run's 5 were its compiled steps per call).
    second = _train({**CONFIG, "seed": 2, "learning_rate": 1e-3, "epochs": 3}, 48, cache, data_seed=5)
    assert cache.hits == 1
    assert second[0].traces == 0, "the kept train step was traced again"
    assert second[0].model is first[0].model

    fresh = _train({**CONFIG, "seed": 2, "learning_rate": 1e-3, "epochs": 3}, 48, None, data_seed=5)
    assert fresh[0].traces >= 1
    _same(second, fresh)


def test_a_run_of_another_graph_traces_and_empties_the_cache():
    cache = StepCache()
    first = _train({**CONFIG, "seed": 1, "epochs": 2}, 40, cache)
    cache.keep(first[0].compiled)
    wider = _train({**CONFIG, "seed": 1, "epochs": 2, "dropout": 0.1}, 40, cache)
    assert cache.misses == 2 and cache.hits == 0
    assert wider[0].traces >= 1 and wider[0].model is not first[0].model
    assert len(cache) == 0  # the old graph went before the new one was built


def test_the_graph_key_ignores_only_what_the_train_step_never_reads():
    spec = _datasets(16, 0)["train"].element_spec

    def key(**change):
        return graph_key({**CONFIG, "seed": 0, **change}, DIMS, None, spec, monitor=True, mixed_precision=False)

    same = [key(seed=9), key(learning_rate=1.0), key(epochs=99, patience=3), key(warmup_epochs=0),
            key(aug_noise=0.2)]
    assert all(k == key() for k in same)
    differ = [key(dropout=0.31), key(l2=0.5), key(weight_decay=0.2), key(huber_delta=1.0), key(model_dim=16),
              key(optimizer="adam"), key(clipnorm=0.0), key(some_new_model_key=1)]
    assert all(k != key() for k in differ)
    assert graph_key({**CONFIG}, DIMS, None, _datasets(16, 0)["train"].element_spec, monitor=False,
                     mixed_precision=False) != graph_key({**CONFIG}, DIMS, None, spec, monitor=True,
                                                         mixed_precision=False)
    other_batch = make_datasets(make_tiny_arrays(sizes=(16, 11, 9)), batch_size=4, drop_last_partial=True)
    assert graph_key(CONFIG, DIMS, None, other_batch["train"].element_spec, monitor=True,
                     mixed_precision=False) != graph_key(CONFIG, DIMS, None, spec, monitor=True, mixed_precision=False)


def test_msatune_step_cache_0_turns_the_process_cache_off(monkeypatch):
    from msatune.models.step_cache import STEP_CACHE_ENV, process_step_cache

    monkeypatch.delenv(STEP_CACHE_ENV, raising=False)
    cache = process_step_cache()
    assert isinstance(cache, StepCache)
    monkeypatch.setenv(STEP_CACHE_ENV, "0")
    assert process_step_cache() is None
    monkeypatch.setenv(STEP_CACHE_ENV, "1")
    assert process_step_cache() is cache
