import json
import subprocess
import sys

import pytest

from conftest import REPO

from tlab_gradio import data, models, tiny_model


def test_parse_spec_forms(tmp_path):
    assert data.parse_spec(None) == data.DatasetSpec("sample", "sft_instructions")
    assert data.parse_spec("sft_instructions").source == "sample"
    f = tmp_path / "d.csv"
    f.write_text("q,a\n1,2\n")
    assert data.parse_spec(str(f)) == data.DatasetSpec("file", str(f.resolve()))
    assert data.parse_spec("org/some-dataset") == data.DatasetSpec("hub", "org/some-dataset")
    assert data.parse_spec({"source": "hub", "name": "gsm8k", "subset": "main"}).subset == "main"
    with pytest.raises(data.DataError, match="no bundled sample 'nope'"):
        data.parse_spec({"source": "sample", "name": "nope"})
    with pytest.raises(data.DataError, match="does not exist"):
        data.parse_spec({"source": "file", "name": str(tmp_path / "missing.jsonl")})
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(data.DataError, match="use JSON, JSONL, CSV or Parquet"):
        data.parse_spec({"source": "file", "name": str(tmp_path / "x.txt")})
    with pytest.raises(data.DataError, match="unknown keys"):
        data.parse_spec({"source": "file", "name": "x", "colums": 1})


def test_sample_preview_renders_its_templates():
    spec = data.parse_spec(None)
    templates = data.templates_for(spec, None, None)
    out = data.preview(spec, templates, rows=2)
    assert out["num_rows"] == 320 and out["columns"] == ["instruction", "input", "output"]
    first = out["rows"][0]
    assert out["rendered"][0]["prompt"].startswith(f"### Instruction:\n{first['instruction']}")
    assert out["rendered"][0]["completion"] == first["output"]


def test_bundled_samples_are_checked_without_importing_datasets():
    """The check before launch reads a bundled sample itself: the web process importing `datasets`
    would make the first job after a start wait over a second (2-core machine). Same answer as
    `datasets` gives."""
    code = ("import json, sys; from tlab_gradio import data\n"
            "out = {n: data.check(data.parse_spec(n), data.templates_for(data.parse_spec(n), None, None))"
            " for n in data.SAMPLES}\n"
            "print(json.dumps({'imported': 'datasets' in sys.modules, 'checks': out}))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    out = json.loads(run.stdout)
    assert out["imported"] is False
    for name, checked in out["checks"].items():
        loaded = data.load(data.parse_spec(name))
        assert (checked["rows"], checked["columns"]) == (len(loaded), loaded.column_names)
    with pytest.raises(data.DataError, match="no split 'test'"):
        data.check(data.DatasetSpec("sample", "sft_instructions", split="test"), data.Templates("{{input}}"))


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv", "parquet"])
def test_local_files_of_each_type(tmp_path, suffix):
    import pandas as pd

    frame = pd.DataFrame({"question": ["a?", "b?", "c?"], "answer": ["x", "y", "z"]})
    path = tmp_path / f"data.{suffix}"
    {"jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     "json": lambda: frame.to_json(path, orient="records"),
     "csv": lambda: frame.to_csv(path, index=False),
     "parquet": lambda: frame.to_parquet(path)}[suffix]()
    spec = data.parse_spec(str(path))
    info = data.check(spec, data.Templates("Q: {{question}}\nA: {{answer}}"))
    assert info == {"rows": 3, "rows_checked": 3, "columns": ["question", "answer"], "conversational": False,
                    "example_chars": 10.0}  # "Q: a?\nA: x": the rendered rows' mean length
    assert data.preview(spec, data.Templates("Q: {{question}}"))["rendered"][1] == {"text": "Q: b?"}


def test_template_naming_a_missing_field_lists_the_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(data.DataError) as info:
        data.check(data.parse_spec(str(path)), data.Templates("{{instruction}} {{question}}", "{{output}}"))
    assert str(info.value) == "data template uses `instruction`, which the dataset does not have; columns: question, answer"
    with pytest.raises(data.DataError, match="completion template uses `output`"):
        data.check(data.parse_spec(str(path)), data.Templates("{{question}}", "{{output}}"))
    with pytest.raises(data.DataError, match="a data template is needed"):
        data.check(data.parse_spec(str(path)), data.Templates(""))
    with pytest.raises(data.DataError, match="template syntax error at line 1"):
        data.check(data.parse_spec(str(path)), data.Templates("{{question"))


def test_templates_are_sandboxed():
    with pytest.raises(data.DataError, match="`__class__`, `__mro__`, `__subclasses__`, which the sandbox blocks"):
        data.render("{{ q.__class__.__mro__[1].__subclasses__() }}", {"q": "x"})
    with pytest.raises(data.DataError, match="the sandbox blocks it: access to attribute 'mro'"):
        data.render("{{ q.mro() }}", {"q": str})  # found only when it runs


def test_single_split_is_the_training_split(tmp_path):
    folder = tmp_path / "only_test"
    folder.mkdir()
    (folder / "test.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    spec = data.parse_spec(str(folder))
    assert len(data.load(spec)) == 2
    (folder / "validation.jsonl").write_text('{"text": "c"}\n')
    with pytest.raises(data.DataError, match="no `train` split; choose one of: "):
        data.load(spec)
    assert len(data.load(data.DatasetSpec("file", str(folder), split="validation"))) == 1
    with pytest.raises(data.DataError, match="has no split 'dev'"):
        data.load(data.DatasetSpec("file", str(folder), split="dev"))


def test_conversational_data_needs_no_template(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "yo"}]}) + "\n")
    info = data.check(data.parse_spec(str(path)), data.Templates(""))
    assert info["conversational"] is True


def test_models_resolve_and_check(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("TLAB_HOME", str(tmp_path / "ws"))
    ref = models.resolve("")
    assert ref.source == "embedded" and ref.architecture == "LlamaForCausalLM"
    local = models.resolve(str(tiny_model_dir))
    assert local.source == "local" and local.architecture == "LlamaForCausalLM"
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text('{"architectures": ["BertForMaskedLM"]}')
    with pytest.raises(models.ModelError, match="is a BertForMaskedLM, which SFT does not support"):
        models.check_supported(models.resolve(str(bert)), ["LlamaForCausalLM"], "SFT")
    with pytest.raises(models.ModelError, match="has no config.json"):
        models.resolve(str(tmp_path))
    with pytest.raises(models.ModelError, match="does not exist"):
        models.resolve(str(tmp_path / "nothing"))
    with pytest.raises(models.ModelError, match="neither a local folder nor a valid Hub id"):
        models.resolve("not a//valid id")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelError, match="could not read config.json of Hub model 'org/model'"):
        models.resolve("org/model")


def test_tiny_model_trains_offline_shapes(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = tok("Add 2 and 3.", return_tensors="pt")["input_ids"]
    assert tok.decode(ids[0]) == "Add 2 and 3."
    out = model(input_ids=ids, labels=ids)
    assert out.loss.item() > 0
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                   return_assistant_tokens_mask=True, return_dict=True)
    assert sum(chat["assistant_masks"]) == len(tok("yo<|im_end|>")["input_ids"])
    assert tiny_model.ensure(tiny_model_dir) == tiny_model_dir  # cached: not rebuilt
