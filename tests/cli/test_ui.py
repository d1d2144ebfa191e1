"""The MLflow UI and optuna-dashboard, as a person would use them on a finished study."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness.cli import main

from ..conftest import REPO, tiny_study

pytestmark = pytest.mark.slow

BROWSER_ENV = "HARNESS_TEST_BROWSER"  # path of a Chromium binary; CI sets it
ARTIFACTS = REPO / "tests" / "artifacts"  # screenshots kept by the tests (git-ignored)


def chromium() -> str:
    path = os.environ.get(BROWSER_ENV) or shutil.which("chromium")
    if not path:
        pytest.skip(f"no Chromium: `apt-get install chromium` or set {BROWSER_ENV} (CI does)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(cmd: list[str], url: str, cwd: Path, timeout: float = 120) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"{url} did not answer within {timeout} s")


def test_mlflow_ui_shows_the_trials_and_their_dev_loss(tmp_path, write_study, capsys):
    browser = chromium()
    from playwright.sync_api import sync_playwright

    study = write_study(tiny_study(budget={"n_trials": 2, "steps": 100, "eval_every": 50},
                                   finalize={"enabled": False}))
    assert main(["run-study", str(study)]) == 0
    capsys.readouterr()
    port = free_port()
    proc = serve([sys.executable, "-m", "harness.cli", "ui", str(study), "--port", str(port)],
                 f"http://127.0.0.1:{port}/health", tmp_path)
    try:
        address = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/#/experiments/" in address  # what the user is told
        experiment = address.split("/#/experiments/")[1].split("/")[0]
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=browser, args=[
                "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync"])
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs"
                      "?compareRunsMode=CHART", wait_until="domcontentloaded")
            parent = page.locator("[role=row]", has_text="study tiny").first
            parent.wait_for(timeout=60_000)
            parent.locator("button").first.click()  # the trials are nested under the study
            for name in ("trial-0000", "trial-0001"):
                page.get_by_text(name).first.wait_for(timeout=30_000)
            page.get_by_text("dev_loss", exact=True).first.wait_for(timeout=30_000)
            page.wait_for_timeout(1500)  # let the charts draw before the picture
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "mlflow_ui.png"))
            b.close()
        assert (ARTIFACTS / "mlflow_ui.png").stat().st_size > 20_000
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_ui_listens_on_localhost_by_default():
    from harness.cli.parser import build_parser

    args = build_parser().parse_args(["ui", "study.yaml"])
    assert args.host == "127.0.0.1"
