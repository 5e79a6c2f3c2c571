"""The driver's Ray pid file: ``stop_ray`` forgets only the processes this driver started."""

from __future__ import annotations

import json
import os
from pathlib import Path

import ray

from msatune.search.ray_session import RAY_PIDS_FILE, stop_ray


def test_stop_ray_leaves_the_pid_file_of_the_driver_that_took_the_study_over(tmp_path: Path,
                                                                             monkeypatch) -> None:
    # the suite's one Ray session stays up: only the pid-file rule is under test
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    pid_file = tmp_path / RAY_PIDS_FILE
    theirs = {"driver_pid": os.getpid() + 1, "session_dir": "/tmp/ray/session_x", "pids": [12345]}
    pid_file.write_text(json.dumps(theirs))
    stop_ray(tmp_path)
    assert json.loads(pid_file.read_text()) == theirs  # the new driver's watchdog still needs it
    pid_file.write_text(json.dumps({**theirs, "driver_pid": os.getpid()}))
    stop_ray(tmp_path)
    assert not pid_file.exists()
    stop_ray(tmp_path)  # no file: nothing to do
