"""train.ipynb as a user runs it: JupyterLab in headless Chromium, Run → Run All Cells, then the RENDERED page must
show the per-fold table, the curves and the confusion heatmap, a finished progress bar, and no traceback.

Needs chromium + chromium-driver (apt-get install chromium chromium-driver) and jupyterlab + selenium (pip);
skips, saying which is missing, when they are not there. Screenshots go to the test's tmp_path (paths printed)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest
from conftest import REPO, heavy_start

pytestmark = pytest.mark.browser

FOLDS, EPOCHS = 2, 3
RUN_TIMEOUT_S = 180  # Run All → last cell done, kernel idle
START_TIMEOUT_S = 180  # JupyterLab answering, the kernel idle: generous for a loaded 2-core machine
SHORT = {"features.signal_length": 16000}

# What the rendered notebook shows, gathered in one round trip.
PAGE_STATE_JS = """
const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
if (!nb) return null;
const cells = [...nb.querySelectorAll('.jp-CodeCell')];
const indicator = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator');
// Errors render as stderr too, which also holds warnings: a traceback, an ...Error, or timnet's one-line error.
const errors = [...nb.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
  .map(o => o.innerText).filter(t => /Traceback|\\b\\w*Error\\b|^timnet: error/m.test(t));
return {
  prompts: cells.map(c => (c.querySelector('.jp-InputPrompt') || {}).textContent || ''),
  kernel: indicator ? indicator.getAttribute('data-status') : null,
  tables: [...nb.querySelectorAll('.jp-OutputArea-output table.dataframe')]
    .map(t => [...t.querySelectorAll('tr')].map(r => [...r.children].map(c => c.innerText.trim()))),
  images: [...nb.querySelectorAll('.jp-OutputArea-output img')].map(i => [i.naturalWidth, i.naturalHeight]),
  bars: [...nb.querySelectorAll('.widget-hprogress .progress-bar, .widget-vprogress .progress-bar')]
    .map(b => b.style.width),
  widget_text: [...nb.querySelectorAll('.jp-OutputArea-output .widget-hbox')].map(w => w.innerText),
  errors: errors,
};
"""


def _find(*names: str) -> str | None:
    return next((p for p in map(shutil.which, names) if p), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _needs() -> tuple[str, str]:
    """Paths of chromium and chromedriver; or skip, saying what is missing and how to install it."""
    chromium = _find("chromium", "chromium-browser", "google-chrome")
    driver = _find("chromedriver")
    missing = [what for what, ok in (("chromium", chromium), ("chromium-driver", driver)) if not ok]
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (apt-get install chromium chromium-driver) for the browser test")
    for module, pkg in (("selenium", "selenium"), ("jupyterlab", "jupyterlab"), ("papermill", "papermill")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {pkg} (python3 -m pip install {pkg}) for the browser test")
    return chromium, driver


def _prepare(root: Path) -> Path:
    """A fresh clone's working folder: Datasets/EXAMPLE, MFCC/EXAMPLE.npy, and train.ipynb with short parameters."""
    import papermill

    from timnet import load_config
    from timnet.data.example import write_example_corpus
    from timnet.data.mfcc_extraction import preprocess

    corpus = write_example_corpus(root / "Datasets" / "EXAMPLE")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preprocess(load_config("EXAMPLE", SHORT), corpus, root / "MFCC", progress=False)
    notebook = root / "train.ipynb"
    papermill.execute_notebook(
        str(REPO / "train.ipynb"),
        str(notebook),
        prepare_only=True,
        kernel_name="python3",
        progress_bar=False,
        parameters={"dataset": "EXAMPLE", "folds": FOLDS, "epochs": EPOCHS, "overrides": SHORT, "device": "cpu"},
    )
    return notebook


def _start_lab(root: Path, home: Path) -> tuple[subprocess.Popen, str, str, Path]:
    """JupyterLab on a free loopback port with a token; returns (process, base url, token, log file) at once."""
    port, token = _free_port(), secrets.token_hex(16)
    settings = home / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # No "fetch Jupyter news?" toast over the page, and no requests to the internet.
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
    }
    log = home / "jupyterlab.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.extension_manager=readonly",  # no queries to PyPI for extensions
        *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),  # containers, CI
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}", token, log


def _wait_ready(proc: subprocess.Popen, base: str, token: str, log: Path, timeout: float = START_TIMEOUT_S) -> bool:
    """Until /api/status answers (True); False if the server exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            req = urllib.request.Request(f"{base}/api/status", headers={"Authorization": f"token {token}"})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


def _lab(root: Path, home: Path) -> tuple[subprocess.Popen, str, str, Path]:
    """A JupyterLab that answers, started in turn with the other heavy starters (conftest.heavy_start); one that
    exits or stays silent on a busy machine is stopped and started once more (saying so), then the test skips."""
    for attempt in (1, 2):
        with heavy_start():
            proc, base, token, log = _start_lab(root, home / f"try{attempt}")
            if _wait_ready(proc, base, token, log):
                return proc, base, token, log
        _stop(proc)
        why = f"jupyterlab did not answer /api/status within {START_TIMEOUT_S} s (exit {proc.returncode})"
        print(f"{why}, attempt {attempt}: {log.read_text()[-1500:]}")
    pytest.skip(f"{why} twice")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server (it shuts its kernels down), then anything of its session still alive."""
    if proc.poll() is None:
        proc.terminate()  # SIGTERM: jupyter_server stops cleanly, shutting its kernels down
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the kernel it started, if it outlived the server
    except (ProcessLookupError, PermissionError):
        pass


