"""Plugin readiness and the Install flow, with a package this test builds (no network)."""
import base64
import copy
import hashlib
import json
import zipfile

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from conftest import REPO
from test_app import start_app


def build_wheel(folder, name="tlab_demo_pkg", version="0.1"):
    """A minimal pure-Python wheel, written by hand."""
    dist = f"{name}-{version}"
    files = {
        f"{name}/__init__.py": "VALUE = 42\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: tlab-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


@pytest.fixture
def plugin_dir(tmp_path):
    """The shipped manifests plus two that need packages: one this test can install, one it cannot."""
    folder = tmp_path / "manifests"
    folder.mkdir()
    for path in (REPO / "plugin_manifests").glob("*.json"):
        (folder / path.name).write_text(path.read_text())
    base = json.loads((REPO / "plugin_manifests" / "llama_sft_multi_gpu.json").read_text())
    for stem, req in (("needs_demo", "tlab-demo-pkg==0.1"), ("needs_absent", "tlab-absent-pkg==1.0")):
        m = copy.deepcopy(base)
        m.update(uniqueId=stem, name=f"Plugin {stem}", environment=stem, requirements=[req])
        (folder / f"{stem}.json").write_text(json.dumps(m))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    build_wheel(wheels)
    return folder, wheels


def test_unsloth_is_not_ready_here_and_cannot_start(home):
    from tlab_gradio.service import RequestError, Service

    svc = Service()
    row = next(p for p in svc.plugin_list() if p["id"] == "unsloth_grpo")
    assert not row["ready"] and row["installable"] and row["environment"] == "unsloth"
    assert any("missing package unsloth" in r for r in row["reasons"])
    assert "needs a CUDA GPU (none found on this machine)" in row["reasons"]
    with pytest.raises(RequestError) as info:
        svc.start_job({"plugin": "unsloth_grpo"})
    assert any("missing package unsloth" in p for p in info.value.problems)
    assert any("needs a CUDA GPU" in p for p in info.value.problems)
    assert svc.list_jobs() == []
    other = next(p for p in svc.plugin_list() if p["id"] == "llama_sft_multi_gpu")
    assert other["ready"]  # one plugin's needs do not touch another


def test_install_flow_over_the_api(home, tmp_path, plugin_dir):
    folder, wheels = plugin_dir
    proc, url = start_app({"TLAB_MANIFEST_DIR": str(folder),
                           "TLAB_PIP_ARGS": f"--no-index --find-links {wheels}"}, tmp_path)
    try:
        client = Client(url, verbose=False)
        plugins = {p["id"]: p for p in client.predict(api_name="/list_plugins")}
        assert not plugins["needs_demo"]["ready"]
        assert "missing package tlab-demo-pkg" in plugins["needs_demo"]["reason"]
        with pytest.raises(AppError, match="not ready: missing package tlab-demo-pkg"):
            client.predict({"plugin": "needs_demo", "device": "cpu"}, api_name="/start_job")

        done = client.predict("needs_demo", api_name="/install_plugin")
        assert done["ready"] and done["reasons"] == []
        assert "-m venv" in done["output"] and "Successfully installed tlab-demo-pkg-0.1" in done["output"]
        plugins = {p["id"]: p for p in client.predict(api_name="/list_plugins")}
        assert plugins["needs_demo"]["ready"]
        assert (home / "envs" / "needs_demo" / "bin" / "python").exists()

        with pytest.raises(AppError) as info:
            client.predict("needs_absent", api_name="/install_plugin")
        message = str(info.value)
        assert "install failed: pip exited with code 1" in message
        assert "No matching distribution found for tlab-absent-pkg==1.0" in message
        plugins = {p["id"]: p for p in client.predict(api_name="/list_plugins")}
        assert not plugins["needs_absent"]["ready"] and plugins["llama_sft_multi_gpu"]["ready"]  # app still fine
    finally:
        proc.terminate()
        proc.wait(20)
