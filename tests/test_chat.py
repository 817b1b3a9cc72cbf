"""Chat (issue 20, item 1): the real app's /chat streams an answer token by token from a worker process (the web
process never loads torch); a job trained to always answer the same fixed string answers it where its base model
does not (greedy); the worker exits after the quiet period and gives its GPU back to the job queue; the Chat tab
sends one prompt side by side and both chatbots answer.

One real job for the module (`accelerate launch` of the SFT trainer on the embedded tiny model, CPU, full
fine-tune, 30 steps at a high learning rate on 12 conversations whose answer is always FIXED), and one app."""
import json
import time
from pathlib import Path

import pytest
from gradio_client import Client

from test_app import start_app

SFT = "llama_sft_multi_gpu"
FIXED = "OTTER 42"
QUESTIONS = ["hi", "what is 2+2?", "tell me a joke", "name a color", "who are you?", "say something", "hello there",
             "how are you", "what day is it", "write a poem", "help", "ok"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tlab_gradio.service import Service

    root = tmp_path_factory.mktemp("chat")
    data = root / "fixed.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": FIXED}]}) + "\n"
                            for q in QUESTIONS))
    with pytest.MonkeyPatch.context() as mp:
        home = root / "ws"
        (root / "hf").mkdir()
        for key, value in {"TLAB_HOME": str(home), "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1",
                           "HF_DATASETS_OFFLINE": "1", "TLAB_STOP_GRACE": "5"}.items():
            mp.setenv(key, value)
        mp.delenv("TLAB_HOSTED", raising=False)
        svc = Service(home)
        job = svc.start_job({"plugin": SFT, "name": "fixed answer", "dataset": str(data), "params": {
            "device": "cpu", "use_lora": False, "assistant_only_loss": True, "learning_rate": 0.02, "max_steps": 30,
            "per_device_train_batch_size": 4, "max_length": 64, "gradient_checkpointing": "off",
            "save_steps": 15, "logging_steps": 5}}, "session:alice")
        done = svc.jobs.wait(job["id"], 420)
        assert done.state == "COMPLETE", "\n".join(svc.job_log(job["id"], 60))
        yield {"svc": svc, "home": home, "job": job["id"], "root": root, "mp": mp}
        svc.chats.close()
        svc.jobs.close()


@pytest.fixture(scope="module")
def app(trained):
    proc, url = start_app({"TLAB_HOME": str(trained["home"])}, trained["root"])
    yield proc, url
    proc.terminate()
    proc.wait(20)


def answer(client, request) -> list[dict]:
    """Every partial output of /chat for `request`; an error raises AppError."""
    job = client.submit(request, api_name="/chat")
    outs = list(job)
    job.result()  # raises the endpoint's error
    return outs


def test_the_api_streams_the_embedded_models_answer_token_by_token(app):
    proc, url = app
    client = Client(url, verbose=False)
    outs = answer(client, {"prompt": "Say something", "max_new_tokens": 24, "temperature": 0})
    texts = [o["text"] for o in outs]
    final = outs[-1]
    assert final["done"] and final["tokens"] == 24 and final["model"] == "the embedded model"
    assert final["device"] == "cpu" and final["first_token_s"] > 0
    streamed = [t for o, t in zip(outs, texts) if not o["done"] and not o.get("loading")]
    assert len(streamed) >= 5, outs  # partial answers, each longer than the last, the last one the whole answer
    assert all(a != b and b.startswith(a) for a, b in zip(streamed, streamed[1:]))
    assert final["text"] == streamed[-1]
    # the web process loaded no torch: the model is in the worker
    maps = Path(f"/proc/{proc.pid}/maps").read_text()
    assert "libtorch" not in maps and "torch/lib" not in maps


def test_a_job_trained_to_a_fixed_answer_answers_it_and_its_base_does_not(app, trained):
    client = Client(app[1], verbose=False)
    greedy = {"prompt": "What is the capital of France?", "max_new_tokens": 16, "temperature": 0}
    tuned = answer(client, {**greedy, "job_id": trained["job"]})[-1]
    base = answer(client, {**greedy, "job_id": trained["job"], "base": True})[-1]
    checkpoint = answer(client, {**greedy, "job_id": trained["job"], "checkpoint": "checkpoint-15"})[-1]
    assert tuned["model"] == f"job {trained['job']} 'fixed answer' (final)"
    assert base["model"] == f"job {trained['job']}'s base model (tlab-tiny-llama)"
    assert "OTTER" in tuned["text"] and tuned["text"] != base["text"] and "OTTER" not in base["text"], (tuned, base)
    assert checkpoint["done"] and checkpoint["text"] != tuned["text"]  # halfway there: another model
    again = answer(client, {**greedy, "job_id": trained["job"]})[-1]
    assert again["text"] == tuned["text"]  # greedy: the same answer every time

    from gradio_client.exceptions import AppError

    for request, message in [({**greedy, "job_id": 999}, "no job with id 999"),
                             ({**greedy, "job_id": trained["job"], "checkpoint": "checkpoint-7"},
                              "has no checkpoint 'checkpoint-7'; it has: final, checkpoint-15, checkpoint-30"),
                             ({"prompt": "x", "temperature": 3}, "`temperature` must be a number from 0 to 2"),
                             ({"messages": [{"role": "assistant", "content": "x"}]}, "must end with the user's turn"),
                             ({"prompt": "x", "model": "/no/such/model"}, "model path '/no/such/model' does not exist")]:
        with pytest.raises(AppError, match=message.replace("(", r"\(").replace(")", r"\)")):
            answer(client, request)


