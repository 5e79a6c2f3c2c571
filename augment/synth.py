"""A synthetic, MOSI-like dataset with a known error floor (the embedded default dataset).

How a sample is made (all draws from ``np.random.default_rng(seed)``):

* **Latent factors** per sample: text, audio and video sentiment ``s_t, s_a, s_v`` (standard
  normal, mildly correlated through a shared "true opinion") and a sarcasm flag ``f``
  (about 15 % of samples).
* **Noise-free target** (the *oracle*)::

      oracle = clip(scale * ((1 - 2 f) * w_t s_t + w_a s_a + w_v s_v), -3, 3)

  Text carries most of the sentiment, then audio, then video. The sarcasm flag lives in the
  audio and flips the sign of the text's contribution: a cross-modal interaction no single
  modality resolves (text alone gets the sign wrong on sarcastic samples; audio alone lacks the
  text's sentiment).
* **Labels** are averaged ratings of three annotators: each rates
  ``clip(round(oracle + shared + own), -3, 3)`` on the integer scale, where ``shared`` is a
  heavy-tailed (Student-t) disagreement with the clip common to all three and ``own`` is each
  annotator's noise. Labels therefore sit on a 1/3 grid in [-3, 3] with mass at the extremes,
  and the label noise has heavy tails (Huber vs MAE matters). ``floor_mae`` = MAE(oracle, labels).
* **Features** (N, T, D) per modality: utterances have a valid length L <= T and are
  zero-padded at the front (as in the CMU-MOSI aligned files). Valid steps hold background
  noise (text: vectors of a random "vocabulary"; audio/video: per-dimension scaled noise with a
  per-sample "speaker" offset). A few *informative* steps per modality add the modality's
  sentiment along a fixed random unit direction plus a salience marker along another; a few
  *distractor* steps add a random value along the same sentiment direction without the marker.
  So pooling/attention matters: averaging all steps mixes signal with distractors, attending to
  the marked steps does not. The sarcasm flag is a marked event in one audio step. Audio
  occasionally holds NaN (as real COVAREP does); readers turn them into 0.

``mosi`` has CMU-MOSI's sizes (1284/229/686, T=20, 300/74/47), ``mosei`` CMU-MOSEI's (MMSA's
split 16326/1871/4659, T=20, 300/74/713; about 2 GB of float32); ``tiny`` is for fast tests.
``lexicon`` and ``conflict`` come from other generators (:mod:`msatune.augment.synth_structures`):
sentiment in polar words with negation, or in trajectories with ironic text and missing faces.
``video`` is a set of another structure (benchmarks compare methods on both): video carries most
of the sentiment and text the least, sequences are longer (T=32) with more distractor steps, the
train split is smaller (900/200/600), five annotators disagree with light (near-Gaussian) tails,
and nobody is sarcastic.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from msatune.augment.dataset import SPLITS, MSADataset
from msatune.augment.dataset_writer import check_output_dir, write_dataset
from msatune.augment.synth_structures import STRUCTURES, ConflictPreset, LexiconPreset
from msatune.errors import UserError
from msatune.modalities import MODALITIES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthPreset:
    """Sizes of a synthetic dataset and the strengths of its signal and noise."""

    sizes: dict[str, int]  # samples per split
    seq_len: int
    dims: dict[str, int]  # feature dimension per modality
    min_len_frac: float = 0.4  # shortest valid utterance as a fraction of T
    informative_steps: int = 2  # steps per modality carrying the sentiment (and a marker)
    distractor_steps: int = 2  # steps per modality carrying a random value along the direction
    # contribution of each modality's latent sentiment to the target (text strongest)
    weights: tuple[float, float, float] = (1.0, 0.6, 0.4)
    target_scale: float = 1.6
    shared_opinion: float = 0.35  # correlation of the modality factors through a shared opinion
    sarcasm_rate: float = 0.15
    # per-step amplitude of the sentiment along its direction, relative to the background noise
    snr: tuple[float, float, float] = (5.0, 3.5, 2.5)
    marker: float = 3.0  # amplitude of the salience marker (relative to the background noise)
    distractor: float = 0.6  # distractor amplitude relative to the informative amplitude
    # label noise: shared Student-t disagreement (scale, dof) and per-annotator gaussian noise
    shared_noise: float = 0.35
    shared_dof: float = 2.5
    annotator_noise: float = 0.5
    annotators: int = 3
    nan_rate: float = 0.01  # fraction of samples with one NaN audio step


PRESETS: dict[str, SynthPreset | LexiconPreset | ConflictPreset] = {
    "mosi": SynthPreset(
        sizes={"train": 1284, "valid": 229, "test": 686},
        seq_len=20,
        dims={"text": 300, "audio": 74, "video": 47},
    ),
    "tiny": SynthPreset(
        sizes={"train": 48, "valid": 24, "test": 24},
        seq_len=8,
        dims={"text": 16, "audio": 8, "video": 6},
        informative_steps=1,
        distractor_steps=1,
    ),
    "video": SynthPreset(
        sizes={"train": 900, "valid": 200, "test": 600},
        seq_len=32,
        dims={"text": 64, "audio": 32, "video": 96},
        informative_steps=3,
        distractor_steps=4,
        weights=(0.5, 0.5, 1.0),
        sarcasm_rate=0.0,
        snr=(2.5, 3.0, 4.0),
        shared_noise=0.3,
        shared_dof=30.0,
        annotator_noise=0.6,
        annotators=5,
    ),
    # CMU-MOSEI's shapes (MMSA's split, msa-tf2's 713-d video): MOSI's generator at 12.7x the samples
    "mosei": SynthPreset(
        sizes={"train": 16326, "valid": 1871, "test": 4659},
        seq_len=20,
        dims={"text": 300, "audio": 74, "video": 713},
    ),
    # data of other structure than this module's generator (see synth_structures), MOSI's sizes
    **STRUCTURES,
}


#: The fewest samples per split of a scaled-down preset (see :func:`scaled`).
MIN_SCALED_SAMPLES = 8


def scaled(p: SynthPreset | LexiconPreset | ConflictPreset,
           scale: float) -> SynthPreset | LexiconPreset | ConflictPreset:
    """``p`` with every split size multiplied by ``scale`` (0 < scale <= 1), rounded, and at least
    :data:`MIN_SCALED_SAMPLES` per split: a small dataset of a preset's shapes (e.g. MOSEI's
    713-d video) for quick end-to-end runs. Scale 1 is the preset itself."""
    if not 0.0 < scale <= 1.0:  # also refuses NaN
        raise UserError(
            f"--scale {scale:g} is out of range: give a fraction 0 < F <= 1 of the preset's "
            "split sizes (e.g. --scale 0.01)"
        )
    if scale == 1.0:
        return p
    sizes = {k: min(n, max(MIN_SCALED_SAMPLES, round(n * scale))) for k, n in p.sizes.items()}
    return replace(p, sizes=sizes)


def synthesize(
    out: str | os.PathLike[str],
    preset: str = "mosi",
    seed: int = 0,
    *,
    overwrite: bool = False,
    scale: float = 1.0,
) -> MSADataset:
    """Write a synthetic dataset in the msa-tf2 layout (with ``oracle_{split}.h5``) to ``out``;
    ``scale`` shrinks every split (see :func:`scaled`)."""
    if preset not in PRESETS:
        raise UserError(
            f"unknown synthetic preset '{preset}'; choose one of: {', '.join(PRESETS)}"
        )
    p = scaled(PRESETS[preset], scale)
    check_output_dir(Path(out).expanduser(), overwrite)  # before spending time generating
    splits = generate(p, seed)
    ds = write_dataset(out, splits, overwrite=overwrite)
    del splits  # the written dataset holds the same arrays
    log.info("synthesized preset %s seed %d scale %g into %s", preset, seed, scale, ds.path)
    return ds


def generate(p: SynthPreset | LexiconPreset | ConflictPreset, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """The arrays of a synthetic dataset: split -> {text, audio, video, labels, oracle}."""
    if seed < 0:
        raise UserError(f"seed must be >= 0, got {seed}")
    if not isinstance(p, SynthPreset):
        return p.generate(seed)
    rng = np.random.default_rng(seed)
    world = _World.make(p, rng)
    return {split: _split(p, world, rng, p.sizes[split]) for split in SPLITS}


@dataclass(frozen=True)
class _World:
    """What all samples share: directions in feature space, per-dimension scales, vocabulary."""

    sentiment: dict[str, np.ndarray]  # unit direction per modality
    marker: dict[str, np.ndarray]  # unit salience direction per modality
    sarcasm: np.ndarray  # unit direction in audio
    scale: dict[str, np.ndarray]  # per-dim background scale (audio/video), 1 for text
    vocab: np.ndarray  # (V, D_text) background "word vectors"

    @staticmethod
    def make(p: SynthPreset, rng: np.random.Generator) -> _World:
        sentiment, marker, scale = {}, {}, {}
        sarcasm = None
        for m in MODALITIES:
            d = p.dims[m]
            k = 3 if m == "audio" else 2
            if d < k:
                raise ValueError(f"{m} needs at least {k} feature dims, got {d}")
            q, _ = np.linalg.qr(rng.standard_normal((d, k)))  # orthonormal columns
            sentiment[m], marker[m] = q[:, 0], q[:, 1]
            if m == "audio":
                sarcasm = q[:, 2]
            scale[m] = (
                np.ones(d) if m == "text" else np.exp(rng.uniform(np.log(0.5), np.log(2.0), d))
            )
        vocab = rng.standard_normal((max(50, 8 * p.dims["text"]), p.dims["text"]))
        return _World(sentiment, marker, sarcasm, scale, vocab)


def _split(p: SynthPreset, w: _World, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    T = p.seq_len
    # --- latent factors and the noise-free target
    opinion = rng.standard_normal(n)
    c = p.shared_opinion
    s = {m: np.sqrt(c) * opinion + np.sqrt(1 - c) * rng.standard_normal(n) for m in MODALITIES}
    sarcastic = rng.random(n) < p.sarcasm_rate
    wt, wa, wv = p.weights
    raw = np.where(sarcastic, -1.0, 1.0) * wt * s["text"] + wa * s["audio"] + wv * s["video"]
    flip_mean = 1.0 - 2.0 * p.sarcasm_rate  # E[(1 - 2f)]: sarcasm decorrelates text from the rest
    var = wt**2 + wa**2 + wv**2 + 2 * c * (flip_mean * wt * (wa + wv) + wa * wv)
    raw /= np.sqrt(var)  # unit variance in expectation (not per split: splits share one scale)
    oracle = np.clip(p.target_scale * raw, -3.0, 3.0)

    # --- labels: mean of annotators' integer ratings around a shared heavy-tailed disagreement
    shared = p.shared_noise * rng.standard_t(p.shared_dof, n)
    own = p.annotator_noise * rng.standard_normal((n, p.annotators))
    ratings = np.clip(np.rint(oracle[:, None] + shared[:, None] + own), -3, 3)
    labels = np.round(ratings.mean(axis=1) * 3) / 3  # exact 1/3 grid

    # --- features
    min_len = max(p.informative_steps + p.distractor_steps + 1, int(round(p.min_len_frac * T)))
    length = rng.integers(min(min_len, T), T + 1, n)
    valid = np.arange(T)[None, :] >= (T - length)[:, None]  # front padding
    feats: dict[str, np.ndarray] = {}
    for m, snr in zip(MODALITIES, p.snr, strict=True):
        d = p.dims[m]
        if m == "text":
            words = rng.zipf(1.3, (n, T)) % w.vocab.shape[0]
            x = w.vocab[words]
            x *= 0.3  # in place: MOSEI-sized splits hold no float64 temporaries beside x
            noise_sd = 0.3
        else:
            speaker = 0.5 * rng.standard_normal((n, 1, d))
            x = rng.standard_normal((n, T, d))
            x += speaker
            x *= w.scale[m]
            noise_sd = 1.0
        # informative and distractor steps, drawn among each sample's valid steps
        k_inf, k_dis = p.informative_steps, p.distractor_steps
        order = np.argsort(rng.random((n, T)) + (~valid) * 2.0, axis=1)  # valid steps first
        inf_steps, dis_steps = order[:, :k_inf], order[:, k_inf : k_inf + k_dis]
        rows = np.arange(n)[:, None]
        amp = snr * noise_sd
        x[rows, inf_steps] += (amp * s[m])[:, None, None] * w.sentiment[m]
        x[rows, inf_steps] += p.marker * noise_sd * w.marker[m]
        r = rng.standard_normal((n, k_dis))
        x[rows, dis_steps] += (p.distractor * amp * r)[:, :, None] * w.sentiment[m]
        if m == "audio":
            sarc_step = order[:, k_inf + k_dis if T > k_inf + k_dis else 0]
            x[np.flatnonzero(sarcastic), sarc_step[sarcastic]] += p.marker * noise_sd * w.sarcasm
        x[~valid] = 0.0
        feats[m] = x.astype(np.float32)

    # a few NaN audio frames, as in real COVAREP files (readers turn them into 0)
    nan_rows = np.flatnonzero(rng.random(n) < p.nan_rate)
    if nan_rows.size:
        steps = T - 1 - rng.integers(0, np.maximum(length[nan_rows], 1))
        feats["audio"][nan_rows, steps, : max(1, p.dims["audio"] // 4)] = np.nan

    return {
        **feats,
        "labels": labels.astype(np.float32),
        "oracle": oracle.astype(np.float32),
    }
