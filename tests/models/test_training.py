"""The training loop's own validation (through ``predict``) must report what Keras would."""

from __future__ import annotations

import numpy as np
import pytest

from msatune.augment.pipeline import make_datasets
from msatune.models.training import predict, train_model
from tests.conftest import make_tiny_arrays

DIMS = {"text": 4, "audio": 3, "video": 2}
SMALL = {"model_dim": 8, "num_heads": 2, "ff_dim": 16, "n_layers_mod": 1, "n_layers_fuse": 1}


@pytest.mark.parametrize(
    ("loss", "l2"),
    [("huber", 0.01), ("mae", 0.0)],
)
def test_reported_validation_metrics_match_keras_evaluate(loss, l2):
    import keras

    arrays = make_tiny_arrays(sizes=(24, 11, 9))
    datasets = make_datasets(arrays, batch_size=8, seed=0, eval_batch_size=4)
    config = {"family": "improved", **SMALL, "loss": loss, "huber_delta": 0.5, "l2": l2,
              "epochs": 3, "patience": 0, "warmup_epochs": 0, "batch_size": 8, "learning_rate": 0.01}
    reports = []
    result = train_model(config, datasets, DIMS, on_epoch=reports.append)

    best = result.history[result.best_epoch]
    # The returned model holds the best epoch's weights: Keras' own evaluation must agree.
    evaluated = result.model.evaluate(datasets["valid"], return_dict=True, verbose=0)
    assert best["val_mae"] == pytest.approx(evaluated["mae"], rel=1e-5)
    assert best["val_mse"] == pytest.approx(evaluated["mse"], rel=1e-5)
    assert best["val_loss"] == pytest.approx(evaluated["loss"], rel=1e-5)
    if l2 > 0:  # the regularization term is part of the loss, as in Keras
        assert sum(float(keras.ops.convert_to_numpy(v)) for v in result.model.losses) > 0

    # Every epoch hands over its validation predictions, in sample order.
    labels = arrays["valid"]["labels"].reshape(-1)
    for report in reports:
        assert report.valid_predictions.shape == labels.shape
        mae = float(np.mean(np.abs(report.valid_predictions - labels)))
        assert report.metrics["val_mae"] == pytest.approx(mae, rel=1e-5)


def test_predict_matches_keras_and_traces_once_for_all_batch_shapes():
    from msatune.models.build import build_model

    arrays = make_tiny_arrays(sizes=(4, 11, 9))
    model = build_model({"family": "improved", **SMALL}, DIMS)
    ds_a = make_datasets(arrays, batch_size=4, eval_batch_size=4)
    ds_b = make_datasets(arrays, batch_size=4, eval_batch_size=5)
    for ds in (ds_a, ds_b):
        for split in ("valid", "test"):
            got = predict(model, ds[split])
            want = model.predict(ds[split].map(lambda x, y: x), verbose=0).reshape(-1)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # 11 and 9 samples in batches of 4 and 5: six batch shapes, one graph.
    assert model._msatune_forward.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("update", ["grouped", "keras"])
def test_a_finished_training_leaves_no_train_graph_behind(update, monkeypatch):
    """Trials run one after another in a reused Ray worker: each must free its traced train step.

    TensorFlow's custom-gradient registry used to pin every train step's graph (~75 MB per
    improved-model trial, growing without bound on a long study): Keras' own optimizer registers
    one per step trace (its gradient all-reduce), which models.graph_registry releases; msatune's
    grouped update (models.optimizers, the default) registers none.
    """
    import msatune.models.recipe as recipe
    import msatune.models.training as training

    stock = recipe.make_optimizer
    monkeypatch.setattr(training, "make_optimizer", lambda settings: stock(settings, update=update))
    import gc

    import keras
    from tensorflow.python.framework.func_graph import FuncGraph

    from msatune.models.graph_registry import custom_gradient_count

    def train_step_graphs() -> int:
        return sum(
            1 for o in gc.get_objects() if isinstance(o, FuncGraph) and o.name == "one_step_on_data"
        )

    arrays = make_tiny_arrays(sizes=(16, 6, 6))
    config = {"family": "improved", **SMALL, "epochs": 1, "patience": 0, "warmup_epochs": 0,
              "batch_size": 8}
    keras.backend.clear_session()
    gc.collect()
    graphs_before, registered_before = train_step_graphs(), custom_gradient_count()
    registered_while_training = []
    datasets = make_datasets(arrays, batch_size=8, seed=0, eval_batch_size=6)
    result = train_model(
        config, datasets, DIMS,
        on_epoch=lambda _: registered_while_training.append(custom_gradient_count()),
    )
    assert np.isfinite(predict(result.model, datasets["test"])).all()  # still usable after
    del result, datasets
    keras.backend.clear_session()
    gc.collect()
    assert custom_gradient_count() == registered_before
    assert train_step_graphs() == graphs_before
    if update != "keras":
        assert max(registered_while_training) == registered_before
    else:  # the checks above are not vacuous: Keras' optimizer does register custom gradients
        assert min(registered_while_training) > registered_before


def _graphs(name: str) -> int:
    import gc

    from tensorflow.python.framework.func_graph import FuncGraph

    return sum(1 for o in gc.get_objects() if isinstance(o, FuncGraph) and o.name == name)


def test_steps_per_execution_leaves_results_equal_and_each_graph_is_traced_once():
    """Running several steps per call of the traced function runs the same steps in the same
    order: identical history and weights, every step taken, one train and one predict trace."""
    import keras

    arrays = make_tiny_arrays(sizes=(40, 11, 9))
    config = {"family": "improved", **SMALL, "epochs": 3, "patience": 0, "warmup_epochs": 1,
              "batch_size": 8, "learning_rate": 0.01}
    runs = {}
    for spe in (1, 2, None):  # 5 steps per epoch: 2 does not divide it; None = a whole epoch
        import gc

        keras.backend.clear_session()
        gc.collect()
        before = _graphs("one_step_on_data")
        datasets = make_datasets(arrays, batch_size=8, seed=0, eval_batch_size=4, drop_last_partial=True)
        traces: list[tuple[int, int]] = []

        def on_epoch(report, traces=traces, before=before):
            forward = report.model._msatune_forward.experimental_get_tracing_count()
            traces.append((_graphs("one_step_on_data") - before, forward))

        result = train_model(config, datasets, DIMS, steps_per_execution=spe, on_epoch=on_epoch)
        assert int(result.model.optimizer.iterations.numpy()) == 3 * 5
        assert result.model.steps_per_execution == (spe or 5)
        assert traces == [(1, 1)] * 3  # one train-step graph, one forward graph, for all epochs
        runs[spe] = result
    for spe in (2, None):
        assert runs[spe].history == runs[1].history
        for a, b in zip(runs[spe].model.get_weights(), runs[1].model.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
