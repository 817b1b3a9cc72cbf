"""Attacks on a real app started with TLAB_HOSTED=1 (the public demo), as a hostile visitor would make them:
through gradio_client and raw HTTP, each aimed at a promise of issue 17 ("must be true" item 1)."""
import json
import os
import re
import time
import urllib.request

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from conftest import REPO
from test_app import SFT, start_app

ROW = {"instruction": "secret", "input": "", "output": "secret"}
LONG = {"max_steps": 1000, "per_device_train_batch_size": 32, "gradient_accumulation_steps": 16}  # within the caps
TEMPLATES = {"template": "{{instruction}}", "completion_template": "{{output}}"}  # so the old code accepted it


@pytest.fixture
def hosted(home, tmp_path):
    proc, url = start_app({"TLAB_HOSTED": "1"}, tmp_path)
    yield url
    proc.terminate()
    proc.wait(20)


def page_call(url, elem_id, data, session="attacker", event="click"):
    """Call a page handler over raw HTTP, as a browser does (queue/join, then its event stream), by the
    component that triggers it: hidden from the API list, but reachable."""
    config = json.load(urllib.request.urlopen(url + "config"))
    target = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)
    dep = next(d for d in config["dependencies"] if [target, event] in [list(t) for t in d["targets"]]
               and d.get("backend_fn", True))  # not a listener that runs in the browser only
    body = json.dumps({"data": data, "fn_index": dep["id"], "session_hash": session, "event_data": None,
                       "trigger_id": target}).encode()
    urllib.request.urlopen(urllib.request.Request(url + "gradio_api/queue/join", body,
                                                  {"Content-Type": "application/json"}), timeout=30).read()
    with urllib.request.urlopen(url + f"gradio_api/queue/data?session_hash={session}", timeout=120) as stream:
        for line in stream:
            if line.startswith(b"data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return msg["output"]
    raise AssertionError("no answer")


def _data_folder(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("\n".join(json.dumps(ROW) for _ in range(8)) + "\n")
    return folder


def test_no_dataset_or_model_name_reaches_the_servers_files(hosted, home, tmp_path):
    """Before: a "hub" name that is a local folder went to datasets.load_dataset, which read it (the job was
    created, trained on the server's files); a "file" naming the uploads folder read every visitor's uploads."""
    client = Client(hosted, verbose=False)
    server_folder = _data_folder(tmp_path / "server-data")
    others_upload = _data_folder(home / "uploads" / "0123456789ab")
    names = [str(server_folder),  # absolute
             os.path.relpath(server_folder, REPO),  # relative to the app's folder, through ..
             "~/" + os.path.relpath(server_folder, os.path.expanduser("~")),
             "tests/data/tlab_manifests"]  # a folder under the app's working folder
    for name in names:
        with pytest.raises(AppError, match="local dataset paths are turned off"):
            client.predict({"plugin": SFT, "dataset": {"source": "hub", "name": name}, **TEMPLATES},
                           api_name="/start_job")
    for name in (str(home / "uploads"), str(others_upload)):  # the uploads folder itself: everyone's files
        with pytest.raises(AppError, match="local dataset paths are turned off"):
            client.predict({"plugin": SFT, "dataset": {"source": "file", "name": name}, **TEMPLATES},
                           api_name="/start_job")
    for name in (str(server_folder), "tests", "~", "../x1/home/uploads"):
        with pytest.raises(AppError, match="local model folders are turned off|neither a local folder"):
            client.predict({"plugin": SFT, "model": name}, api_name="/start_job")
    assert client.predict(api_name="/list_jobs") == []


def test_the_page_preview_reads_no_server_folder(hosted, tmp_path):
    """Before: the preview handler, called over raw HTTP, showed the rows of any folder given as a Hub id."""
    folder = _data_folder(tmp_path / "server-data")
    for name in (str(folder), os.path.relpath(folder, REPO)):
        out = page_call(hosted, "preview-data", [SFT, "auto", "Hugging Face Hub", None, None, "", name, "", "",
                                                 "{{instruction}}", "{{output}}", "1"])
        assert "secret" not in json.dumps(out), out
        assert "local dataset paths are turned off" in json.dumps(out)


def _server_paths(home):
    import sys
    import tempfile
    return [str(home), str(REPO), sys.prefix, tempfile.gettempdir()]


def test_no_server_path_in_a_jobs_log_or_error(home, tmp_path):
    """Before: /job_log's first line (the launch argv) and /job_status's `error` (the log's tail) named the
    workspace, the app's folder and Python's."""
    from test_app import wait_state

    proc, url = start_app({"TLAB_HOSTED": "1", "TLAB_STALL_SECONDS": "2"}, tmp_path)  # the watchdog fails it
    try:
        client = Client(url, verbose=False)
        job = client.predict({"plugin": SFT, "params": LONG}, api_name="/start_job")
        status = wait_state(client, job["job_id"], ("FAILED", "COMPLETE", "STOPPED"), timeout=120)
        assert status["state"] == "FAILED" and status["error"]
        log = client.predict(job["job_id"], 400, api_name="/job_log")
        assert "accelerate" in log.splitlines()[0]  # the argv is there, its folders named
        shown = json.dumps([status, log, client.predict(api_name="/list_jobs")])
        leaked = [p for p in _server_paths(home) if p in shown]
        assert not leaked, (leaked, shown[:3000])
    finally:
        proc.terminate()
        proc.wait(20)


def test_a_visitor_cannot_see_or_touch_anothers_job_or_its_files(hosted, home):
    """Before: any visitor listed every job, read its status and log, stopped or resumed it, and
    GET /gradio_api/file=<home>/jobs/<id>/config.json served its files to anyone."""
    import urllib.error

    from test_app import wait_state

    owner, other = Client(hosted, verbose=False), Client(hosted, verbose=False)  # two browser sessions
    job = owner.predict({"plugin": SFT, "params": LONG}, api_name="/start_job")
    job_id = job["job_id"]
    assert other.predict(api_name="/list_jobs") == []
    for api_name, args in (("/job_status", (job_id,)), ("/job_log", (job_id, 10)), ("/stop_job", (job_id,)),
                           ("/resume_job", (job_id,)), ("/delete_job", (job_id,)), ("/export_job", (job_id,)),
                           ("/evaluate_job", (job_id,)), ("/job_evaluations", (job_id,))):
        with pytest.raises(AppError, match=f"no job with id {job_id}"):
            other.predict(*args, api_name=api_name)
    assert [j["job_id"] for j in owner.predict(api_name="/list_jobs")] == [job_id]
    assert owner.predict(job_id, api_name="/job_status")["state"] in ("QUEUED", "RUNNING")
    from tlab_gradio.jobs import LOG

    for name in ("config.json", LOG):
        path = home.resolve() / "jobs" / str(job_id) / name
        assert path.is_file()
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{hosted}gradio_api/file={path}", timeout=10)
        assert info.value.code == 403
    owner.predict(job_id, api_name="/stop_job")
    assert wait_state(owner, job_id, ("STOPPED",), timeout=60)["state"] == "STOPPED"


def test_a_store_made_before_owners_gets_the_column_and_its_jobs_are_nobodys(home, monkeypatch):
    """Before: there was no owner column to add. A job stored before is shown to no visitor in hosted mode."""
    import sqlite3

    from tlab_gradio import jobs
    from tlab_gradio.service import Service

    home.mkdir(parents=True)
    db = sqlite3.connect(home / "jobs.sqlite")
    db.execute(jobs.SCHEMA.replace(",\n    owner TEXT", ""))
    db.execute("INSERT INTO jobs (name, plugin, state, config, created) VALUES ('old', 'x', 'COMPLETE', '{}', 1)")
    db.commit()
    db.close()
    monkeypatch.setenv("TLAB_HOSTED", "1")
    svc = Service(home)
    assert svc.jobs.get(1).owner is None
    assert svc.list_jobs(owner="session:a") == []
    with pytest.raises(ValueError, match="no job with id 1"):
        svc.job_log(1, 10, owner="session:a")
    svc.jobs.close()


def test_a_visitor_cannot_flood_the_queue_or_ask_for_a_huge_run(home, tmp_path):
    """Before: one visitor queued 90 jobs; cpu_processes 64, max_steps 100000, max_length 262144 with batch 1024,
    1000 epochs and another machine's address were all accepted; a 100 MiB anonymous upload was stored."""
    import urllib.error
    import uuid

    from test_app import wait_state

    proc, url = start_app({"TLAB_HOSTED": "1", "TLAB_HOSTED_MAX_JOBS_PER_VISITOR": "2",
                           "TLAB_MAX_CONCURRENT_JOBS": "1", "TLAB_HOSTED_MAX_UPLOAD_MB": "1"}, tmp_path)
    try:
        visitor, other = Client(url, verbose=False), Client(url, verbose=False)
        for params, message in (({"cpu_processes": 64}, "`cpu_processes` 64 is over this server's cap"),
                                ({"max_steps": 100000}, "`max_steps` 100000 is over this server's cap of 1000"),
                                ({"max_length": 262144, "per_device_train_batch_size": 1024},
                                 "`max_length` 262144 is over this server's cap of 2048"),
                                ({"num_train_epochs": 1000}, "`num_train_epochs` 1000 is over this server's cap"),
                                ({"num_machines": 2, "machine_rank": 0, "main_process_ip": "10.0.0.9",
                                  "main_process_port": 29500}, "`num_machines` 2 is over this server's cap of 1"),
                                ({"main_process_ip": "10.0.0.9"}, "training across machines is turned off")):
            with pytest.raises(AppError, match=message):
                visitor.predict({"plugin": SFT, "device": "cpu", "params": params}, api_name="/start_job")
        jobs = [visitor.predict({"plugin": SFT, "params": LONG}, api_name="/start_job")["job_id"]
                for _ in range(2)]
        with pytest.raises(AppError, match="2 unfinished jobs, this server's cap per visitor"):
            visitor.predict({"plugin": SFT, "params": LONG}, api_name="/start_job")
        theirs = other.predict({"plugin": SFT, "params": LONG}, api_name="/start_job")["job_id"]
        with pytest.raises(AppError, match="installing packages is turned off"):
            visitor.predict("unsloth_grpo", api_name="/install_plugin")

        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.jsonl\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + b"x" * (2 * 2**20) + \
            f"\r\n--{boundary}--\r\n".encode()
        upload = urllib.request.Request(url + "gradio_api/upload", body,
                                        {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(upload, timeout=30)
        assert info.value.code in (400, 413)
        for client, job_id in ((visitor, jobs[0]), (visitor, jobs[1]), (other, theirs)):
            client.predict(job_id, api_name="/stop_job")
        for client, job_id in ((visitor, jobs[0]), (visitor, jobs[1]), (other, theirs)):
            assert wait_state(client, job_id, ("STOPPED",), timeout=60)["state"] == "STOPPED"
    finally:
        proc.terminate()
        proc.wait(20)


def test_a_visitor_cannot_use_anothers_upload(hosted, home, tmp_path):
    """Before: every upload was kept in one folder, and any stored upload was a dataset any visitor could name
    (a visitor read another's rows through /start_job or the preview)."""
    import uuid

    rows = _data_folder(tmp_path / "mine") / "train.jsonl"
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"rows.jsonl\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + rows.read_bytes() + \
        f"\r\n--{boundary}--\r\n".encode()
    upload = urllib.request.Request(hosted + "gradio_api/upload", body,
                                    {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    uploaded = json.load(urllib.request.urlopen(upload, timeout=30))[0]
    file_data = {"path": uploaded, "orig_name": "rows.jsonl", "meta": {"_type": "gradio.FileData"}}
    mine = page_call(hosted, "preview-data", [SFT, "auto", "Upload", None, file_data, "", "", "", "", "{{instruction}}",
                                              "{{output}}", "1"], session="owner1")
    assert "secret" in json.dumps(mine)  # the uploader sees their rows
    stored = [p for p in (home / "uploads").rglob("rows.jsonl")]
    assert len(stored) == 1
    other = Client(hosted, verbose=False)
    with pytest.raises(AppError, match="local dataset paths are turned off"):
        other.predict({"plugin": SFT, "dataset": {"source": "file", "name": str(stored[0])}, **TEMPLATES},
                      api_name="/start_job")
    owner = Client(hosted, verbose=False)
    owner.session_hash = "owner1"  # the uploader's session, through the API
    job = owner.predict({"plugin": SFT, "dataset": {"source": "file", "name": str(stored[0])}, **TEMPLATES,
                         "params": {"max_steps": 1}}, api_name="/start_job")
    assert job["state"] in ("QUEUED", "RUNNING")


def _save_preset(url, preset, run_name, session):
    """Save preset as the page does it: the form is checked first (leaving the task name sends the form's fields,
    form_request.STATIC_FIELDS, the values JSON (null: the plugin's own) and the rewards state, and the change
    number), then Save names that checked request by its number."""
    seq = str(int(time.time() * 1000))
    page_call(url, "task-name", [SFT, run_name, "", "Bundled sample", "sft_instructions", None, "", "", "", "",
                                 "auto", "{{instruction}}", "{{output}}", None, None, seq], session=session,
              event="blur")
    return page_call(url, "save-preset", [preset, seq], session=session)


def _answer(out):
    return json.dumps(out)


def test_a_visitor_cannot_list_load_or_overwrite_anothers_preset_through_the_page(hosted):
    """Before: presets were one folder for everyone: the Presets list showed every visitor's, Load preset loaded
    any by name (its dataset, templates and settings), and a Save under the same name overwrote the owner's."""
    saved = _save_preset(hosted, "mine", "owner-secret-run", "owner-a")
    assert "mine" in _answer(saved) and "error" not in _answer(saved).lower(), saved
    assert "owner-secret-run" in _answer(page_call(hosted, "load-preset", ["mine", None], session="owner-a"))

    # gradio checks a choice against the list this session was shown (its own presets), the service the name
    refused = page_call(hosted, "load-preset", ["mine", None], session="visitor-b")
    assert re.search(r"no preset named 'mine'|mine is not in the list of choices: \[\]", _answer(refused)), refused
    assert "owner-secret-run" not in _answer(refused)
    theirs = _save_preset(hosted, "theirs", "b-run", "visitor-b")
    assert "theirs" in _answer(theirs) and "mine" not in _answer(theirs), theirs  # B's list: B's presets only
    _save_preset(hosted, "mine", "b-run", "visitor-b")  # the same name: B's own
    assert "b-run" in _answer(page_call(hosted, "load-preset", ["mine", None], session="visitor-b"))
    kept = _answer(page_call(hosted, "load-preset", ["mine", None], session="owner-a"))
    assert "owner-secret-run" in kept and "b-run" not in kept  # A's preset is as A saved it


def test_a_visitor_cannot_list_load_overwrite_or_delete_anothers_preset(home, monkeypatch):
    """The service with two visits: each verb on another visitor's preset name acts on the caller's own presets
    only (delete, which the page does not offer, included); no visitor, no presets."""
    from tlab_gradio.service import RequestError, Service

    monkeypatch.setenv("TLAB_HOSTED", "1")
    svc = Service(home)
    a, b = "session:a", "session:b"
    mine = {"plugin": SFT, "name": "a-secret", "params": {"max_steps": 7}}
    assert svc.save_preset("mine", mine, owner=a) == ["mine"]
    assert svc.list_presets(owner=b) == [] and svc.list_presets() == []
    for call in (lambda: svc.load_preset("mine", owner=b), lambda: svc.load_preset("mine")):
        with pytest.raises(RequestError, match="no preset named 'mine'|no visitor session"):
            call()
    assert svc.delete_preset("mine", owner=b) == []
    with pytest.raises(RequestError, match="no visitor session"):
        svc.delete_preset("mine")
    with pytest.raises(RequestError, match="no visitor session"):
        svc.save_preset("mine", {"plugin": SFT, "name": "nobody"})
    assert svc.save_preset("mine", {"plugin": SFT, "name": "b-run"}, owner=b) == ["mine"]
    assert svc.load_preset("mine", owner=a) == mine and svc.list_presets(owner=a) == ["mine"]
    assert svc.delete_preset("mine", owner=b) == []
    assert svc.load_preset("mine", owner=a) == mine  # still there
    assert not list((home / "presets").glob("*.json"))  # nothing in the shared folder
    assert svc.delete_preset("mine", owner=a) == []
    svc.jobs.close()


def test_a_visitor_cannot_hold_more_running_jobs_than_the_cap(home, monkeypatch):
    """Before: only unfinished jobs were capped per visitor, so with no TLAB_MAX_CONCURRENT_JOBS a visitor's jobs
    all ran at once, and under a global cap one visitor's queue took every slot. Now a visitor's jobs past
    TLAB_HOSTED_MAX_RUNNING_PER_VISITOR (default 1) wait QUEUED, reserving nothing, and another visitor's start."""
    import sys

    from tlab_gradio import jobs as jobs_mod
    from tlab_gradio.service import Service

    monkeypatch.setattr(jobs_mod.launcher, "write_launch_files",  # a stand-in process: this is about scheduling
                        lambda job_dir, *a, **k: [sys.executable, "-c", "import time; time.sleep(120)", str(job_dir)])
    monkeypatch.setenv("TLAB_HOSTED", "1")
    monkeypatch.setenv("TLAB_HOSTED_MAX_JOBS_PER_VISITOR", "3")
    svc = Service(home)
    try:
        a, b = "session:a", "session:b"
        request = {"plugin": SFT, "device": "cpu", "params": {"max_steps": 5}}
        mine = [svc.start_job(request, owner=a)["id"] for _ in range(3)]
        theirs = svc.start_job(request, owner=b)["id"]
        state = lambda job_id: svc.jobs.get(job_id).state  # noqa: E731
        assert [state(j) for j in mine] == ["RUNNING", "QUEUED", "QUEUED"]
        assert state(theirs) == "RUNNING"  # another visitor's job starts past A's waiting ones
        svc.stop_job(mine[0], owner=a)
        svc.jobs.wait(mine[1], 20, until=lambda j: j.state == "RUNNING")
        assert [state(j) for j in mine] == ["STOPPED", "RUNNING", "QUEUED"]
        monkeypatch.setenv("TLAB_HOSTED_MAX_RUNNING_PER_VISITOR", "2")  # the setting, read at each scheduling
        svc.stop_job(theirs, owner=b)
        svc.jobs.wait(mine[2], 20, until=lambda j: j.state == "RUNNING")
        assert [state(j) for j in mine] == ["STOPPED", "RUNNING", "RUNNING"]
    finally:
        for job in svc.jobs.list():
            if job.state in jobs_mod.ACTIVE or job.state == "QUEUED":
                svc.jobs.stop(job.id, grace=0.5)
                svc.jobs.wait(job.id, 10)
        svc.jobs.close()


@pytest.fixture
def two_visits(home, monkeypatch):
    """A hosted service whose jobs are stand-in processes (this is about who may do what, not training)."""
    import sys

    from tlab_gradio import jobs as jobs_mod
    from tlab_gradio.service import Service

    monkeypatch.setattr(jobs_mod.launcher, "write_launch_files",
                        lambda job_dir, *a, **k: [sys.executable, "-c", "import time; time.sleep(120)", str(job_dir)])
    monkeypatch.setenv("TLAB_HOSTED", "1")
    svc = Service(home)
    yield svc
    for job in svc.jobs.list():
        if job.state in jobs_mod.ACTIVE or job.state == "QUEUED":
            svc.jobs.stop(job.id, grace=0.5)
            svc.jobs.wait(job.id, 10)
    svc.jobs.close()


def test_every_job_verb_answers_its_owner_only(two_visits):
    """Each of the service's job verbs, called by another visitor or with no visitor at all (a page handler
    that lost its session), answers as if the job did not exist; the owner gets the job. Before, only the API's
    verbs were tried: the job page's own (view, details and files, metrics of a compared job, clone) were not."""
    from tlab_gradio.service import JobError

    svc = two_visits
    job_id = svc.start_job({"plugin": SFT, "device": "cpu", "params": {"max_steps": 5}}, owner="session:a")["id"]
    verbs = {"job": (), "job_status": (), "job_view": (), "job_details": (), "job_metrics": (), "clone_request": (),
             "job_log": (10,), "job_row": (), "stop_job": (), "resume_job": (), "delete_job": ()}
    for owner in ("session:b", None):
        for verb, args in verbs.items():
            with pytest.raises(JobError, match=f"no job with id {job_id}"):
                getattr(svc, verb)(job_id, *args, owner=owner)
        assert svc.list_jobs(owner=owner) == [] and svc.job_rows(owner=owner) == []
    mine = {"owner": "session:a"}
    assert svc.job_view(job_id, **mine)["job"]["id"] == job_id and svc.job_details(job_id, **mine)["files"] == []
    assert svc.job_metrics(job_id, **mine) == ([], 0) and svc.clone_request(job_id, **mine)["plugin"] == SFT
    assert [j["id"] for j in svc.job_rows(**mine)] == [job_id]
    assert svc.stop_job(job_id, **mine)["state"] in ("STOPPING", "STOPPED")


def test_a_resumed_job_counts_toward_the_visitors_cap(two_visits, monkeypatch):
    """Resume queues a finished job again: past the cap of unfinished jobs it is refused, before anything else
    is looked at (else stopping and resuming would get round the cap)."""
    monkeypatch.setenv("TLAB_HOSTED_MAX_JOBS_PER_VISITOR", "1")
    svc, a = two_visits, "session:a"
    request = {"plugin": SFT, "device": "cpu", "params": {"max_steps": 5}}
    first = svc.start_job(request, owner=a)["id"]
    svc.stop_job(first, owner=a)
    assert svc.jobs.wait(first, 20).state == "STOPPED"
    svc.start_job(request, owner=a)
    with pytest.raises(Exception, match="you have 1 unfinished jobs, this server's cap per visitor"):
        svc.resume_job(first, owner=a)


def test_the_service_refuses_an_upload_over_the_cap_too(two_visits, monkeypatch, tmp_path):
    """gradio refuses a large upload at the door (max_file_size); the service checks again, for a file that
    reaches it another way (a page handler given a cached path)."""
    from tlab_gradio.service import RequestError

    monkeypatch.setenv("TLAB_HOSTED_MAX_UPLOAD_MB", "1")
    big = tmp_path / "big.jsonl"
    big.write_text((json.dumps(ROW) + "\n") * (2 * 2**20 // len(json.dumps(ROW))))
    with pytest.raises(RequestError, match="over this server's cap of 1 MB"):
        two_visits.save_upload(str(big), owner="session:a")
    assert not list((two_visits.home / "uploads").rglob("big.jsonl"))


def test_a_job_on_many_gpus_is_over_the_process_cap(two_visits, monkeypatch):
    """Hosted: at most job_request.HOSTED_MAX_PROCESSES processes in one job, GPUs included (cpu_processes has
    its own cap; on a big GPU machine `gpu_ids: auto` would take every GPU)."""
    from tlab_gradio import gpus
    from tlab_gradio import service as service_mod
    from tlab_gradio.job_request import HOSTED_MAX_PROCESSES
    from tlab_gradio.service import RequestError

    many = HOSTED_MAX_PROCESSES + 2
    fake = [gpus.GPU(i, str(i), "H100", 80000, 0, 0, 30, (9, 0)) for i in range(many)]
    monkeypatch.setattr(service_mod.gpus, "list_gpus", lambda refresh=False: fake)
    with pytest.raises(RequestError, match=f"{many} processes is over this server's cap of {HOSTED_MAX_PROCESSES}"):
        two_visits.prepare({"plugin": SFT, "device": "cuda", "gpu_ids": "auto"}, check_data=False, owner="session:a")


def test_the_loader_refuses_a_hub_name_that_is_a_local_folder(home, monkeypatch, tmp_path):
    """The trainer loads its dataset in another working folder than the app checked it in: the loader itself
    refuses, in hosted mode, a Hub name that is a path there."""
    from tlab_gradio import data

    folder = _data_folder(tmp_path / "server-data")
    monkeypatch.setenv("TLAB_HOSTED", "1")
    with pytest.raises(data.DataError, match="local paths are turned off on this server"):
        data.load(data.parse_spec({"source": "hub", "name": str(folder)}))


def test_an_error_about_a_visitors_own_upload_names_no_server_folder(hosted, home):
    """The API's error messages go through hide_paths too: a broken upload's error quotes its stored path, which
    would tell a visitor where the workspace is (and so every job's folder). Before the check was tried on
    logs and statuses only, so an unhidden message passed."""
    import uuid

    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"broken.jsonl\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + json.dumps(ROW).encode() + \
        b"\n{broken\n" + f"\r\n--{boundary}--\r\n".encode()
    upload = urllib.request.Request(hosted + "gradio_api/upload", body,
                                    {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    uploaded = json.load(urllib.request.urlopen(upload, timeout=30))[0]
    file_data = {"path": uploaded, "orig_name": "broken.jsonl", "meta": {"_type": "gradio.FileData"}}
    shown = page_call(hosted, "preview-data", [SFT, "auto", "Upload", None, file_data, "", "", "", "", "{{instruction}}",
                                               "{{output}}", "1"], session="owner1")
    stored = next((home / "uploads").rglob("broken.jsonl"))
    owner = Client(hosted, verbose=False)
    owner.session_hash = "owner1"
    with pytest.raises(AppError) as info:
        owner.predict({"plugin": SFT, "dataset": {"source": "file", "name": str(stored)}, **TEMPLATES},
                      api_name="/start_job")
    message = str(info.value)
    # The check names the bad line by the file's name alone (it used to quote datasets' error with the stored path)
    assert "line 2 of broken.jsonl is not valid JSON" in message, message
    leaked = [p for p in _server_paths(home) if p in message + json.dumps(shown)]
    assert not leaked, (leaked, message)


def test_every_message_to_a_visitor_goes_through_hide_paths(home, monkeypatch):
    """The page's and the API's error messages (user_error, problems_md) name no server folder, whatever the core
    put in them: the guard itself, since which refusal quotes a path changes as messages improve."""
    from tlab_gradio.service import JobError, RequestError
    from tlab_gradio.ui.common import problems_md, user_error

    monkeypatch.setenv("TLAB_HOSTED", "1")
    where = str(home / "uploads" / "visitor-0" / "rows.jsonl")
    for exc in (RequestError([f"could not load dataset {where}"]), JobError(f"no output in {where}")):
        shown = user_error(exc).message
        assert str(home) not in shown and "$TLAB_HOME/uploads/visitor-0/rows.jsonl" in shown, shown
        assert str(home) not in problems_md(exc)