def test_the_worker_unloads_after_the_quiet_period_and_gives_its_gpu_back(trained, monkeypatch):
    """In this process: the worker exits by itself after TLAB_CHAT_IDLE_SECONDS; on a GPU machine (faked: the
    scheduler's side is what is checked) its GPU is held for it in the job queue while it lives, and freed after."""
    from tlab_gradio import chat, gpus
    from tlab_gradio.service import RequestError

    svc = trained["svc"]
    monkeypatch.setenv("TLAB_CHAT_IDLE_SECONDS", "2")
    held = []
    monkeypatch.setattr(chat.gpus, "list_gpus", lambda refresh=False: [
        gpus.GPU(0, "0", "fake", 80000, 100, 0, 30, (9, 0)), gpus.GPU(1, "1", "fake", 80000, 50000, 0, 30, (9, 0))])
    svc.jobs._held.clear()
    claim = svc.jobs.claim_gpu
    monkeypatch.setattr(svc.jobs, "claim_gpu", lambda holder, ids: held.append((holder, ids)) or claim(holder, ids))
    outs = list(svc.chat({"prompt": "hi", "max_new_tokens": 4, "temperature": 0, "device": "cpu"}))
    assert outs[-1]["done"]
    (worker,) = svc.chat_status()
    assert worker["device"] == "cpu" and worker["gpu"] is None and worker["unloads_in_s"] <= 2
    assert [(w["device"], w["models"]) for w in svc.machine_usage()["chat"]] == [("cpu", ["the embedded model"])]
    deadline = time.monotonic() + 30
    while svc.chat_status() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert svc.chat_status() == []
    assert not held  # a CPU chat holds no GPU
    # the GPU side, without CUDA: the worker would take the GPU with the most free memory that no job uses
    assert svc.chats._claim_gpu() == "0" and svc.jobs.gpu_users() == {"0": ["chat:cuda"]}
    assert svc.jobs.claim_gpu("other", ["0"]) is None
    svc.jobs.release_gpus("chat:cuda")
    assert svc.jobs.gpu_users() == {}
    # every GPU taken (here by another holder; a job's GPUs count the same, see the next test): chat says so at once
    assert svc.jobs.claim_gpu("other", ["0"]) == "0" and svc.jobs.claim_gpu("other", ["1"]) == "1"
    with pytest.raises(RequestError, match=r"no GPU is free for chat: .*\(GPU 0: other; GPU 1: other\)\. Chat on "
                                           r"the cpu"):
        svc.chat({"prompt": "hi", "device": "cuda"})
    svc.jobs.release_gpus("other")


def test_a_queued_job_waits_for_the_chats_gpu(home, monkeypatch):
    """The scheduler counts the chat worker's GPU as taken: a job on it waits QUEUED, saying why, until the worker
    is gone."""
    import sys

    import standins
    from tlab_gradio import jobs as jobs_mod
    from tlab_gradio.service import Service
    from test_scheduler import config

    monkeypatch.setattr(jobs_mod.launcher, "write_launch_files", lambda job_dir, launch: [
        sys.executable, "-c", "import time; time.sleep(30)", str(job_dir)])
    svc = Service(home)
    mgr = svc.jobs
    try:
        assert mgr.claim_gpu("chat:cuda", ["1", "0"]) == "1"
        waits = mgr.create(config("on the chat's GPU", ["1"]))
        runs = mgr.create(config("on another GPU", ["0"]))
        assert (mgr.get(waits.id).state, mgr.get(runs.id).state) == ("QUEUED", "RUNNING")
        assert svc.job_status(waits.id)["reason"].startswith("waiting for GPU 1, held by the Chat tab's model")
        assert svc.job_row(runs.id)["reason"] is None
        assert mgr.claim_gpu("chat:cuda", ["0", "1"]) is None  # every GPU used or waited for
        users = mgr.gpu_users()
        assert users == {"0": [f"job {runs.id} (RUNNING)"], "1": [f"job {waits.id} (QUEUED)", "chat:cuda"]}
        mgr.release_gpus("chat:cuda")
        assert mgr.wait(waits.id, 10, until=lambda j: j.state == "RUNNING").state == "RUNNING"
        for job in (waits, runs):
            mgr.stop(job.id, grace=0.5)
            mgr.wait(job.id, 10)
    finally:
        for job in mgr.list():
            for proc in standins.left_of(job.job_dir):
                proc.kill()
        mgr.close()


