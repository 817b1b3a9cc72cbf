import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

HOSTILE_ACCELERATE_DEFAULT = """\
compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_processes: 3
gpu_ids: all
mixed_precision: fp16
num_machines: 1
machine_rank: 0
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh workspace, and a user accelerate default config that must not win over the form."""
    ws = tmp_path / "ws"
    hf = tmp_path / "hf"
    (hf / "accelerate").mkdir(parents=True)
    (hf / "accelerate" / "default_config.yaml").write_text(HOSTILE_ACCELERATE_DEFAULT)
    monkeypatch.setenv("TLAB_HOME", str(ws))
    monkeypatch.setenv("HF_HOME", str(hf))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TLAB_STOP_GRACE", "5")
    return ws


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The embedded model built once per test session, for tests that load it directly."""
    from tlab_gradio import tiny_model

    return tiny_model.ensure(tmp_path_factory.mktemp("models") / tiny_model.NAME)


CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "tests" / "artifacts"


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium for the browser tests, installed here when missing (CI runs as root)."""
    import shutil
    import subprocess

    if not CHROMIUM.exists():
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("Chromium is not installed and cannot be installed here (needs root and apt-get)")
        subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    ARTIFACTS.mkdir(exist_ok=True)
    return str(CHROMIUM)


@pytest.fixture
def real_manager(home):
    """A job store whose jobs' processes (found by their job tag) are all gone after the test, whatever it did."""
    import standins
    from tlab_gradio.jobs import JobManager

    mgr = JobManager(home)
    yield mgr
    for job in mgr.list():
        for proc in standins.left_of(job.job_dir):
            proc.kill()


@pytest.fixture
def no_leftovers(home):
    """Whatever a test's attack left running (on code that fails it), killed afterwards."""
    import standins

    yield
    for job_dir in (home / "jobs").glob("*"):
        for proc in standins.left_of(job_dir):
            proc.kill()
