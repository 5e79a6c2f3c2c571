"""A real browser (headless Chromium) renders the dashboard page of the tiny study.

Skipped only when Chromium is absent and ``CI`` is not set; under CI a missing browser fails
(``.ci/run`` installs Debian's ``chromium``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port, msatune_argv

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,1800", "--virtual-time-budget=15000",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    if os.environ.get("CI"):
        pytest.fail("CI is set but Chromium is not installed: .ci/run must `apt-get install -y chromium`")
    pytest.skip("Chromium is not installed (apt-get install chromium); CI installs it and runs this test")


def _visible_text(dom: str) -> str:
    dom = re.sub(r"<(style|script)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.mark.slow
def test_chromium_renders_the_study_page(tiny_study: dict, tmp_path: Path) -> None:
    browser = chromium()
    ws = Path(tiny_study["workspace"])
    import optuna

    from msatune.studies.store.connect import open_storage

    study = optuna.load_study(study_name=tiny_study["name"], storage=open_storage(tiny_study["storage_url"]))
    numbers = [t.number for t in study.get_trials()]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "dashboard.err").open("w")
    proc = subprocess.Popen(msatune_argv("dashboard", "--port", str(port), workspace=ws),
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/api/studies", timeout=2) as r:
                    listing = json.load(r)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "dashboard did not start"
                time.sleep(0.2)
        sid = {s["study_name"]: s["study_id"] for s in listing["study_summaries"]}[tiny_study["name"]]
        url = f"{base}/dashboard/studies/{sid}"
        cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]

        text = ""
        for _attempt in range(3):  # the page fetches the study after load; retry a slow render
            dom = subprocess.run([*cmd, "--dump-dom", url], capture_output=True, text=True, timeout=120)
            text = _visible_text(dom.stdout)
            if all(f"trial #{n}" in text for n in numbers):
                break
        assert f"{tiny_study['name']} (id={sid})" in text, text[:2000]
        for n in numbers:  # the intermediate-values chart has one legend entry per trial
            assert f"trial #{n}" in text, (n, text[:2000])
        assert "Best Trial (number=" in text
        assert "msatune: this dashboard is read-only" in text  # the page says what the 403s mean

        shot_dir = ws / "test-artifacts"
        shot_dir.mkdir(exist_ok=True)
        shot = shot_dir / "dashboard-study.png"
        subprocess.run([*cmd, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