def test_hosted_chat_is_the_visitors_jobs_and_hub_models_only(trained, monkeypatch):
    from tlab_gradio.service import RequestError

    svc = trained["svc"]
    monkeypatch.setenv("TLAB_HOSTED", "1")
    for request, owner, message in [
            ({"prompt": "x", "job_id": trained["job"]}, "session:bob", f"no job with id {trained['job']}"),
            ({"prompt": "x", "model": str(trained["home"])}, "session:alice", "local model folders are turned off"),
            ({"prompt": "x", "max_new_tokens": 2048}, "session:alice", "(this server caps it: hosted mode)"),
            ({"prompt": "x"}, None, "no visitor session")]:
        with pytest.raises(RequestError) as info:
            svc.chat(request, owner)
        assert message in str(info.value) and str(trained["home"]) not in str(info.value)
    assert [s["job_id"] for s in svc.chat_sources("session:alice")] == [trained["job"]]
    assert svc.chat_sources("session:bob") == []
    with pytest.raises(RequestError, match="unloading the chat model is turned off"):
        svc.chat_unload()


def test_the_chat_tab_answers_one_prompt_side_by_side(app, trained, chromium, tmp_path):
    from test_browser import FLAGS, playwright

    expect = playwright.expect
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        expect.set_options(timeout=30_000)
        page.goto(app[1])
        page.get_by_role("tab", name="Chat").click()
        # the finished job is picked, with its final model, side by side with its base
        expect(page.locator("#chat-job input")).to_have_value(f"#{trained['job']} fixed answer (complete)")
        expect(page.locator("#chat-checkpoint input")).to_have_value("final model")
        expect(page.locator("#chat-base")).to_be_visible()
        page.locator("#chat-settings").get_by_text("Generation settings").click()
        temperature = page.locator("#chat-temperature input[type=number]")
        temperature.fill("0")
        temperature.press("Enter")
        max_new = page.locator("#chat-max-new input[type=number]")
        max_new.fill("24")
        max_new.press("Enter")
        # the sliders hold the typed values before Send reads them (once, sent at once, an answer was sampled at
        # the default temperature: "OTER 42")
        expect(page.locator("#chat-temperature input[type=range]")).to_have_value("0")
        expect(page.locator("#chat-max-new input[type=range]")).to_have_value("24")
        page.locator("#chat-prompt textarea").fill("What is the capital of France?")
        page.locator("#chat-send").click()
        base, tuned = page.locator("#chat-base"), page.locator("#chat-tuned")
        expect(tuned.locator(".message.bot")).to_contain_text("OTTER")
        expect(base.locator(".message.bot")).to_have_count(1)
        status = page.locator("#chat-status")
        expect(status).to_contain_text(f"Tuned (job {trained['job']} 'fixed answer' (final), cpu):")
        expect(status).to_contain_text(f"Base (job {trained['job']}'s base model (tlab-tiny-llama), cpu): 24 tokens")
        for bot in (base, tuned):
            expect(bot.locator(".message.user")).to_contain_text("What is the capital of France?")
        assert "OTTER" not in base.locator(".message.bot").inner_text()
        # a second turn: each side carries its own conversation
        page.locator("#chat-prompt textarea").fill("hi")
        page.locator("#chat-prompt textarea").press("Enter")
        expect(tuned.locator(".message.bot")).to_have_count(2)
        expect(base.locator(".message.bot")).to_have_count(2)
        expect(tuned.locator(".message.bot").nth(1)).to_contain_text("OTTER")
        expect(status).to_contain_text("24 tokens")
        page.screenshot(path=str(Path(__file__).parent / "artifacts" / "chat-side-by-side.png"), full_page=True)
        # a refused message is said under the chats and stays there, the typed message kept in its box
        page.locator("#chat-kind").get_by_text("A model").click()
        page.locator("#chat-model textarea, #chat-model input").first.fill(str(tmp_path / "no-such-model"))
        page.locator("#chat-prompt textarea").fill("still here?")
        page.locator("#chat-send").click()
        expect(status).to_contain_text("Not sent")
        expect(status).to_contain_text("no-such-model")
        expect(page.locator("#chat-prompt textarea")).to_have_value("still here?")
        browser.close()
