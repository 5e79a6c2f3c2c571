"""``msatune dashboard``: serves the store read-only and refuses writes. (That it never breaks a
running study is ``test_drivers.py``'s: a dashboard polls a study through kill -9, Ctrl-C, resume.)"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from msatune.errors import UserError
from msatune.studies.cli import main
from tests.conftest import free_port, msatune_argv


def http(method: str, url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


class Dashboard:
    """``msatune dashboard`` in a subprocess on a free port; ``stop()`` ends it by PID."""

    def __init__(self, workspace: Path, *extra: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.out = workspace / f"dashboard-{self.port}.out"
        self.err = workspace / f"dashboard-{self.port}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                msatune_argv("dashboard", "--port", str(self.port), *extra, workspace=workspace),
                stdout=out, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dashboard exited {self.proc.returncode}: {self.err.read_text()}")
            try:
                if http("GET", self.base + "/api/meta", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"dashboard did not answer in 60 s: {self.err.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, 9)
                self.proc.wait(timeout=10)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dashboard_serves_the_study_and_refuses_writes(tiny_study: dict) -> None:
    import optuna

    from msatune.studies.store.connect import open_storage

    ws = Path(tiny_study["workspace"])
    store_file = ws / "studies.db"
    study = optuna.load_study(study_name=tiny_study["name"], storage=open_storage(tiny_study["storage_url"]))
    trials = study.get_trials()
    before = sha256(store_file)
    artifacts_before = sorted(p.name for p in (ws / "artifacts").glob("*")) if (ws / "artifacts").exists() else []

    dash = Dashboard(ws)
    try:
        status, listing = http("GET", dash.base + "/api/studies")
        assert status == 200
        summary = {s["study_name"]: s for s in listing["study_summaries"]}[tiny_study["name"]]
        sid = summary["study_id"]

        status, detail = http("GET", f"{dash.base}/api/studies/{sid}")
        assert status == 200 and detail["name"] == tiny_study["name"]
        assert len(detail["trials"]) == len(trials)
        served = {t["number"]: t for t in detail["trials"]}
        for t in trials:
            d = served[t.number]
            assert d["state"].upper() == t.state.name  # "Complete" / "Pruned"
            assert {iv["step"]: iv["value"] for iv in d["intermediate_values"]} == pytest.approx(
                {int(k): v for k, v in t.intermediate_values.items()})
        assert any(d["state"] == "Pruned" for d in detail["trials"])
        assert any(len(d["intermediate_values"]) > 1 for d in detail["trials"])

        # the URL of each study is printed
        out = dash.out.read_text()
        assert f"{dash.base}/dashboard/studies/{sid}" in out
        assert "no authentication" in dash.err.read_text()

        # write endpoints are refused and change nothing
        trial_id = trials[0]._trial_id
        for method, path, body in (
            ("POST", f"/api/studies/{sid}/rename", {"study_name": "renamed"}),
            ("DELETE", f"/api/studies/{sid}", {"remove_associated_artifacts": True}),
            ("POST", f"/api/trials/{trial_id}/tell", {"state": "Fail"}),
            ("PUT", f"/api/studies/{sid}/note", {"version": 1, "body": "hello"}),
            ("POST", "/api/studies", {"study_name": "new", "directions": ["minimize"]}),
        ):
            status, reply = http(method, dash.base + path, body)
            assert status == 403, (method, path, status, reply)
            assert "read-only" in reply["reason"]
        assert http("GET", dash.base + "/api/studies")[1]["study_summaries"] == listing["study_summaries"]
    finally:
        dash.stop()
    assert dash.proc.returncode is not None
    assert sha256(store_file) == before
    after = sorted(p.name for p in (ws / "artifacts").glob("*")) if (ws / "artifacts").exists() else []
    assert after == artifacts_before


def test_writable_dashboard_changes_a_copy_of_the_store(tiny_study: dict, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(Path(tiny_study["workspace"]) / "studies.db", ws / "studies.db")
    dash = Dashboard(ws, "--writable")
    try:
        sid = http("GET", dash.base + "/api/studies")[1]["study_summaries"][0]["study_id"]
        status, _ = http("PUT", f"{dash.base}/api/studies/{sid}/note", {"version": 1, "body": "checked"})
        assert status == 204
        assert http("GET", f"{dash.base}/api/studies/{sid}")[1]["note"]["body"] == "checked"
        assert "WRITABLE" in dash.err.read_text()
    finally:
        dash.stop()


def test_read_only_storage_refuses_writes_itself(tiny_study: dict, tmp_path: Path) -> None:
    """Defense in depth: even past the HTTP guard, the SQLite connection cannot write."""
    from msatune.studies.dashboard import open_dashboard_storage
    from msatune.studies.store.connect import read_only_sqlite_url

    db = tmp_path / "copy.db"
    shutil.copy(Path(tiny_study["workspace"]) / "studies.db", db)
    before = sha256(db)
    assert read_only_sqlite_url(f"sqlite:///{db}") == f"sqlite:///file:{db}?mode=ro&uri=true"
    storage = open_dashboard_storage(f"sqlite:///{db}")
    sid = storage.get_all_studies()[0]._study_id
    assert storage.get_all_trials(sid)
    with pytest.raises(Exception) as info:  # noqa: B017 - Optuna wraps the SQLite error
        storage.set_study_user_attr(sid, "x", 1)
    chain, exc = [], info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert "readonly database" in " ".join(chain), chain
    assert sha256(db) == before


def test_dashboard_without_a_store_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["--workspace", str(tmp_path / "empty"), "dashboard", "--port", "0"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("msatune: error: no study store at") and err.count("\n") == 1
    with pytest.raises(UserError, match="not a database URL"):
        from msatune.studies.store.connect import read_only_sqlite_url

        read_only_sqlite_url("not a url")


def test_read_only_dashboard_says_so_names_the_metric_and_creates_nothing(tiny_study: dict,
                                                                         tmp_path: Path) -> None:
    from msatune.studies.dashboard import DashboardServer

    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(Path(tiny_study["workspace"]) / "studies.db", ws / "studies.db")
    url = f"sqlite:///{ws / 'studies.db'}"
    server = DashboardServer(url, port=0, artifact_dir=ws / "artifacts")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        status, page = http("GET", server.base_url + "/dashboard")
        assert status == 200 and "msatune: this dashboard is read-only" in page
        assert "--writable" in page
        sid = http("GET", server.base_url + "/api/studies")[1]["study_summaries"][0]["study_id"]
        status, detail = http("GET", f"{server.base_url}/api/studies/{sid}")
        assert status == 200 and detail["objective_names"] == ["val_mae"]  # the axis reads val_mae
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert not (ws / "artifacts").exists()

    with socket.socket() as busy:  # a dashboard that cannot listen creates nothing either
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserError, match="cannot listen"):
            DashboardServer(url, port=busy.getsockname()[1], artifact_dir=ws / "artifacts")
    assert sorted(p.name for p in ws.iterdir()) == ["studies.db"]
