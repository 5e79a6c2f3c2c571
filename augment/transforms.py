"""Graph-safe augmentation transforms on batches of multimodal sequences.

Every transform works on a *batch*: features are ``(B, T, D)`` float tensors keyed by modality
(``text``, ``audio``, ``video``), labels are ``(B, 1)`` (or ``(B,)``). Each takes its strength as
a plain Python number (a hyperparameter) and a shape-``(2,)`` integer seed for TensorFlow's
stateless random ops, so the same seed always gives the same augmentation, inside ``tf.data``
graphs as well as eagerly. Randomness depends on tensors only through ``tf.where``-style
selection: there is no Python ``if`` on a tensor. Each transform is the identity at strength 0,
and :func:`augment_batch` skips a transform whose strength is 0 altogether.

Strengths (the ``aug_*`` keys of a trial config, see :data:`AUG_DEFAULTS`):

- ``aug_noise``: standard deviation of additive gaussian noise (features are roughly unit scale).
- ``aug_time_mask``: max fraction of ``T`` zeroed, as one contiguous span per sample per modality.
- ``aug_feature_drop``: probability of zeroing a whole feature dim (per sample, per modality).
- ``aug_modality_drop``: probability of zeroing a whole modality of a sample; never all of them.
- ``aug_time_shift``: max fraction of ``T`` to shift a sample by (zero padded, not wrapped); all
  modalities of a sample shift together, so they stay aligned.
- ``aug_mixup``: ``alpha`` of the ``Beta(alpha, alpha)`` mixing weight; mixes each sample with a
  permuted partner from the same batch, inputs and labels with the same weight.
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

from msatune.augment.aug_config import AUG_DEFAULTS, validate_aug_config

__all__ = [
    "AUG_DEFAULTS",
    "augment_batch",
    "feature_drop",
    "gaussian_noise",
    "mixup",
    "modality_drop",
    "time_mask",
    "time_shift",
    "validate_aug_config",
]

# Fixed fold-in constants, one per transform: a transform's randomness does not change when
# another transform is switched on or off.
_SALT = {
    "aug_noise": 1,
    "aug_time_mask": 2,
    "aug_feature_drop": 3,
    "aug_modality_drop": 4,
    "aug_time_shift": 5,
    "aug_mixup": 6,
}

# Slack when turning a fraction of T into a whole number of steps, so 0.35 * 20 gives 7, not 6.
_EPS = 1e-6


# ----------------------------------------------------------------------------- helpers


def _seed(seed: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.reshape(seed, [2]), tf.int64)


def _fold(seed: tf.Tensor, salt: int) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(seed, salt)


def _steps(fraction: float, length: tf.Tensor) -> tf.Tensor:
    """``floor(fraction * length)`` as int32, robust to float rounding."""
    value = tf.floor(tf.cast(length, tf.float64) * float(fraction) + _EPS)
    return tf.cast(value, tf.int32)


def _uniform_int(shape: tf.Tensor, seed: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
    """Integers uniform in ``[0, n)`` (``n`` >= 1, an int32 scalar or broadcastable tensor)."""
    u = tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32)
    k = tf.cast(tf.floor(u * tf.cast(n, tf.float32)), tf.int32)
    return tf.minimum(k, n - 1)  # u * n can round up to n in float32


def _bcast(v: tf.Tensor, rank: int) -> tf.Tensor:
    """Reshape a ``(B,)`` tensor to ``(B, 1, ..., 1)`` of the given rank."""
    return tf.reshape(v, tf.concat([[-1], tf.ones([rank - 1], tf.int32)], axis=0))


# ----------------------------------------------------------------------------- transforms


def gaussian_noise(x: tf.Tensor, std: float, seed: tf.Tensor) -> tf.Tensor:
    """Add ``N(0, std^2)`` noise to every element of ``x``."""
    noise = tf.random.stateless_normal(tf.shape(x), seed=_seed(seed), dtype=x.dtype)
    return x + tf.cast(std, x.dtype) * noise


def time_mask(x: tf.Tensor, max_fraction: float, seed: tf.Tensor) -> tf.Tensor:
    """Zero one contiguous span of time steps per sample of a ``(B, T, D)`` batch.

    The span length is uniform in ``[1, floor(max_fraction * T)]`` (no span when that is 0) and
    its start uniform over the positions where it fits; all feature dims of the span are zeroed.
    """
    seed = _seed(seed)
    shape = tf.shape(x)
    b, t = shape[0], shape[1]
    max_len = _steps(max_fraction, t)
    length = _uniform_int([b], _fold(seed, 0), tf.maximum(max_len, 1)) + 1
    length = tf.where(max_len > 0, length, tf.zeros_like(length))
    start = _uniform_int([b], _fold(seed, 1), t - length + 1)
    steps = tf.range(t)[tf.newaxis, :]
    masked = (steps >= start[:, tf.newaxis]) & (steps < (start + length)[:, tf.newaxis])
    return tf.where(masked[:, :, tf.newaxis], tf.zeros_like(x), x)


def feature_drop(x: tf.Tensor, prob: float, seed: tf.Tensor) -> tf.Tensor:
    """Zero each feature dim of each sample (across all time steps) with probability ``prob``.

    No rescaling of the kept dims (unlike dropout), so kept values are left exactly as they were.
    """
    shape = tf.shape(x)
    u = tf.random.stateless_uniform(
        tf.stack([shape[0], 1, shape[2]]), seed=_seed(seed), dtype=tf.float32
    )
    return tf.where(u < prob, tf.zeros_like(x), x)


def modality_drop(
    inputs: Mapping[str, tf.Tensor], prob: float, seed: tf.Tensor
) -> dict[str, tf.Tensor]:
    """Zero each whole modality of each sample with probability ``prob``, never all of them.

    When every modality of a sample is drawn for dropping, the one with the highest draw (a
    uniformly random one) is kept. A single-modality input is never dropped.
    """
    names = sorted(inputs)
    first = inputs[names[0]]
    b = tf.shape(first)[0]
    u = tf.random.stateless_uniform(tf.stack([b, len(names)]), seed=_seed(seed), dtype=tf.float32)
    drop = u < prob
    all_dropped = tf.reduce_all(drop, axis=1, keepdims=True)
    keep_one = tf.one_hot(tf.argmax(u, axis=1), len(names), on_value=True, off_value=False)
    drop = drop & ~(all_dropped & keep_one)
    out = {}
    for i, name in enumerate(names):
        x = inputs[name]
        out[name] = tf.where(_bcast(drop[:, i], len(x.shape)), tf.zeros_like(x), x)
    return out


def time_shift(
    inputs: Mapping[str, tf.Tensor], max_fraction: float, seed: tf.Tensor
) -> dict[str, tf.Tensor]:
    """Shift each sample along time by ``s`` steps, uniform in ``[-S, S]``, ``S = floor(f * T)``.

    Positive ``s`` delays (``out[t] = x[t - s]``); steps shifted in are zero, steps shifted out are
    lost (no wrap-around). All modalities of a sample shift by the same amount.
    """
    names = sorted(inputs)
    b = tf.shape(inputs[names[0]])[0]
    u = tf.random.stateless_uniform([b], seed=_seed(seed), dtype=tf.float32)
    out = {}
    for name in names:
        x = inputs[name]
        t = tf.shape(x)[1]
        max_shift = _steps(max_fraction, t)
        span = 2 * max_shift + 1
        shift = tf.minimum(tf.cast(tf.floor(u * tf.cast(span, tf.float32)), tf.int32), span - 1)
        shift -= max_shift
        src = tf.range(t)[tf.newaxis, :] - shift[:, tf.newaxis]  # (B, T)
        valid = (src >= 0) & (src < t)
        gathered = tf.gather(x, tf.clip_by_value(src, 0, t - 1), axis=1, batch_dims=1)
        out[name] = tf.where(valid[:, :, tf.newaxis], gathered, tf.zeros_like(x))
    return out


def mixup(
    inputs: Mapping[str, tf.Tensor], labels: tf.Tensor, alpha: float, seed: tf.Tensor
) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """Mix each sample with a partner from a random permutation of the batch.

    Per sample ``lam ~ Beta(alpha, alpha)``; ``x' = lam * x + (1 - lam) * x[perm]`` for every
    modality and ``y' = lam * y + (1 - lam) * y[perm]`` with the same ``lam``. ``alpha == 0``
    returns the inputs unchanged. Works for any batch size, including 1 (a sample mixed with
    itself is itself).
    """
    if alpha <= 0:
        return dict(inputs), labels
    seed = _seed(seed)
    b = tf.shape(labels)[0]
    perm = tf.argsort(tf.random.stateless_uniform([b], seed=_fold(seed, 0)))
    g = tf.random.stateless_gamma(
        tf.stack([2, b]), seed=_fold(seed, 1), alpha=float(alpha), dtype=tf.float32
    )
    total = g[0] + g[1]
    # With a tiny alpha both gamma draws can underflow to 0: Beta is then at an extreme.
    lam = tf.where(
        total > 0, g[0] / tf.where(total > 0, total, 1.0), tf.cast(g[0] >= g[1], tf.float32)
    )
    lam = tf.clip_by_value(lam, 0.0, 1.0)

    def mix(v: tf.Tensor) -> tf.Tensor:
        w = tf.cast(_bcast(lam, len(v.shape)), v.dtype)
        return w * v + (1 - w) * tf.gather(v, perm)

    return {name: mix(x) for name, x in inputs.items()}, mix(labels)


def augment_batch(
    inputs: Mapping[str, tf.Tensor],
    labels: tf.Tensor,
    config: Mapping,
    seed: tf.Tensor,
) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """Apply every augmentation whose strength in ``config`` is above 0 to one batch.

    Order: gaussian noise, time shift, time mask, feature drop, modality drop, mixup (so zeroed
    spans, dims and modalities stay exactly zero before mixing). ``config`` may be any flat config;
    its ``aug_*`` keys are validated with :func:`validate_aug_config`. ``seed`` is a shape-``(2,)``
    integer tensor; each transform (and each modality) draws from its own fold of it.
    """
    cfg = validate_aug_config(config)
    seed = _seed(seed)
    names = sorted(inputs)
    out = dict(inputs)

    def modality_seed(key: str, name: str) -> tf.Tensor:
        return _fold(_fold(seed, _SALT[key]), names.index(name))

    # Per-modality transforms, in order; time shift (between noise and masking) moves all
    # modalities of a sample together, so it is applied to the whole dict.
    per_modality = (("aug_noise", gaussian_noise), ("aug_time_mask", time_mask),
                    ("aug_feature_drop", feature_drop))
    for key, transform in per_modality:
        if key == "aug_time_mask" and cfg["aug_time_shift"] > 0:
            out = time_shift(out, cfg["aug_time_shift"], _fold(seed, _SALT["aug_time_shift"]))
        if cfg[key] > 0:
            out = {n: transform(x, cfg[key], modality_seed(key, n)) for n, x in out.items()}
    if cfg["aug_modality_drop"] > 0:
        out = modality_drop(out, cfg["aug_modality_drop"], _fold(seed, _SALT["aug_modality_drop"]))
    if cfg["aug_mixup"] > 0:
        out, labels = mixup(out, labels, cfg["aug_mixup"], _fold(seed, _SALT["aug_mixup"]))
    return out, labels
