"""The generators of other structure (``lexicon``, ``conflict``): each has the structure it claims,
which ``mosi``'s generator does not, and reads back like any msa-tf2 directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from msatune.augment.dataset import SPLITS, load_dataset
from msatune.augment.synth import PRESETS, generate, synthesize
from msatune.augment.synth_structures import STRUCTURES, ConflictPreset, LexiconPreset
from msatune.augment.yardsticks import constant_mae, floor_mae


@pytest.fixture(scope="module")
def lexicon() -> dict[str, dict[str, np.ndarray]]:
    return generate(PRESETS["lexicon"], 0)


@pytest.fixture(scope="module")
def conflict() -> dict[str, dict[str, np.ndarray]]:
    return generate(PRESETS["conflict"], 0)


def _ridge_test_mae(d: dict[str, dict[str, np.ndarray]], modalities=("text", "audio", "video")) -> float:
    def pooled(s: dict[str, np.ndarray]) -> np.ndarray:
        xs = [np.nan_to_num(s[m], nan=0.0, posinf=0.0, neginf=0.0) for m in modalities]
        return np.concatenate([x.mean(1) for x in xs] + [x.max(1) for x in xs], axis=1)

    xtr, xte = pooled(d["train"]), pooled(d["test"])
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    a, b = (xtr - mu) / sd, (xte - mu) / sd
    y = d["train"]["labels"]
    w = np.linalg.solve(a.T @ a + 100.0 * np.eye(a.shape[1]), a.T @ (y - y.mean()))
    return float(np.mean(np.abs(b @ w + y.mean() - d["test"]["labels"])))


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_structure_presets_are_mosi_sized_deterministic_and_in_range(name: str) -> None:
    p = PRESETS[name]
    assert p.sizes == {"train": 1284, "valid": 229, "test": 686}
    a, b = generate(p, 5), generate(p, 5)
    other = generate(p, 6)
    for split in SPLITS:
        for kind in a[split]:
            np.testing.assert_array_equal(a[split][kind], b[split][kind])
        assert not np.array_equal(a[split]["labels"], other[split]["labels"])
        y, o = a[split]["labels"], a[split]["oracle"]
        assert y.min() >= -3 and y.max() <= 3 and o.min() >= -3 and o.max() <= 3
        assert a[split]["text"].shape == (p.sizes[split], p.seq_len, p.dims["text"])
        assert a[split]["video"].dtype == np.float32
        # a model can learn something: the floor lies far below the best constant
        assert floor_mae(y, o) < constant_mae(y) - 0.5


def test_lexicon_sentiment_is_in_words_and_their_negators(lexicon) -> None:
    """Its labels lean positive on a 1/3 grid, its files hold NaN and -inf like real ones, and what
    pooled features miss is the negation: a linear model on mean/max-pooled features does clearly
    worse when a tenth of the polar words are negated than when none are (the sentiment is which
    words occur and whether a negator precedes them)."""
    from dataclasses import replace

    y = np.concatenate([lexicon[s]["labels"] for s in SPLITS])
    np.testing.assert_allclose(y * 3, np.round(y * 3), atol=1e-4)
    assert y.mean() > 0.3
    test = lexicon["test"]
    assert np.isnan(test["video"]).any() and np.isneginf(test["audio"]).any()
    base = PRESETS["lexicon"]
    assert isinstance(base, LexiconPreset) and base.negation_rate > 0
    plain = generate(replace(base, negation_rate=0.0), 0)
    assert _ridge_test_mae(plain, ("text",)) < _ridge_test_mae(lexicon, ("text",)) - 0.05
    # still learnable from text alone: below the best constant
    assert _ridge_test_mae(lexicon, ("text",)) < constant_mae(test["labels"]) - 0.1


def test_lexicon_negation_flips_the_sentiment() -> None:
    """Without negation the text's polar words alone decide the sign of the target more often."""
    from dataclasses import replace

    def sign_agreement(p: LexiconPreset) -> float:
        d = generate(p, 1)["train"]
        return float(np.mean(np.sign(d["oracle"]) == np.sign(d["labels"] + 1e-9)))

    base = PRESETS["lexicon"]
    assert isinstance(base, LexiconPreset)
    no_neg, all_neg = replace(base, negation_rate=0.0), replace(base, negation_rate=1.0)
    ya, yb = generate(no_neg, 1)["train"]["labels"], generate(all_neg, 1)["train"]["labels"]
    assert ya.mean() > 0.3 > -0.3 > yb.mean()  # negating every polar word turns the skew over
    assert sign_agreement(base) > 0.5


def test_conflict_ironic_text_and_missing_video(conflict) -> None:
    """Labels lean negative with a pile at 0 on a 1/5 grid; some samples have no video at all;
    without irony the text alone predicts far better (the irony is only visible against voice and
    face)."""
    from dataclasses import replace

    y = np.concatenate([conflict[s]["labels"] for s in SPLITS])
    np.testing.assert_allclose(y * 5, np.round(y * 5), atol=1e-4)
    assert y.mean() < -0.15
    video = conflict["train"]["video"]
    no_face = np.all(video == 0, axis=(1, 2))
    assert 0.1 < no_face.mean() < 0.2
    base = PRESETS["conflict"]
    assert isinstance(base, ConflictPreset)
    honest = generate(replace(base, irony_rate=0.0), 0)
    assert _ridge_test_mae(honest, ("text",)) < _ridge_test_mae(conflict, ("text",)) - 0.1


def test_structure_preset_round_trips_through_the_msa_tf2_layout(tmp_path: Path) -> None:
    ds = synthesize(tmp_path / "lex", preset="lexicon", seed=0, scale=0.2)
    back = load_dataset(tmp_path / "lex")
    assert back.fingerprint == ds.fingerprint and back.has_oracle
    assert back.splits["train"].n == 257
    # the writer replaced NaN and -inf by 0 (counted), as a reader of real files does
    assert sum(s.nan_count for s in ds.splits.values()) > 0
    assert all(np.isfinite(s.audio).all() and np.isfinite(s.video).all() for s in back.splits.values())


def test_cli_offers_every_preset() -> None:
    from msatune.studies.cli.data import synth_cmd

    choice = next(p for p in synth_cmd.params if p.name == "preset")
    assert set(choice.type.choices) == set(PRESETS)
