"""Per-trial checkpoints: weights + config.json + checkpoint.json, rebuild and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from msatune.errors import UserError
from msatune.models.build import build_model
from msatune.models.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint

DIMS = {"text": 6, "audio": 5, "video": 4}
TINY = {"model_dim": 16, "num_heads": 2, "ff_dim": 32, "n_layers_mod": 1, "n_layers_fuse": 1}


def batch(n: int = 4, t: int = 5, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=(n, t, d)).astype("float32") for k, d in DIMS.items()}


def trained(family: str) -> tuple:
    """A compiled model whose weights (BatchNorm statistics included) differ from a fresh one's."""
    config = {"family": family, **TINY, "learning_rate": 0.01, "batch_size": 4, "aug_noise": 0.1}
    model = build_model(config, DIMS)
    rng = np.random.default_rng(3)
    model.set_weights(
        [w + rng.uniform(0.05, 0.1, size=w.shape).astype(w.dtype) for w in model.get_weights()]
    )
    model.compile(optimizer="adam", loss="mae")
    model.optimizer.build(model.trainable_variables)
    return model, config


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = {}
    for family in ("baseline", "improved"):
        model, config = trained(family)
        directory = tmp_path_factory.mktemp(family) / "ckpt"
        path = save_checkpoint(directory, model, config, DIMS, {"epoch": 2, "val_mae": 1.25})
        out[family] = (path, model, config)
    return out


@pytest.mark.parametrize("family", ["baseline", "improved"])
def test_rebuild_and_load_gives_identical_predictions(saved, family):
    path, model, config = saved[family]
    assert sorted(p.name for p in path.iterdir()) == [
        "checkpoint.json",
        "config.json",
        "model.weights.h5",
    ]
    loaded, loaded_config, meta = load_checkpoint(path)
    assert loaded_config == config  # the flat trial config, as given
    assert meta["dims"] == DIMS and meta["seq_len"] is None and meta["format"] == 1
    assert meta["epoch"] == 2 and meta["val_mae"] == 1.25 and "msatune_version" in meta
    for t in (5, 11):  # a T other than the one trained on
        x = batch(t=t, seed=7)
        np.testing.assert_array_equal(
            np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False))
        )


def test_weights_file_holds_no_optimizer_state(saved):
    import h5py

    path, _, _ = saved["improved"]
    with h5py.File(path / "model.weights.h5", "r") as handle:
        assert "optimizer" not in handle


def test_read_meta_without_model(saved):
    path, _, config = saved["baseline"]
    got_config, meta = read_checkpoint_meta(path)
    assert got_config == config and meta["dims"] == DIMS


def test_numpy_values_in_config_are_written_as_json(tmp_path):
    model = build_model({"family": "baseline", **TINY}, DIMS)
    config = {"family": "baseline", **TINY, "dropout": np.float64(0.2), "model_dim": np.int64(16)}
    save_checkpoint(tmp_path / "c", model, config, DIMS)
    written = json.loads((tmp_path / "c" / "config.json").read_text())
    assert written["dropout"] == 0.2 and written["model_dim"] == 16


def test_missing_directory_and_files(tmp_path, saved):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json is missing"):
        read_checkpoint_meta(tmp_path / "empty")
    path, _, _ = saved["baseline"]
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "checkpoint.json"):
        (copy / name).write_bytes((path / name).read_bytes())
    with pytest.raises(UserError, match="model.weights.h5 are missing"):
        load_checkpoint(copy)


def _copy(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_truncated_or_garbage_weights_raise_user_error(tmp_path, saved):
    path, _, _ = saved["improved"]
    bad = _copy(path, tmp_path / "bad")
    data = (bad / "model.weights.h5").read_bytes()
    (bad / "model.weights.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt") as info:
        load_checkpoint(bad)
    assert str(bad / "model.weights.h5") in str(info.value)
    (bad / "model.weights.h5").write_bytes(b"not an hdf5 file")
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(bad)


def test_weights_not_matching_config_raise_user_error(tmp_path, saved):
    path, _, config = saved["improved"]
    bad = _copy(path, tmp_path / "bad")
    (bad / "config.json").write_text(json.dumps({**config, "n_layers_mod": 2}))
    with pytest.raises(UserError, match="do not match"):
        load_checkpoint(bad)
    (bad / "config.json").write_text(json.dumps(config))
    meta = json.loads((bad / "checkpoint.json").read_text())
    meta["dims"]["video"] = 9
    (bad / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="do not match"):
        load_checkpoint(bad)


def test_corrupt_json_and_bad_config_raise_user_error(tmp_path, saved):
    path, _, config = saved["baseline"]
    bad = _copy(path, tmp_path / "bad")
    (bad / "checkpoint.json").write_text("{truncated")
    with pytest.raises(UserError, match="checkpoint.json"):
        read_checkpoint_meta(bad)
    (bad / "checkpoint.json").write_text(json.dumps({"format": 99, "dims": DIMS}))
    with pytest.raises(UserError, match="format"):
        read_checkpoint_meta(bad)
    (bad / "checkpoint.json").write_text((path / "checkpoint.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "family": "nope"}))
    with pytest.raises(UserError, match="family"):
        load_checkpoint(bad)


@pytest.mark.parametrize("family", ["baseline", "improved"])
def test_checkpoint_of_the_old_model_family_fails_with_one_line(tmp_path, family):
    """Before the msa-tf2-exact models, attention heads were model_dim / num_heads wide, the
    improved gate followed model_dim and its head was 64/32 (written into every config). Such
    a checkpoint's config (no key_dim/gate_units/l2_scope keys) now builds theirs: no fit."""
    old_config = {"family": family, **TINY, "head_units": 64, "head_units2": 32, "dropout": 0.1}
    old_shapes = {"key_dim": TINY["model_dim"] // TINY["num_heads"], "gate_units": 0}
    old_model = build_model({**old_config, **old_shapes}, DIMS)
    path = save_checkpoint(tmp_path / "old", old_model, old_config, DIMS, {"epoch": 3})
    with pytest.raises(UserError, match="do not match") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path / "model.weights.h5") in message
    assert "(16, 2, 8)" in message and "(16, 2, 16)" in message  # the attention kernels
    assert "earlier msatune model family" in message


def test_same_sizes_in_other_shapes_do_not_load(tmp_path):
    # 2 heads of 8 and 1 head of 16 hold as many arrays and values: the shapes tell them apart.
    config = {"family": "baseline", **TINY, "num_heads": 2, "key_dim": 8}
    path = save_checkpoint(tmp_path / "c", build_model(config, DIMS), config, DIMS)
    (path / "config.json").write_text(json.dumps({**config, "num_heads": 1, "key_dim": 16}))
    with pytest.raises(UserError, match=r"do not match.*74 arrays.*has 74 ") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "only in the file: (2, 8) x12, (16, 2, 8) x12" in message
    assert "only in the model: (1, 16) x12, (16, 1, 16) x12" in message


def test_seqlevel_checkpoint_keeps_its_sequence_length(tmp_path):
    # The seqlevel family needs its fixed T to rebuild (one positional vector per step).
    config = {"family": "seqlevel", **TINY, "model_dim": 8, "pooling_method": "attention",
              "bidirectional_fusion": True}
    model = build_model(config, DIMS, seq_len=5)
    rng = np.random.default_rng(3)
    model.set_weights([w + rng.uniform(0.05, 0.1, size=w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    path = save_checkpoint(tmp_path / "ckpt", model, config, DIMS, {"epoch": 1})
    loaded, _, meta = load_checkpoint(path)
    assert meta["seq_len"] == 5
    x = batch(t=5, seed=7)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
