"""Synthetic datasets whose structure differs from :mod:`msatune.augment.synth`'s generator.

A default (rung signal, ASHA settings, what a study returns) measured on one generator is a fit to
that generator. These two generators make data at MOSI's sizes whose sentiment lives elsewhere,
each in a way real MSA data does, so benchmarks can check a default on more than one structure
(``msatune data synth --preset lexicon|conflict``):

``lexicon``
    The sentiment is *words*: 1-3 polar words of a fixed lexicon (strength 1 or 2) at random valid
    steps of the text, a negator right before a word flips it (1 in 10). No salience marker:
    the word vectors carry it (a polar word's vector leans along a sentiment direction, as in
    GloVe), and the negator before it matters, so a model must read tokens in order. Audio
    carries *arousal* spread over every valid step (weakly per step), which scales the text's
    sentiment (a multiplicative interaction, not a sum); video adds a small sentiment of its own,
    also spread thin. Labels lean positive (about 62% of polar words are positive, as opinion
    videos do), three annotators on a 1/3 grid with light-tailed noise. NaN video steps (as FACET
    files have) and -inf audio values (as COVAREP's log features have) occur in a few samples.
``conflict``
    The sentiment is a *trajectory*: each modality expresses a noisy copy of the speaker's true
    sentiment at every valid step, growing toward the end of the utterance, weakly per step (no
    marker, no single decisive step: pooling over time matters more than attention to a step).
    For 20% of samples the text says the opposite (irony with no flag): only the disagreement of
    the text with audio and video reveals it, and the label follows the voice and face. Video is
    missing (all zero, as when no face is found) for 15% of samples. T=30 and small audio/video
    dims (5/20, MMSA's unaligned features). A fifth of the speakers are neutral, so labels pile up
    at 0 and lean negative; five annotators on a 1/5 grid. A few NaN audio steps.

Both write the noise-free target (``oracle``) as :mod:`synth` does, so ``data info`` shows the
floor MAE. Same seed, same data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from msatune.modalities import MODALITIES

SPLITS = ("train", "valid", "test")
MOSI_SIZES = {"train": 1284, "valid": 229, "test": 686}


def _front_padded(rng: np.random.Generator, n: int, T: int, min_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Valid lengths in [min_len, T] and the (n, T) mask of valid steps, zero padding at the front
    (as CMU-MOSI's aligned files)."""
    length = rng.integers(min(min_len, T), T + 1, n)
    return length, np.arange(T)[None, :] >= (T - length)[:, None]


def _ratings(rng: np.random.Generator, oracle: np.ndarray, annotators: int, shared_sd: float,
             own_sd: float) -> np.ndarray:
    """Mean of ``annotators`` integer ratings in [-3, 3] around the oracle: exact 1/annotators grid."""
    n = oracle.shape[0]
    shared = shared_sd * rng.standard_normal(n)
    own = own_sd * rng.standard_normal((n, annotators))
    ratings = np.clip(np.rint(oracle[:, None] + shared[:, None] + own), -3, 3)
    return np.round(ratings.mean(axis=1) * annotators) / annotators


def _directions(rng: np.random.Generator, d: int, k: int) -> np.ndarray:
    """``k`` orthonormal unit directions in ``d`` dims, as columns."""
    q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return q