def _browser(chromium: str, driver_path: str):
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2200"):
        options.add_argument(arg)
    try:  # an explicit driver path: Selenium Manager never downloads anything
        with heavy_start():
            return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    except WebDriverException as e:
        pytest.skip(f"chromium/chromedriver did not start ({e.msg}); install chromium chromium-driver (apt-get)")


def test_train_notebook_runs_all_cells_in_jupyterlab(tmp_path):
    chromium, driver_path = _needs()
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    root, home = tmp_path / "clone", tmp_path / "jupyter"
    root.mkdir(), home.mkdir()
    t0 = time.monotonic()
    code_cells = sum(c["cell_type"] == "code" for c in json.loads(_prepare(root).read_text())["cells"])
    proc, base, token, log = _lab(root, home)
    print(f"features + notebook + JupyterLab up: {time.monotonic() - t0:.1f} s")
    browser = None

    def shot(name: str) -> None:
        path = tmp_path / f"{name}.png"
        browser.save_screenshot(str(path))
        print(f"screenshot: {path}")

    def state() -> dict:
        return browser.execute_script(PAGE_STATE_JS) or {}

    try:
        browser = _browser(chromium, driver_path)
        browser.get(f"{base}/lab/tree/train.ipynb?token={token}")
        wait = WebDriverWait(browser, START_TIMEOUT_S, poll_frequency=0.25)  # the kernel starts on a busy machine
        # Every cell attached, the kernel started and idle (the status bar says so too).
        wait.until(lambda b: len(state().get("prompts", [])) == code_cells and state()["kernel"] == "idle")
        wait.until(lambda b: "| Idle" in b.find_element(By.ID, "jp-main-statusbar").text)
        shot("opened")

        # Run → Run All Cells, as a user clicks it.
        run_menu = (By.XPATH, "//li[contains(@class,'lm-MenuBar-item')][.//*[normalize-space()='Run']]")
        run_all = (By.XPATH, "//li[contains(@class,'lm-Menu-item')][.//*[normalize-space()='Run All Cells']]")
        started = time.monotonic()
        for attempt in range(2):  # a click in the very moment the kernel connects can be lost; once more then
            wait.until(EC.element_to_be_clickable(run_menu)).click()
            wait.until(EC.element_to_be_clickable(run_all)).click()
            try:
                WebDriverWait(browser, 20, poll_frequency=0.25).until(
                    lambda b: any(p.strip() != "[ ]:" for p in state()["prompts"])
                )
                break
            except TimeoutException:
                print(f"Run All Cells: no cell started within 20 s (attempt {attempt + 1})")
        else:
            raise AssertionError("Run → Run All Cells started no cell")

        def finished(b):
            s = state()
            prompts = [p.strip() for p in s["prompts"]]
            if any("*" in p for p in prompts) or s["kernel"] != "idle":
                return False
            return s["errors"] or re.fullmatch(r"\[\d+\]:", prompts[-1])

        WebDriverWait(browser, RUN_TIMEOUT_S, poll_frequency=0.5).until(finished)
        took = time.monotonic() - started
        last = browser.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell")[-1]
        browser.execute_script("arguments[0].scrollIntoView({block: 'end'});", last)
        time.sleep(0.5)  # let the scrolled-to outputs paint
        page = state()
        shot("finished")
        print(f"Run All Cells took {took:.1f} s; the page shows: {page}")

        assert not page["errors"], f"the notebook shows an error: {page['errors'][0][-2000:]}"
        assert all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in page["prompts"]), page["prompts"]
        folds = [rows for rows in page["tables"] if rows and "fold" in rows[0]]
        assert folds, f"no per-fold table.dataframe rendered: {page['tables']}"
        header, *rows = folds[0]
        assert [r[header.index("fold")] for r in rows] == [str(k) for k in range(1, FOLDS + 1)], folds[0]
        shown = [wh for wh in page["images"] if wh[0] > 0 and wh[1] > 0]
        assert len(shown) >= 2, f"curves and confusion heatmap: rendered images {page['images']}"
        done = f"{FOLDS * EPOCHS}/{FOLDS * EPOCHS}"
        assert "100%" in page["bars"] or any(done in t for t in page["widget_text"]), (
            f"no finished progress bar: bars {page['bars']}, widget text {page['widget_text']}"
        )
    except BaseException:
        if browser is not None:
            shot("failure")
        print(f"jupyterlab log {log}:\n{log.read_text()[-3000:]}")
        raise
    finally:
        if browser is not None:
            browser.quit()
        _stop(proc)
