"""The real app: `python app.py` on a free port, driven through gradio_client like a script would."""
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from gradio_client import Client

from conftest import REPO

SFT = "llama_sft_multi_gpu"
ENDPOINTS = {"/list_plugins", "/start_job", "/job_status", "/job_log", "/stop_job", "/resume_job", "/chat",
             "/delete_job", "/list_jobs", "/gpu_info", "/install_plugin", "/list_rewards", "/upload_reward_file",
             "/export_job", "/push_job", "/start_sweep", "/sweep_status", "/stop_sweep",
             "/list_sweeps", "/check_job", "/dataset_format", "/evaluate_job", "/job_evaluations"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(env_extra, tmp_path):
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", **env_extra}
    log = open(tmp_path / f"app-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((tmp_path / f"app-{port}.log").read_text())
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the app did not answer within 120 s")


@pytest.fixture
def app_url(home, tmp_path):
    proc, url = start_app({}, tmp_path)
    yield url
    proc.terminate()
    proc.wait(20)


def wait_state(client, job_id, states, timeout=420):
    deadline = time.monotonic() + timeout
    while True:
        status = client.predict(job_id, api_name="/job_status")
        if status["state"] in states or time.monotonic() > deadline:
            return status
        time.sleep(1)


def test_the_api_lists_the_designed_endpoints_only(app_url):
    api = Client(app_url, verbose=False).view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == ENDPOINTS
    assert not api["unnamed_endpoints"]
    params = [p["parameter_name"] for p in api["named_endpoints"]["/job_log"]["parameters"]]
    assert params == ["job_id", "lines"]


def test_a_script_trains_watches_and_stops_jobs(app_url):
    client = Client(app_url, verbose=False)
    plugins = client.predict(api_name="/list_plugins")
    sft = next(p for p in plugins if p["id"] == SFT)
    assert sft["ready"] and sft["reason"] is None
    assert sft["parameters"]["device"]["default"] == "cpu"  # this machine has no GPU
    assert sft["parameters"]["max_steps"]["type"] == "integer"
    sections = {g["title"]: g for g in sft["parameter_groups"]}
    assert "max_steps" in sections["Training"]["parameters"] and not sections["Speed and memory"]["open"]

    job = client.predict({"plugin": SFT, "name": "api-run", "device": "cpu", "cpu_processes": 2,
                          "params": {"max_steps": 3, "logging_steps": 1, "max_length": 128}},
                         api_name="/start_job")
    assert job["state"] in ("QUEUED", "RUNNING")
    status = wait_state(client, job["job_id"], ("COMPLETE", "FAILED"))
    log = client.predict(job["job_id"], 400, api_name="/job_log")
    assert status["state"] == "COMPLETE", log
    assert status["step"] == 3 and status["total_steps"] == 3 and status["progress"] == 100.0
    assert status["exit_code"] == 0 and status["error"] is None
    assert status["last_metrics"]["world_size"] == 2
    assert "rank 1 of world size 2" in log
    assert client.predict(job["job_id"], 2, api_name="/job_log").count("\n") == 1
    listed = client.predict(api_name="/list_jobs")
    assert listed[0]["job_id"] == job["job_id"] and listed[0]["state"] == "COMPLETE"

    long_job = client.predict({"plugin": SFT, "device": "cpu", "params": {"max_steps": 100000}},
                              api_name="/start_job")
    running = wait_state(client, long_job["job_id"], ("RUNNING",), timeout=60)
    assert running["state"] == "RUNNING"
    assert client.predict(long_job["job_id"], api_name="/stop_job")["state"] == "STOPPING"
    assert wait_state(client, long_job["job_id"], ("STOPPED",), timeout=60)["state"] == "STOPPED"
    assert client.predict(api_name="/gpu_info") == []

    from gradio_client.exceptions import AppError

    deleted = client.predict(job["job_id"], api_name="/delete_job")
    assert deleted["deleted"] and deleted["freed_mb"] > 0  # its adapter and checkpoints went with it
    with pytest.raises(AppError, match=f"no job with id {job['job_id']}"):
        client.predict(job["job_id"], api_name="/job_status")
    assert [j["job_id"] for j in client.predict(api_name="/list_jobs")] == [long_job["job_id"]]


@pytest.mark.parametrize("request_, message", [
    ({"plugin": "nope"}, "unknown plugin 'nope'"),
    ({"plugin": SFT, "device": "cuda", "gpu_ids": "0,0"}, "gpu_ids '0,0': GPU 0 is listed twice"),
    ({"plugin": SFT, "device": "cuda", "gpu_ids": "abc"}, "gpu_ids 'abc': 'abc' is not a GPU number"),
    ({"plugin": SFT, "device": "cuda", "gpu_ids": "3"}, "gpu_ids '3': GPU 3 does not exist"),
    ({"plugin": SFT, "device": "cpu", "template": "{{question}}"},
     "data template uses `question`, which the dataset does not have; columns: instruction, input, output"),
    ({"plugin": SFT, "params": {"max_step": 3}}, "did you mean `max_steps`?"),
])
def test_bad_requests_come_back_as_errors_and_create_nothing(app_url, request_, message):
    from gradio_client.exceptions import AppError

    client = Client(app_url, verbose=False)
    with pytest.raises(AppError) as info:
        client.predict(request_, api_name="/start_job")
    assert message in str(info.value)
    assert client.predict(api_name="/list_jobs") == []
    with pytest.raises(AppError, match="no job with id 99"):
        client.predict(99, api_name="/job_status")


def test_hosted_mode_hides_server_paths_and_local_inputs(home, tmp_path):
    proc, url = start_app({"TLAB_HOSTED": "1", "TLAB_AUTH": "demo:secret"}, tmp_path)
    try:
        from gradio_client.exceptions import AppError

        with pytest.raises(Exception):
            Client(url, verbose=False)  # login required
        client = Client(url, auth=("demo", "secret"), verbose=False)
        with pytest.raises(AppError, match="local model folders are turned off"):
            client.predict({"plugin": SFT, "model": str(tmp_path)}, api_name="/start_job")
        with pytest.raises(AppError, match="local dataset paths are turned off"):
            client.predict({"plugin": SFT, "dataset": {"source": "file", "name": str(REPO / "samples" /
                                                       "sft_instructions.jsonl")}}, api_name="/start_job")
        job = client.predict({"plugin": SFT, "params": {"max_steps": 1000, "per_device_train_batch_size": 32,
                                                        "gradient_accumulation_steps": 16}},  # within hosted caps
                             api_name="/start_job")
        listed = client.predict(api_name="/list_jobs")
        assert "job_dir" not in listed[0] and str(home) not in str(listed)
        client.predict(job["job_id"], api_name="/stop_job")
        assert wait_state(client, job["job_id"], ("STOPPED",), timeout=60)["state"] == "STOPPED"
        with pytest.raises(AppError, match="deleting jobs is turned off on this server"):
            client.predict(job["job_id"], api_name="/delete_job")  # one visitor may not erase others' runs
    finally:
        proc.terminate()
        proc.wait(20)


def test_the_web_process_does_not_import_training_libraries(home):
    code = ("import sys; from tlab_gradio.ui import build_app; build_app(); "
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_guessing_the_password_is_throttled_on_the_real_server(home, tmp_path):
    """An attack: 50 wrong passwords in a burst, then the right one. Before the throttle all 50 were answered
    at once and the right password then worked; now the name is locked (the right password refused too) until
    TLAB_LOGIN_LOCK_SECONDS have passed, and other names stay usable."""
    import concurrent.futures
    import urllib.error
    import urllib.parse

    proc, url = start_app({"TLAB_AUTH": "demo:secret,other:pw2", "TLAB_LOGIN_LOCK_SECONDS": "4",
                           "TLAB_LOGIN_FAIL_DELAY_SECONDS": "0"}, tmp_path)

    def login(user, password):
        body = urllib.parse.urlencode({"username": user, "password": password}).encode()
        try:
            with urllib.request.urlopen(urllib.request.Request(url + "login", data=body), timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: login("demo", f"guess{i}"), range(50)))
        assert set(answers) == {400}
        assert login("demo", "secret") == 400  # locked: the right password is refused too
        assert login("other", "pw2") == 200  # another user is not locked out by the attack on demo
        time.sleep(4.5)
        assert login("demo", "secret") == 200
    finally:
        proc.terminate()
        proc.wait(20)
