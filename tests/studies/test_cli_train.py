"""``msatune train``: one configuration end to end, files a user relies on, bad input."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from msatune.studies.cli import main
from tests.conftest import one_line_error, run_in


def test_train_improved_writes_checkpoint_log_and_metrics_that_rebuild_exactly(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    rc = main(["--workspace", str(tmp_path / "ws"), "train", "--data", str(tiny_data), "--preset", "improved",
               "--epochs", "3", "--set", "model_dim=16", "--set", "ff_dim=32", "--out", str(out), "--json"])
    assert rc == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload["epochs_trained"] == 3 and 1 <= payload["best_epoch"] <= 3  # 1-based
    assert 1 <= payload["early_stop_best_epoch"] <= 3  # improved: early stopping on val_loss
    # one line per epoch (on stderr with --json, so stdout stays one JSON document)
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1", "epoch 2", "epoch 3"]
    assert all("train MAE" in ln and "val MAE" in ln and "lr " in ln for ln in lines)
    assert sum("(best so far)" in ln for ln in lines) >= 1
    assert payload["params"] > 0
    assert set(payload["metrics"]) == {"valid", "test"} and "mae" in payload["metrics"]["test"]
    assert payload["reference"]["valid"]["floor_mae"] is not None  # synthetic data has an oracle

    with open(out / "training_log.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "learning_rate", "loss", "mae", "mse", "val_loss", "val_mae", "val_mse"]
    assert len(rows) == 4
    assert json.loads((out / "metrics.json").read_text())["best_epoch"] == payload["best_epoch"]

    from msatune.augment.dataset import load_dataset
    from msatune.models.checkpoint import load_checkpoint, read_predictions

    model, config, meta = load_checkpoint(out / "checkpoint")
    assert config["model_dim"] == 16 and meta["best_epoch"] + 1 == payload["best_epoch"]  # file: 0-based
    saved = read_predictions(out / "checkpoint")
    data = load_dataset(tiny_data)
    rebuilt = model.predict(data.splits["valid"].inputs(), verbose=0).reshape(-1)
    np.testing.assert_allclose(rebuilt, saved["valid_pred"], atol=1e-5)
    np.testing.assert_array_equal(saved["valid_index"], np.arange(data.splits["valid"].n))
    assert abs(float(np.mean(np.abs(saved["valid_pred"] - saved["valid_label"])))
               - payload["metrics"]["valid"]["mae"]) < 1e-5


@pytest.mark.parametrize("args, needle", [
    (["--preset", "fancy"], "unknown preset 'fancy'"),
    (["--set", "dropuot=0.2"], "unknown config key 'dropuot'"),
    (["--set", "loss=l1"], "loss='l1' is not allowed"),
    (["--data", "/no/such/data"], "/no/such/data"),
])
def test_bad_train_input_is_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    data = [] if "--data" in args else ["--data", str(tmp_path / "missing")]
    proc = run_in(tmp_path / "ws", "train", *data, *args, env=os.environ, timeout=120)
    one_line_error(proc, needle)


def test_ctrl_c_during_train_removes_the_unfinished_run_directory(tmp_path: Path, tiny_data: Path) -> None:
    """Ctrl-C (SIGINT) after the first epoch: exit 130, one line naming the directory it removed,
    and nothing of the run left in the workspace."""
    import signal
    import subprocess
    import time

    from tests.conftest import cli_env, ctrl_c_reaches_children, msatune_argv

    ws = tmp_path / "ws"
    with ctrl_c_reaches_children():
        proc = subprocess.Popen(msatune_argv("train", "--data", tiny_data, "--preset", "baseline", "--epochs", "500",
                                             "--set", "patience=0", workspace=ws),  # no early stop before the signal
                                env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # "epoch 1: ..." once an epoch finished (the run dir exists)
        assert first.startswith("epoch 1:"), (first, proc.stderr.read() if proc.poll() is not None else "")
        assert any((ws / "train").iterdir())
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err
    assert "msatune: interrupted: removed the unfinished run directory" in err, err
    assert not ws.exists()  # the run created the workspace too: nothing of it is left
