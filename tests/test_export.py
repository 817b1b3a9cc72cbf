"""Take the model away (issue 20, item 4): a finished job's model exported as a folder that transformers loads and
generates with (a LoRA adapter merged into its base, or the full fine-tune), with a model card written from the
job; offered as a zip through the API; pushed to the Hub with a token that is never written or shown back, up to
the network boundary (offline here: a clear error, no traceback); refused in hosted mode.

Real jobs (`accelerate launch` of the SFT trainer on the embedded tiny model, CPU), trained once for the module:
a LoRA job (with 8 held-out rows) and a full fine-tune, 2 steps each with a checkpoint at every step."""
import re
import time
import zipfile
from pathlib import Path

import pytest

from test_app import free_port, start_app

SFT = "llama_sft_multi_gpu"
OWNER = "session:alice"
TOKEN = "hf_tlabTestSecretToken0123456789"
BASE = {"device": "cpu", "logging_steps": 1, "per_device_train_batch_size": 4, "max_length": 128,
        "gradient_checkpointing": "off", "max_steps": 2, "save_steps": 1, "learning_rate": 0.01}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workspace with a finished LoRA job, a finished full fine-tune, and a job stopped before it started
    (no model: it waited QUEUED behind the other two, TLAB_MAX_CONCURRENT_JOBS=2)."""
    from tlab_gradio.service import RequestError, Service

    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        home = root / "ws"
        (root / "hf").mkdir()
        for key, value in {"TLAB_HOME": str(home), "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1",
                           "HF_DATASETS_OFFLINE": "1", "TLAB_STOP_GRACE": "5", "TLAB_MAX_CONCURRENT_JOBS": "2"}.items():
            mp.setenv(key, value)
        mp.delenv("TLAB_HOSTED", raising=False)
        svc = Service(home)
        bf16_base = root / "tiny-bf16"  # the embedded model stored in bfloat16: the full fine-tune's base
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tlab_gradio import tiny_model

        built = tiny_model.ensure(root / "tiny")
        AutoModelForCausalLM.from_pretrained(built, dtype="bfloat16").save_pretrained(bf16_base)
        AutoTokenizer.from_pretrained(built).save_pretrained(bf16_base)
        lora = svc.start_job({"plugin": SFT, "name": "lora run", "params": {**BASE, "use_lora": True, "val_size": 8}},
                             OWNER)  # 8 held-out rows: its card has eval metrics
        full = svc.start_job({"plugin": SFT, "name": "full run", "model": str(bf16_base),
                              "params": {**BASE, "use_lora": False}}, OWNER)
        waiting = svc.start_job({"plugin": SFT, "name": "waits", "params": BASE}, OWNER)
        assert svc.job(waiting["id"])["state"] == "QUEUED"
        try:
            svc.export_job(waiting["id"])
        except RequestError as exc:
            unfinished = str(exc)
        svc.stop_job(waiting["id"])
        for job in (lora, full):
            done = svc.jobs.wait(job["id"], 420)
            assert done.state == "COMPLETE", "\n".join(svc.job_log(job["id"], 60))
        yield {"svc": svc, "home": home, "bf16_base": bf16_base, "lora": lora["id"], "full": full["id"], "waiting": waiting["id"],
               "unfinished": unfinished, "mp": mp}
        svc.jobs.close()


def load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def generates(model, tokenizer) -> str:
    import torch

    torch.manual_seed(0)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Say hello"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    return tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])


def test_a_lora_job_exports_a_merged_model_that_loads_and_generates(trained):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    svc = trained["svc"]
    job = svc.job(trained["lora"])
    out = svc.export_job(trained["lora"])
    folder = Path(out["folder"])
    assert out["checkpoint"] == "final" and out["kind"] == "lora" and out["dtype"] == "float32"
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"} <= \
        set(out["files"])
    assert not (folder / "adapter_config.json").exists()  # merged: a plain model, no PEFT needed
    model, tokenizer = load(folder)
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert model.dtype == torch.float32  # the embedded base's dtype
    assert generates(model, tokenizer)
    # the merge is the adapter's model: the same logits as the base with the job's adapter on it
    base = AutoModelForCausalLM.from_pretrained(job["config"]["model"]["path"])
    adapted = PeftModel.from_pretrained(base, str(Path(job["output_dir"]) / "tlab-sft")).eval()
    ids = tokenizer("### Instruction:\nadd 2 and 3", return_tensors="pt")["input_ids"]
    untrained = AutoModelForCausalLM.from_pretrained(job["config"]["model"]["path"]).eval()
    with torch.no_grad():
        got = model.eval()(ids).logits
        assert torch.allclose(adapted(ids).logits, got, atol=1e-4)
        assert not torch.allclose(untrained(ids).logits, got, atol=1e-4)  # and the adapter did change it
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id,
                                                    tokenizer.convert_tokens_to_ids("<|im_end|>")]

    card = out["card"]
    assert card == (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    for text in ("tlab-tiny-llama", "LoRA adapter merged", "| lora_r | 16 |", "| learning_rate | 0.01 |",
                 "| max_steps | 2 |", "sft_instructions", "train_loss", "-m accelerate.commands.launch", "sft.py",
                 "## Evaluation metrics\n\n- eval_loss: ", "exported |"):
        assert text in card, text
    with zipfile.ZipFile(out["archive"]) as zf:
        names = set(zf.namelist())
    assert Path(out["archive"]).name == f"job-{trained['lora']}-lora-run-final.zip"
    assert f"job-{trained['lora']}-lora-run-final/model.safetensors" in names
    assert not any(".tlab_export" in n for n in names)

    started = time.monotonic()
    assert svc.export_job(trained["lora"])["archive"] == out["archive"]
    assert time.monotonic() - started < 1, "an unchanged job is not exported again"


def test_a_full_fine_tune_exports_its_weights_and_a_checkpoint_can_be_picked(trained):
    import torch
    from safetensors.torch import load_file

    svc = trained["svc"]
    job = svc.job(trained["full"])
    assert svc.export_choices(trained["full"]) == ["final", "checkpoint-1", "checkpoint-2"]
    out = svc.export_job(trained["full"])
    assert out["kind"] == "full" and "fully fine-tuned" in out["card"]
    assert "| use_lora | false |" in out["card"] and f"| base model | {trained['bf16_base'].name} (a local model folder) |" in out["card"]
    # trained with fp32 master weights, saved back in its base's dtype
    assert out["dtype"] == "bfloat16" and "saved in the base model's dtype (bfloat16)" in out["card"]
    assert "No held-out evaluation was logged." in out["card"]
    model, tokenizer = load(out["folder"])
    assert model.dtype == torch.bfloat16
    assert generates(model, tokenizer)
    trained_weights = load_file(Path(job["output_dir"]) / "tlab-sft" / "model.safetensors")
    exported = load_file(Path(out["folder"]) / "model.safetensors")
    assert trained_weights.keys() == exported.keys()
    assert {t.dtype for t in trained_weights.values()} == {torch.float32}
    assert all(torch.equal(trained_weights[k].to(torch.bfloat16), exported[k]) for k in exported)

    first = svc.export_job(trained["full"], "checkpoint-1")
    assert first["checkpoint"] == "checkpoint-1" and first["step"] == 1 and "checkpoint-1 (step 1)" in first["card"]
    early = load_file(Path(first["folder"]) / "model.safetensors")
    assert any(not torch.equal(early[k], exported[k]) for k in exported)  # one step less trained
    assert Path(first["archive"]).is_file() and Path(out["archive"]).is_file()  # both kept


def test_what_cannot_be_exported_is_refused_saying_why(trained):
    from tlab_gradio.service import RequestError

    svc = trained["svc"]
    assert trained["unfinished"] == f"job {trained['waiting']} is QUEUED: export it once it has finished"
    cases = [
        ((trained["waiting"],), f"job {trained['waiting']} has no model to export: it is STOPPED and saved no "
                                "checkpoint (nothing in its output/ or checkpoints/)"),
        ((trained["lora"], "checkpoint-9"), f"job {trained['lora']} has no checkpoint 'checkpoint-9'; it has: "
                                            "final, checkpoint-1, checkpoint-2"),
        ((trained["lora"], "../../etc"), "has no checkpoint '../../etc'"),
        ((9999,), "no job with id 9999"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError) as info:  # RequestError, or JobError for an unknown job
            svc.export_job(*args)
        assert message in str(info.value)
    with pytest.raises(RequestError, match="repo id 'not a repo' is not a valid Hub repo id"):
        svc.push_job(trained["lora"], "not a repo", TOKEN)
    with pytest.raises(RequestError, match="a Hugging Face token is needed to push"):
        svc.push_job(trained["lora"], "me/model", "  ")
    with pytest.raises(RequestError, match="the Hugging Face token is too short to be one"):
        svc.push_job(trained["lora"], "me/model", "hf_x")


def no_token_in(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_push_offline_says_the_hub_cannot_be_reached_without_the_token(trained):
    from tlab_gradio.service import RequestError

    svc = trained["svc"]
    with pytest.raises(RequestError) as info:  # HF_HUB_OFFLINE=1 (the module's setting)
        svc.push_job(trained["lora"], "me/model", TOKEN)
    assert str(info.value) == ("could not reach the Hugging Face Hub: offline mode is on (HF_HUB_OFFLINE is set); "
                               "unset it to push")
    no_token_in(trained["home"])


def test_the_api_exports_a_download_and_pushes_up_to_the_network(trained, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    closed = free_port()  # nothing listens there: the Hub's address answers "connection refused"
    proc, url = start_app({"TLAB_HOME": str(trained["home"]), "HF_HUB_OFFLINE": "0",
                           "HF_ENDPOINT": f"http://127.0.0.1:{closed}"}, tmp_path)
    try:
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        out = client.predict(trained["full"], "checkpoint-2", api_name="/export_job")
        assert out["checkpoint"] == "checkpoint-2" and out["kind"] == "full"
        downloaded = Path(out["file"]) if isinstance(out["file"], str) else Path(out["file"]["path"])
        assert downloaded.is_file() and downloaded.parent.is_relative_to(tmp_path / "downloads")
        with zipfile.ZipFile(downloaded) as zf:
            zf.extractall(tmp_path / "unzipped")
        folder = tmp_path / "unzipped" / f"job-{trained['full']}-full-run-checkpoint-2"
        model, tokenizer = load(folder)
        assert generates(model, tokenizer)
        assert "full run" in (folder / "README.md").read_text()

        with pytest.raises(AppError) as info:
            client.predict(trained["full"], "me/model", TOKEN, "checkpoint-2", True, api_name="/push_job")
        message = str(info.value)
        assert f"could not reach the Hugging Face Hub (http://127.0.0.1:{closed}): ConnectError" in message, message
        assert "Traceback" not in message and TOKEN not in message
        with pytest.raises(AppError, match="no checkpoint 'checkpoint-7'"):
            client.predict(trained["lora"], "checkpoint-7", api_name="/export_job")
    finally:
        proc.terminate()
        proc.wait(20)
    no_token_in(trained["home"])
    for log in tmp_path.glob("app-*.log"):
        assert TOKEN not in log.read_text()


def test_hosted_mode_exports_for_the_owner_only_and_refuses_push(trained):
    from tlab_gradio.service import RequestError

    svc, mp = trained["svc"], trained["mp"]
    mp.setenv("TLAB_HOSTED", "1")
    try:
        with pytest.raises(ValueError, match=f"no job with id {trained['lora']}"):
            svc.export_job(trained["lora"], owner="session:bob")  # another visitor's job does not exist for bob
        out = svc.export_job(trained["lora"], owner=OWNER)
        assert str(trained["home"]) not in out["card"] and "$TLAB_HOME" in out["card"]  # no server path
        with pytest.raises(RequestError, match="pushing to the Hugging Face Hub is turned off on this server"):
            svc.push_job(trained["lora"], "me/model", TOKEN, owner=OWNER)
    finally:
        mp.delenv("TLAB_HOSTED")


def test_the_job_view_exports_a_finished_job_and_its_push_says_the_hub_is_offline(trained, tmp_path, chromium):
    """The page: a finished job's Export panel (from a checkpoint picked in its list) gives the zip; its push,
    offline, is one message, and the token typed is nowhere on the page or in the job's folder."""
    pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import expect

    from test_browser import opened_page

    with opened_page({"TLAB_HOME": str(trained["home"])}, tmp_path, chromium) as page:
        page.get_by_role("tab", name="Train").click()
        jobs = page.locator("#jobs-table")
        jobs.locator("span").filter(has_text="waits").first.click()
        expect(page.locator("#job-header")).to_contain_text("STOPPED")
        expect(page.locator("#job-export")).to_be_hidden()  # no model to export
        jobs.locator("span").filter(has_text="lora run").first.click()
        expect(page.locator("#job-header")).to_contain_text("COMPLETE")
        panel = page.locator("#job-export")
        expect(panel).to_be_visible()
        panel.get_by_text("Export the model").click()
        page.locator("#export-source input").first.click()
        page.get_by_role("option", name="checkpoint-1").click()
        page.locator("#export-job").click()
        expect(page.locator("#export-note")).to_contain_text("Exported checkpoint-1 (LoRA adapter merged", timeout=60_000)
        link = page.locator("#export-file a").first
        expect(link).to_have_attribute("href", re.compile(rf"/job-{trained['lora']}-lora-run-checkpoint-1\.zip$"))

        page.locator("#push-repo textarea, #push-repo input").first.fill("me/model")
        page.locator("#push-token input, #push-token textarea").first.fill(TOKEN)
        page.locator("#push-job").click()
        expect(page.locator(".toast-body").first).to_contain_text("could not reach the Hugging Face Hub: offline mode")
        assert TOKEN not in page.content()
        jobs.locator("span").filter(has_text="full run").first.click()  # another job: the last one's export goes
        expect(page.locator("#job-header")).to_contain_text("full run")
        expect(page.locator("#export-file")).to_be_hidden()
    no_token_in(trained["home"])
