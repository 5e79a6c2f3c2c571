"""``msatune data synth|info|import-mmsa`` end to end, in a subprocess like a user runs them."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest

from msatune.studies.cli import main
from tests.conftest import one_line_error as assert_user_error
from tests.conftest import run_msatune
from tests.conftest import tree_paths as tree


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_msatune(*args, env=os.environ)


# ---------------------------------------------------------------------------------------------
# Working paths


def test_synth_then_info_json(tmp_path: Path, tiny_data: Path) -> None:
    out = tmp_path / "tiny"
    proc = run_cli("data", "synth", out, "--preset", "tiny", "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    assert "48/24/24" in proc.stdout
    proc = run_cli("data", "info", out, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert set(info) == {"path", "splits", "fingerprint", "memory"}
    assert [info["splits"][s]["n"] for s in ("train", "valid", "test")] == [48, 24, 24]
    assert info["splits"]["train"]["dims"] == {"text": 16, "audio": 8, "video": 6}
    assert info["splits"]["train"]["seq_len"] == 8
    assert info["splits"]["valid"]["floor_mae"] < info["splits"]["valid"]["constant_mae"]
    # same seed as the session fixture: same fingerprint
    assert info["fingerprint"] == json.loads(run_cli("data", "info", tiny_data, "--json").stdout)[
        "fingerprint"
    ]


def test_info_table(tiny_data: Path, capsys) -> None:
    assert main(["data", "info", str(tiny_data)]) == 0
    out = capsys.readouterr().out
    for needle in ("train", "valid", "test", "const", "floor", "fingerprint", "16/8/6"):
        assert needle in out


def test_info_with_nan_reports_count(tmp_path: Path, tiny_arrays, write_layout) -> None:
    tiny_arrays["train"]["audio"][0, :2, 0] = np.nan
    tiny_arrays["test"]["video"][1, 0, :] = -np.inf
    root = write_layout(tmp_path / "nan", tiny_arrays)
    proc = run_cli("data", "info", root, "--json")
    assert proc.returncode == 0, proc.stderr
    splits = json.loads(proc.stdout)["splits"]
    assert [splits[s]["nan_count"] for s in ("train", "valid", "test")] == [2, 0, 2]
    assert splits["train"]["floor_mae"] is None


def test_clip_labels(tmp_path: Path, tiny_arrays, write_layout) -> None:
    tiny_arrays["valid"]["labels"][0, 0] = 3.4
    root = write_layout(tmp_path / "d", tiny_arrays)
    assert_user_error(run_cli("data", "info", root), "y_valid.h5", "outside [-3, 3]", "--clip-labels")
    proc = run_cli("data", "info", root, "--json", "--clip-labels")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["splits"]["valid"]["label_max"] == 3.0
    assert "clipped 1 label(s)" in proc.stderr


def test_import_mmsa(tmp_path: Path, mmsa_dict) -> None:
    pkl = tmp_path / "aligned_50.pkl"
    pkl.write_bytes(pickle.dumps(mmsa_dict()))
    out = tmp_path / "out"
    assert_user_error(run_cli("data", "import-mmsa", pkl, out), "aligned_50.pkl", "--allow-pickle")
    assert tree(tmp_path) == ["aligned_50.pkl"]
    proc = run_cli("data", "import-mmsa", pkl, out, "--allow-pickle")
    assert proc.returncode == 0, proc.stderr
    assert "replaced 3 non-finite feature values (NaN, -inf) by 0: 1 in train, 1 in valid, 1 in test" in proc.stdout
    info = json.loads(run_cli("data", "info", out, "--json").stdout)
    assert [info["splits"][s]["n"] for s in ("train", "valid", "test")] == [5, 3, 4]
    assert info["splits"]["train"]["dims"] == {"text": 768, "audio": 5, "video": 20}
    assert info["splits"]["train"]["nan_count"] == 0  # MMSA's -inf was written as 0


def test_import_unaligned_refused(tmp_path: Path, mmsa_dict) -> None:
    pkl = tmp_path / "unaligned_50.pkl"
    pkl.write_bytes(pickle.dumps(mmsa_dict(t_audio=12)))
    assert_user_error(
        run_cli("data", "import-mmsa", pkl, tmp_path / "out", "--allow-pickle"),
        "unaligned_50.pkl", "audio T=12", "use MMSA's aligned_50.pkl",
    )
    assert tree(tmp_path) == ["unaligned_50.pkl"]


def test_help_teaches(capsys) -> None:
    for args in (["data"], ["data", "synth"], ["data", "info"], ["data", "import-mmsa"]):
        assert main([*args, "--help"]) == 0
        text = capsys.readouterr().out
        assert "Example" in text and "msatune data" in text, args
    assert main(["data", "import-mmsa", "--help"]) == 0
    assert "runs" in capsys.readouterr().out  # explains why pickles need opt-in


# ---------------------------------------------------------------------------------------------
# Bad inputs: exit 2, one line naming the file and the problem, nothing written


def _mutations():
    def drop(split, kind):
        return lambda a: a[split].__setitem__(kind, None)

    def cut(split, kind, sl):
        return lambda a: a[split].__setitem__(kind, a[split][kind][sl])

    def setv(split, kind, fn):
        return lambda a: a[split].__setitem__(kind, fn(a[split][kind]))

    return {
        "missing file": (drop("test", "labels"), ["y_test.h5", "missing file"]),
        "N across modalities": (cut("train", "audio", slice(0, -1)),
                                ["audio_train.h5:/d1 N=5", "different sample counts"]),
        "N vs labels": (cut("valid", "labels", slice(0, -1)), ["y_valid.h5:/d1 N=3"]),
        "T across splits": (lambda a: [a["test"].__setitem__(m, a["test"][m][:, :3])
                                       for m in ("text", "audio", "video")],
                            ["text_test_emb.h5", "T and the feature dimension"]),
        "D across splits": (setv("valid", "audio", lambda x: np.concatenate([x, x], axis=2)),
                            ["audio_valid.h5", "(4, 5, 6)"]),
        "string dtype": (setv("test", "video", lambda x: x.astype("S6")),
                         ["video_test.h5", "holds strings, not numbers"]),
        "empty": (lambda a: [a["train"].__setitem__(k, a["train"][k][:0])
                             for k in ("text", "audio", "video", "labels")],
                  ["text_train_emb.h5", "empty array"]),
        "non-finite labels": (setv("test", "labels", lambda y: y * np.inf),
                              ["y_test.h5", "non-finite labels"]),
        "labels outside range": (setv("train", "labels", lambda y: y - 5),
                                 ["y_train.h5", "outside [-3, 3]"]),
        "2-D features": (setv("train", "video", lambda x: x[:, :, 0]),
                         ["video_train.h5", "expected 3-D"]),
    }


MUTATIONS = _mutations()


@pytest.mark.parametrize("case", list(MUTATIONS))
def test_info_bad_input(case: str, tmp_path: Path, tiny_arrays, write_layout) -> None:
    mutate, needles = MUTATIONS[case]
    mutate(tiny_arrays)
    root = write_layout(tmp_path / "bad", tiny_arrays)
    before = tree(tmp_path)
    assert_user_error(run_cli("data", "info", root), *needles)
    assert tree(tmp_path) == before


def test_info_missing_d1(tmp_path: Path, tiny_arrays, write_layout) -> None:
    import h5py

    root = write_layout(tmp_path / "bad", tiny_arrays)
    with h5py.File(root / "audio_test.h5", "w") as f:
        f.create_dataset("features", data=tiny_arrays["test"]["audio"])
    assert_user_error(run_cli("data", "info", root), "audio_test.h5", "no dataset 'd1'")


def test_info_not_a_directory(tmp_path: Path) -> None:
    assert_user_error(run_cli("data", "info", tmp_path / "absent"), "absent", "no such directory")
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert_user_error(run_cli("data", "info", f), "file.txt", "not a directory")
    assert tree(tmp_path) == ["file.txt"]


def test_synth_refuses_non_empty_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_user_error(run_cli("data", "synth", out, "--preset", "tiny"), str(out), "--overwrite")
    assert tree(tmp_path) == ["out", "out/notes.txt"]
    assert run_cli("data", "synth", out, "--preset", "tiny", "--overwrite").returncode == 0
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite replaces the dataset's files only
    assert "text_train_emb.h5" in tree(out)


def test_synth_bad_preset(tmp_path: Path) -> None:
    assert_user_error(run_cli("data", "synth", tmp_path / "o", "--preset", "huge"), "huge")
    assert tree(tmp_path) == []


def test_synth_scaled_mosei_then_info(tmp_path: Path) -> None:
    out = tmp_path / "mosei"
    proc = run_cli("data", "synth", out, "--preset", "mosei", "--scale", "0.002", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert "preset mosei x0.002" in proc.stdout and "33/8/9 samples" in proc.stdout
    info = json.loads(run_cli("data", "info", out, "--json").stdout)
    assert [info["splits"][s]["n"] for s in ("train", "valid", "test")] == [33, 8, 9]
    assert info["splits"]["train"]["dims"] == {"text": 300, "audio": 74, "video": 713}


@pytest.mark.parametrize("bad", ["0", "-1", "1.5", "nan", "abc"])
def test_synth_bad_scale(tmp_path: Path, bad: str) -> None:
    proc = run_cli("data", "synth", tmp_path / "o", "--preset", "mosei", "--scale", bad)
    assert_user_error(proc, "--scale", bad)
    assert tree(tmp_path) == []


def test_info_says_what_a_trial_needs_in_memory(tmp_path: Path) -> None:
    out = tmp_path / "mosei"
    assert run_cli("data", "synth", out, "--preset", "mosei", "--scale", "0.002").returncode == 0
    info = json.loads(run_cli("data", "info", out, "--json").stdout)
    mem = info["memory"]
    split_bytes = {"train": 33 * 20 * 1087 * 4 + 33 * 4, "valid": 8 * 20 * 1087 * 4 + 8 * 4,
                   "test": 9 * 20 * 1087 * 4 + 9 * 4}
    assert mem["data_bytes"] == sum(split_bytes.values())
    # held in memory: the arrays once (the pipelines gather batches from them) and the runtime
    assert mem["trial_bytes"] == mem["data_bytes"] + mem["runtime_bytes"] > mem["runtime_bytes"] > 0
    assert "tf_copy_bytes" not in mem and "shuffle_buffer_bytes" not in mem
    assert mem["machine_bytes"] > mem["trial_bytes"] and mem["streamed_splits"] == []
    proc = run_cli("data", "info", out)
    assert "a trial needs about" in proc.stdout and "this machine has" in proc.stdout
    # a split over the threshold is read from its files
    env = {**os.environ, "MSATUNE_STREAM_ABOVE_BYTES": str(split_bytes["train"] - 1)}
    streamed = json.loads(run_msatune("data", "info", out, "--json", env=env).stdout)["memory"]
    assert streamed["streamed_splits"] == ["train"]
    env["MSATUNE_STREAM_ABOVE_BYTES"] = "lots"
    assert_user_error(run_msatune("data", "info", out, env=env), "MSATUNE_STREAM_ABOVE_BYTES", "lots")