@dataclass(frozen=True)
class LexiconPreset:
    """Sentiment in a few polar words (with negation), scaled by arousal in the audio."""

    sizes: dict[str, int] = field(default_factory=lambda: dict(MOSI_SIZES))
    seq_len: int = 20
    dims: dict[str, int] = field(default_factory=lambda: {"text": 300, "audio": 74, "video": 47})
    lexicon_size: int = 40  # polar words
    negators: int = 4
    positive_share: float = 0.62  # of polar words: the labels' skew
    negation_rate: float = 0.1
    word_polarity: float = 4.0  # how far a polar word's vector leans along the sentiment direction
    target_scale: float = 1.1
    arousal_sd: float = 0.35  # log-scale spread of the intensity multiplier
    video_weight: float = 0.4
    shared_noise: float = 0.3
    annotator_noise: float = 0.5
    nan_rate: float = 0.02

    def generate(self, seed: int) -> dict[str, dict[str, np.ndarray]]:
        rng = np.random.default_rng(seed)
        d = self.dims
        vocab = rng.standard_normal((max(60, 4 * d["text"]), d["text"]))
        special = rng.choice(vocab.shape[0], self.lexicon_size + self.negators, replace=False)
        polar_ids, negator_ids = special[: self.lexicon_size], special[self.lexicon_size:]
        positive = rng.random(self.lexicon_size) < self.positive_share
        polarity = np.where(positive, 1.0, -1.0) * rng.choice([1.0, 2.0], self.lexicon_size, p=[0.6, 0.4])
        # as in GloVe, a polar word's vector leans along a sentiment direction (by its polarity)
        vocab[polar_ids] += self.word_polarity * polarity[:, None] * _directions(rng, d["text"], 1)[:, 0]
        background = np.setdiff1d(np.arange(vocab.shape[0]), special)
        audio_dir = _directions(rng, d["audio"], 1)[:, 0]
        video_dir = _directions(rng, d["video"], 1)[:, 0]
        scale = {m: np.exp(rng.uniform(np.log(0.5), np.log(2.0), d[m])) for m in ("audio", "video")}
        world = (vocab, polar_ids, negator_ids, polarity, background, audio_dir, video_dir, scale)
        return {s: self._split(rng, world, self.sizes[s]) for s in SPLITS}

    def _split(self, rng: np.random.Generator, world: tuple, n: int) -> dict[str, np.ndarray]:
        vocab, polar_ids, negator_ids, polarity, background, audio_dir, video_dir, scale = world
        T = self.seq_len
        length, valid = _front_padded(rng, n, T, max(6, T // 3))
        rows = np.arange(n)
        # text: background words, then 1-3 polar words at valid steps an even distance from the end
        # (never the first valid step), so the step before each is valid and holds no polar word:
        # a negator fits there
        words = background[rng.zipf(1.3, (n, T)) % background.size]
        k = rng.integers(1, 4, n)
        t = np.arange(T)[None, :]
        unfit = ~valid | (t == (T - length)[:, None]) | ((T - 1 - t) % 2 == 1)
        order = np.argsort(rng.random((n, T)) + unfit * 2.0, axis=1)
        text_sent = np.zeros(n)
        for j in range(3):
            on = k > j
            step = order[:, j]
            which = rng.integers(0, polar_ids.size, n)
            negated = on & (rng.random(n) < self.negation_rate)
            words[rows[on], step[on]] = polar_ids[which[on]]
            words[rows[negated], step[negated] - 1] = negator_ids[rng.integers(0, negator_ids.size, negated.sum())]
            text_sent += np.where(on, polarity[which] * np.where(negated, -1.0, 1.0), 0.0)
        text_sent /= np.sqrt(k)
        arousal = rng.standard_normal(n)
        video_sent = rng.standard_normal(n)
        intensity = np.exp(self.arousal_sd * arousal)
        oracle = np.clip(self.target_scale * text_sent * intensity + self.video_weight * video_sent, -3.0, 3.0)
        labels = _ratings(rng, oracle, 3, self.shared_noise, self.annotator_noise)

        text = 0.3 * vocab[words]
        audio = rng.standard_normal((n, T, self.dims["audio"])) + 0.5 * rng.standard_normal((n, 1, self.dims["audio"]))
        audio += (0.8 * arousal)[:, None, None] * audio_dir
        audio *= scale["audio"]
        video = rng.standard_normal((n, T, self.dims["video"])) + 0.5 * rng.standard_normal((n, 1, self.dims["video"]))
        video += (0.5 * video_sent)[:, None, None] * video_dir
        video *= scale["video"]
        feats = {"text": text, "audio": audio, "video": video}
        for x in feats.values():
            x[~valid] = 0.0
        nan_rows = np.flatnonzero(rng.random(n) < self.nan_rate)
        steps = T - 1 - rng.integers(0, np.maximum(length[nan_rows], 1))
        feats["video"][nan_rows, steps] = np.nan  # FACET: no face on that frame
        inf_rows = np.flatnonzero(rng.random(n) < self.nan_rate / 2)
        feats["audio"][inf_rows, T - 1, 0] = -np.inf  # COVAREP's log energy of silence
        return {**{m: feats[m].astype(np.float32) for m in MODALITIES},
                "labels": labels.astype(np.float32), "oracle": oracle.astype(np.float32)}


@dataclass(frozen=True)
class ConflictPreset:
    """Sentiment as a trajectory in every modality; ironic text that contradicts voice and face for a
    subset; video missing for another."""

    sizes: dict[str, int] = field(default_factory=lambda: dict(MOSI_SIZES))
    seq_len: int = 30
    dims: dict[str, int] = field(default_factory=lambda: {"text": 300, "audio": 5, "video": 20})
    irony_rate: float = 0.2
    missing_video_rate: float = 0.15
    neutral_share: float = 0.2
    target_scale: float = 1.5
    skew: float = -0.35  # shifts the non-neutral speakers' sentiment: labels lean negative
    # a modality's copy of the true sentiment: its noise sd and per-step amplitude (SNR)
    copy_noise: tuple[float, float, float] = (0.3, 0.6, 0.5)
    snr: tuple[float, float, float] = (0.8, 1.0, 0.8)
    shared_noise: float = 0.25
    annotator_noise: float = 0.6
    nan_rate: float = 0.02

    def generate(self, seed: int) -> dict[str, dict[str, np.ndarray]]:
        rng = np.random.default_rng(seed)
        dirs = {m: _directions(rng, self.dims[m], 1)[:, 0] for m in MODALITIES}
        vocab = rng.standard_normal((max(60, 4 * self.dims["text"]), self.dims["text"]))
        return {s: self._split(rng, dirs, vocab, self.sizes[s]) for s in SPLITS}

    def _split(self, rng: np.random.Generator, dirs: dict[str, np.ndarray], vocab: np.ndarray,
               n: int) -> dict[str, np.ndarray]:
        T = self.seq_len
        length, valid = _front_padded(rng, n, T, T // 3)
        neutral = rng.random(n) < self.neutral_share
        truth = np.where(neutral, 0.1 * rng.standard_normal(n), rng.standard_normal(n) + self.skew)
        oracle = np.clip(self.target_scale * truth, -3.0, 3.0)
        labels = _ratings(rng, oracle, 5, self.shared_noise, self.annotator_noise)
        ironic = rng.random(n) < self.irony_rate
        copies = {m: truth + sd * rng.standard_normal(n) for m, sd in zip(MODALITIES, self.copy_noise, strict=True)}
        copies["text"] = np.where(ironic, -copies["text"], copies["text"])
        # position within each utterance, 0 at its first valid step and 1 at its last: sentiment builds up
        pos = np.clip((np.arange(T)[None, :] - (T - length)[:, None]) / np.maximum(length - 1, 1)[:, None], 0, 1)
        ramp = 0.4 + 0.6 * pos
        feats: dict[str, np.ndarray] = {}
        for m, snr in zip(MODALITIES, self.snr, strict=True):
            d = self.dims[m]
            if m == "text":
                x = 0.5 * vocab[rng.zipf(1.3, (n, T)) % vocab.shape[0]]
                sd = 0.5
            else:
                x = rng.standard_normal((n, T, d)) + 0.5 * rng.standard_normal((n, 1, d))
                sd = 1.0
            x += (snr * sd * copies[m][:, None] * ramp)[:, :, None] * dirs[m]
            x[~valid] = 0.0
            feats[m] = x
        feats["video"][rng.random(n) < self.missing_video_rate] = 0.0  # no face found
        nan_rows = np.flatnonzero(rng.random(n) < self.nan_rate)
        feats["audio"][nan_rows, T - 1 - rng.integers(0, np.maximum(length[nan_rows], 1))] = np.nan
        return {**{m: feats[m].astype(np.float32) for m in MODALITIES},
                "labels": labels.astype(np.float32), "oracle": oracle.astype(np.float32)}


#: The generators of other structure, by preset name (``data synth --preset``).
STRUCTURES: dict[str, LexiconPreset | ConflictPreset] = {
    "lexicon": LexiconPreset(),
    "conflict": ConflictPreset(),
}
