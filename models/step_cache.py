"""Compiled training steps kept between runs of one graph in a process (a reused Ray actor).

A training run's fixed cost on a CPU is tracing: Keras traces the train step (forward, gradient,
clipping, the optimizer's update of every variable), Grappler rewrites it, and msatune's
validation forward pass and attention probe are traced once more; 5-9 s for the improved model,
against ~1.3 s per epoch of steps at MOSI's size (benchmarks/README.md, "Profile"). Two runs
whose train step is the same graph (the folds of one configuration in a refit, the repeats of a
seed study, a trial that re-runs its configuration) need not trace it twice.

What makes a graph (:func:`graph_key`) is every config key except those the train step never
reads: the seed (initial weights and dropout seeds are variables' values), the epoch budget and
early stopping, the learning-rate schedule (the rate is a variable the driver sets each epoch)
and the ``aug_*`` strengths (the ``tf.data`` pipeline, outside the graph); plus the model's dims,
sequence length, the training batches' spec (batch size and shapes), monitoring and mixed
precision. Unknown keys count, so a new model key can only cost a trace, never reuse a wrong graph.

A run that finds its key (:meth:`StepCache.take`) gets the previous run's compiled model back with
every variable set to what a fresh build would hold: the model is built anew under the run's seed
(building creates variables, it traces nothing) and its weights, BatchNorm statistics and dropout
seed states are copied in, the optimizer's step count, slots and rate are copied from a fresh
optimizer, the gradient-norm accumulators are zeroed, and Keras resets the metrics each epoch.
Same seed, same data -> the same per-epoch metrics as a run without the cache
(tests/models/test_step_cache.py).

The cache holds at most one compiled run, and only one its caller handed back
(:meth:`StepCache.keep`) after it was done with the model: a run that takes it trains in place,
so a model still in use must never be kept. A run whose key misses empties the cache before it
builds, so a process never holds more graphs than without the cache.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# TensorFlow loads with the training code, not with this module: the CLI reads STEP_CACHE_ENV
# before anything trains.
if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

#: Config keys the traced train step never reads (see the module doc); ``aug_*`` keys too.
PYTHON_SIDE_KEYS = frozenset({
    "seed", "epochs", "patience", "early_stop_metric",
    "learning_rate", "lr_schedule", "warmup_epochs", "cosine_epochs",
    "plateau_metric", "plateau_factor", "plateau_patience", "min_lr",
})


def graph_key(
    config: Mapping[str, Any],
    dims: Mapping[str, int],
    seq_len: int | None,
    train_spec: Any,
    *,
    monitor: bool,
    mixed_precision: bool,
) -> str:
    """What decides a run's train-step graph, as a string (equal strings: the same graph)."""
    import tensorflow as tf

    graph_config = {k: v for k, v in config.items() if k not in PYTHON_SIDE_KEYS and not str(k).startswith("aug_")}
    specs = [(s.shape.as_list(), s.dtype.name) for s in tf.nest.flatten(train_spec)]
    return json.dumps(
        {"config": graph_config, "dims": dict(dims), "seq_len": seq_len, "train_spec": specs,
         "monitor": bool(monitor), "mixed_precision": bool(mixed_precision)},
        sort_keys=True, default=str,
    )


@dataclass
class CompiledRun:
    """A finished run's compiled model and what its traced step writes to."""

    key: str
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    grads: Any = None  # the monitoring.GradientNorms the traced step records into (None: unmonitored)
    probe: Any = None  # the monitoring.AttentionProbe (its graph is the model's forward pass, kept on it)
    #: how many times the train step's Python body ran, i.e. was traced, over the runs it served
    traces: list[int] = field(default_factory=lambda: [0])


class StepCache:
    """At most one :class:`CompiledRun`, handed back by a caller done with its model."""

    def __init__(self) -> None:
        self._run: CompiledRun | None = None
        self.hits = 0
        self.misses = 0

    def take(self, key: str) -> CompiledRun | None:
        """The kept run if its graph is ``key``'s (it leaves the cache); otherwise None, and the
        cache is emptied so the old graph can go before the new one is built."""
        run, self._run = self._run, None
        if run is not None and run.key == key:
            self.hits += 1
            return run
        self.misses += 1
        return None

    def keep(self, run: CompiledRun | None) -> None:
        """Keep ``run`` for the next run of its graph: its caller will not use the model again."""
        if run is not None:
            self._run = run

    def clear(self) -> None:
        self._run = None

    def __len__(self) -> int:
        return 0 if self._run is None else 1


_PROCESS_CACHE = StepCache()

#: ``MSATUNE_STEP_CACHE=0`` turns the cache off (every run traces; for comparisons, or if a run on
#: a kept step ever looked wrong). Ray's local workers inherit the driver's environment.
STEP_CACHE_ENV = "MSATUNE_STEP_CACHE"


def process_step_cache() -> StepCache | None:
    """The step cache of this process (one per Ray worker: a reused actor's trials share it);
    None when ``$MSATUNE_STEP_CACHE`` is ``0``."""
    if os.environ.get(STEP_CACHE_ENV, "1").strip() in {"0", "false", "off", "no"}:
        _PROCESS_CACHE.clear()
        return None
    return _PROCESS_CACHE


def count_traces(model: keras.Model, traces: list[int]) -> None:
    """Count in ``traces[0]`` every run of ``model.train_step``'s Python body: in graph mode it
    runs only while Keras traces the step (Keras reads the attribute when it makes its train
    function, so this must come before the first ``fit``)."""
    step = model.train_step

    def counted(*args: Any, **kwargs: Any) -> Any:
        traces[0] += 1
        return step(*args, **kwargs)

    object.__setattr__(model, "train_step", counted)  # not a tracked Keras attribute


def reuse_run(run: CompiledRun, fresh: keras.Model, optimizer: keras.optimizers.Optimizer) -> CompiledRun | None:
    """``run`` with the values of a fresh build (same config and seed): ``fresh``'s variables and
    those of ``optimizer`` built on them, the gradient-norm accumulators zeroed. None when the two
    do not match variable for variable (the caller then compiles ``fresh``)."""
    optimizer.build(fresh.trainable_variables)
    try:
        _copy(fresh.variables, run.model.variables, "model")
        _copy(optimizer.variables, run.optimizer.variables, "optimizer")
    except ValueError as exc:  # a key that missed a graph difference: build anew, never train a wrong graph
        log.warning("compiled step not reused: %s", exc)
        return None
    if run.grads is not None:
        run.grads.reset()
    return run


def _copy(source: list[Any], target: list[Any], what: str) -> None:
    if len(source) != len(target):
        raise ValueError(f"{what} has {len(target)} variables, a fresh build {len(source)}")
    for src, dst in zip(source, target, strict=True):
        if tuple(src.shape) != tuple(dst.shape) or src.dtype != dst.dtype:
            raise ValueError(f"{what} variable {dst.path}: {dst.shape} {dst.dtype} vs fresh {src.shape} {src.dtype}")
    for src, dst in zip(source, target, strict=True):
        dst.assign(src.value)
