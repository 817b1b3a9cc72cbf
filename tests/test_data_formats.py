"""Your own data in the public formats (issue 19): each format found from the columns of a file the test writes,
the templates it brings (SFT and GRPO), the request taking them when it gives none, the user's own templates
winning, conversations loaded as chat `messages`, errors that name the place, and one real CPU job on a
ShareGPT file with empty templates."""
import csv
import json
from pathlib import Path

import pytest

from tlab_gradio import data, data_formats
from tlab_gradio.service import RequestError, Service

SFT = "llama_sft_multi_gpu"
GRPO = "grpo_multi_gpu"
ROWS = 12


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def alpaca(i):
    return {"instruction": f"Add {i} and 2.", "input": "" if i % 2 else f"{i} + 2", "output": str(i + 2)}


def sharegpt(i):
    return {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": f"Double {i}?"},
                              {"from": "gpt", "value": str(2 * i)}], "id": f"c{i}"}


def chat(i):  # OpenAI messages under a column not named `messages`
    return {"dialogue": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": str(i)}],
            "source": "test"}


def gsm8k(i):
    return {"question": f"Tom has {i} apples and buys 3. How many now?",
            "answer": f"He has {i} + 3 = {i + 3} apples.\n#### {i + 3}"}


def write(folder: Path, kind: str) -> Path:
    rows = range(ROWS)
    if kind == "alpaca":
        return _jsonl(folder / "alpaca.jsonl", [alpaca(i) for i in rows])
    if kind == "sharegpt":
        return _jsonl(folder / "sharegpt.jsonl", [sharegpt(i) for i in rows])
    if kind == "chat":
        return _jsonl(folder / "chat.jsonl", [chat(i) for i in rows])
    if kind == "gsm8k":
        return _jsonl(folder / "gsm8k.jsonl", [gsm8k(i) for i in rows])
    if kind == "qa":
        return _jsonl(folder / "qa.jsonl", [{"question": f"Capital number {i}?", "answer": f"City {i}"} for i in rows])
    if kind == "prompt_completion":  # CSV with a BOM, quoted commas and a newline inside a value
        path = folder / "pc.csv"
        with path.open("w", encoding="utf-8-sig", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["prompt", "completion"])
            for i in rows:
                out.writerow([f"Count to {i}, then stop:\n", ", ".join(str(n) for n in range(i + 1))])
        return path
    if kind == "parquet":
        import pandas as pd

        path = folder / "alpaca.parquet"
        pd.DataFrame([alpaca(i) for i in rows]).to_parquet(path)
        return path
    raise AssertionError(kind)


# kind -> (format id, description's start, SFT templates)
EXPECTED = {
    "alpaca": ("alpaca", "looks like Alpaca: instruction, input -> output", (data_formats.ALPACA_PROMPT, "{{output}}")),
    "parquet": ("alpaca", "looks like Alpaca", (data_formats.ALPACA_PROMPT, "{{output}}")),
    "sharegpt": ("sharegpt", "looks like ShareGPT: conversations -> messages", ("", "")),
    "chat": ("messages", "looks like OpenAI chat messages: dialogue -> messages", ("", "")),
    "prompt_completion": ("prompt_completion", "looks like prompt/completion", ("{{prompt}}", "{{completion}}")),
    "gsm8k": ("question_answer", "looks like GSM8K: question -> answer",
              ("Question: {{question}}\nAnswer: ", "{{answer}}")),
    "qa": ("question_answer", "looks like question/answer", ("Question: {{question}}\nAnswer: ", "{{answer}}")),
}


def request(plugin, dataset, template="", completion="", **more):
    return {"plugin": plugin, "dataset": str(dataset), "template": template, "completion_template": completion,
            "device": "cpu", **more}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_each_format_is_found_and_trains_sft_with_empty_templates(home, tmp_path, kind):
    path = write(tmp_path, kind)
    fmt_id, description, sft = EXPECTED[kind]
    head = data.read_head(data.parse_spec(str(path)))
    found = data_formats.detect(head.columns, head.rows)
    assert (found.id, found.sft) == (fmt_id, sft)
    assert found.description.startswith(description), found.description

    svc = Service()
    shown = svc.dataset_format(str(path))
    assert shown["format"]["id"] == fmt_id and shown["from_format"] is True
    assert (shown["rows"], shown["rows_checked"]) == (ROWS, ROWS)

    spec = svc.prepare(request(SFT, path))
    assert (spec.data.template, spec.data.completion_template) == sft
    assert spec.data.info["format"]["id"] == fmt_id and spec.data.info["rows_checked"] == ROWS
    if fmt_id in ("sharegpt", "messages"):  # conversations: the chat template, as a `messages` column
        assert spec.data.info["conversational"] is True
        column = {"sharegpt": "conversations", "messages": "dialogue"}[fmt_id]
        assert spec.data.dataset["messages_from"] == column
        loaded = data.load(data.parse_spec(spec.data.dataset))  # what the trainer loads
        assert "messages" in loaded.column_names and column not in loaded.column_names
        formatted = data.formatted(loaded, data.Templates(spec.data.template, spec.data.completion_template))
        first = formatted[0]["messages"]
        if fmt_id == "sharegpt":
            assert [m["role"] for m in first] == ["system", "user", "assistant"]
            assert first[1]["content"] == "Double 0?" and first[2]["content"] == "0"
        else:
            assert first == chat(0)["dialogue"]
    else:
        assert spec.data.dataset.get("messages_from") is None
        rendered = data.Templates(*sft).rendered(head.rows[:1])[0]
        assert rendered["prompt"] and rendered["completion"]


@pytest.mark.parametrize("kind, answer", [("gsm8k", "3"), ("qa", "City 0")])
def test_question_answer_data_trains_grpo_with_empty_templates(home, tmp_path, kind, answer):
    path = write(tmp_path, kind)
    spec = Service().prepare(request(GRPO, path))
    assert spec.data.template == "{{question}}"
    template = data.Templates(spec.data.template, spec.data.completion_template)
    row = data.read_head(data.parse_spec(str(path))).rows[0]
    assert template.rendered([row])[0]["completion"] == answer  # GSM8K: the number after ####
    if kind == "gsm8k":
        assert spec.data.completion_template == data_formats.GSM8K_ANSWER


def test_grpo_on_conversations_says_why_it_has_no_templates(home, tmp_path):
    with pytest.raises(RequestError) as info:
        Service().prepare(request(GRPO, write(tmp_path, "sharegpt")))
    assert any("GRPO needs an input template" in p and "looks like ShareGPT" in p and "columns: conversations, id"
               in p for p in info.value.problems), info.value.problems


def test_the_users_own_templates_win(home, tmp_path):
    svc = Service()
    path = write(tmp_path, "gsm8k")
    spec = svc.prepare(request(SFT, path, "Q: {{question}}", "{{answer}}"))
    assert (spec.data.template, spec.data.completion_template) == ("Q: {{question}}", "{{answer}}")
    assert spec.data.info["format"] == {"id": "question_answer", "name": "GSM8K", "used": False,
                                        "description": spec.data.info["format"]["description"]}
    # A ShareGPT file with a template of the user's own is rendered by it, not converted
    path = write(tmp_path, "sharegpt")
    spec = svc.prepare(request(SFT, path, "{{ conversations[1].value }}", "{{ conversations[2].value }}"))
    assert spec.data.dataset.get("messages_from") is None and spec.data.template == "{{ conversations[1].value }}"
    # the SFT sample's templates, left in the form's boxes, are not the user's for a GSM8K file
    sample = data.SAMPLES["sft_instructions"]
    spec = svc.prepare(request(SFT, write(tmp_path, "gsm8k"), sample["template"], sample["completion_template"]))
    assert spec.data.template == "Question: {{question}}\nAnswer: "
    # ... but a wrong template of the user's own is refused, naming the columns there are
    with pytest.raises(RequestError) as info:
        svc.prepare(request(SFT, path, "{{instruction}}", "{{output}}"))
    assert any("uses `instruction`, which the dataset does not have; columns: conversations, id" in p
               for p in info.value.problems), info.value.problems


def test_a_format_can_be_named(home, tmp_path):
    svc = Service()
    rows = [{**chat(i), "other": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
            for i in range(ROWS)]
    path = _jsonl(tmp_path / "two.jsonl", rows)
    spec = svc.prepare({**request(SFT, path), "data_format": "messages:other"})
    assert spec.data.dataset["messages_from"] == "other" and spec.request["data_format"] == "messages:other"
    with pytest.raises(RequestError) as info:
        svc.prepare({**request(SFT, path), "data_format": "alpaca"})
    assert "`data_format` alpaca needs the columns instruction, output (input optional); columns: dialogue, source, " \
           "other" in info.value.problems
    with pytest.raises(RequestError) as info:
        svc.prepare({**request(SFT, path), "data_format": 3})
    assert info.value.problems[0].startswith("`data_format` must be text")


def test_a_malformed_jsonl_line_is_named_by_its_number(home, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(alpaca(0)) + "\n" + json.dumps(alpaca(1)) + "\n" + '{"instruction": "x", "output": \n'
                    + json.dumps(alpaca(3)) + "\n")
    with pytest.raises(RequestError) as info:
        Service().prepare(request(SFT, path))
    assert info.value.problems == ["dataset: line 3 of data.jsonl is not valid JSON: Expecting value (column 31)"]
    with pytest.raises(data.DataError, match="line 3 of data.jsonl is not valid JSON"):
        data.load(data.parse_spec(str(path)))  # the trainer's load says the same
    path.write_text('{"instruction": "x",\n' + json.dumps(alpaca(1)) + "\n")  # the first line broken
    with pytest.raises(RequestError) as info:
        Service().prepare(request(SFT, path))
    assert info.value.problems[0].startswith("dataset: line 1 of data.jsonl is not valid JSON"), info.value.problems
    pretty = tmp_path / "pretty.json"  # one JSON document over several lines: datasets reads it
    pretty.write_text(json.dumps([alpaca(i) for i in range(3)], indent=2))
    assert Service().dataset_format(str(pretty))["format"]["id"] == "alpaca"
    pretty.write_text(json.dumps([alpaca(i) for i in range(3)], indent=2).replace('"output"', '"output" 1', 1))
    with pytest.raises(RequestError) as info:
        Service().prepare(request(SFT, pretty))
    assert info.value.problems[0].startswith("dataset: line 5 of pretty.json is not valid JSON"), info.value.problems
    path.write_text(json.dumps(alpaca(0)) + "\n[1, 2]\n")
    with pytest.raises(data.DataError, match="line 2 of data.jsonl is a JSON list, not an object of columns"):
        data.check(data.parse_spec(str(path)), data.Templates("{{instruction}}"))


def test_a_missing_file_is_file_not_found(home, tmp_path):
    svc = Service()
    for dataset in ("/nonexistent/dir/data.jsonl", {"source": "file", "name": "/nonexistent/dir/data.jsonl"},
                    "missing.csv"):
        with pytest.raises(RequestError) as info:
            svc.prepare({"plugin": SFT, "device": "cpu", "dataset": dataset})
        name = dataset["name"] if isinstance(dataset, dict) else dataset
        assert info.value.problems[0].startswith(f"dataset: file not found: {name}"), info.value.problems
    assert data.parse_spec("org/some-dataset").source == "hub"  # a Hub id is still a Hub id


def test_the_check_reads_the_head_of_a_large_file(home, tmp_path):
    big = _jsonl(tmp_path / "big.jsonl", [alpaca(i) for i in range(3 * data.HEAD_ROWS)])
    with big.open("a") as fh:
        fh.write("{not json\n")  # past the head: the check does not read it; the trainer's load names it
    info = data.check(data.parse_spec(str(big)), data.Templates("{{instruction}}", "{{output}}"))
    assert (info["rows_checked"], info["rows"]) == (data.HEAD_ROWS, 3 * data.HEAD_ROWS + 1)
    path = tmp_path / "big.csv"
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["prompt", "completion"])
        out.writerows([[f"p{i}", f"c{i}"] for i in range(2 * data.HEAD_ROWS)])
    shown = Service().dataset_format(str(path))
    assert (shown["rows_checked"], shown["rows"]) == (data.HEAD_ROWS, 2 * data.HEAD_ROWS)
    assert shown["format"]["id"] == "prompt_completion"
    data.COUNT_BYTES, counted = 1000, data.COUNT_BYTES  # a file over the size counted: its head only
    try:
        assert Service().dataset_format(str(path))["rows"] is None
        assert data.check(data.parse_spec(str(big)), data.Templates("{{instruction}}"))["rows"] is None
        preview = data.preview(data.parse_spec(str(big)), rows=2)
        assert (preview["num_rows"], len(preview["rows"])) == (None, 2)
    finally:
        data.COUNT_BYTES = counted


OWN_CHAT = ("{% for message in messages %}<|{{ message['role'] }}|>{% if message['role'] == 'assistant' %}"
            "{% generation %}{{ message['content'] }}</s>{% endgeneration %}{% else %}{{ message['content'] }}"
            "{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_a_sharegpt_job_with_empty_templates_completes(home, tmp_path):
    """The whole way: the API's request with empty templates, the trainer loading the ShareGPT file as chat
    messages through a chat template given in the form (in place of the tiny model's), the job COMPLETE and its
    model saved with that template."""
    svc = Service()
    path = write(tmp_path, "sharegpt")
    job = svc.start_job({**request(SFT, path), "name": "sharegpt", "cpu_processes": 1,
                         "params": {"logging_steps": 1, "per_device_train_batch_size": 4, "max_length": 128,
                                    "gradient_checkpointing": "off", "max_steps": 2, "chat_template": OWN_CHAT,
                                    "assistant_only_loss": True}})
    done = svc.jobs.wait(job["id"], 420)
    log = "\n".join(svc.job_log(job["id"], 200))
    assert done.state == "COMPLETE", log
    assert "chat template: the one given" in log
    saved = [p for p in Path(done.job_dir).rglob("*") if p.name in ("chat_template.jinja", "tokenizer_config.json")
             and OWN_CHAT in (p.read_text() if p.name.endswith("jinja") else json.loads(p.read_text()).get(
                 "chat_template", ""))]
    assert saved, "the trained model keeps the chat template it was trained with"
    assert done.spec.data.dataset["messages_from"] == "conversations" and done.spec.data.template == ""
    metrics = [json.loads(line) for line in (Path(done.job_dir) / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in m for m in metrics), metrics


def test_dataset_format_checks_its_arguments(home, tmp_path):
    svc = Service()
    for args, field in [((5,), "`dataset` must be"), (("sft_instructions", 5), "`template` must be text"),
                        (("sft_instructions", None, None, "sft", ["x"]), "`data_format` must be text"),
                        (("sft_instructions", None, None, "sft", "csv"), "`data_format` 'csv': use one of")]:
        with pytest.raises(RequestError) as info:
            svc.dataset_format(*args)
        assert field in str(info.value), (args, str(info.value))
    shown = svc.dataset_format("sft_instructions")  # the sample's own templates: not the format's
    assert shown["format"]["id"] == "alpaca" and shown["from_format"] is False
    assert shown["templates"]["completion_template"] == "{{output}}"


def test_the_preview_shows_the_format_and_the_templates_a_job_would_use(home, tmp_path):
    """What the form's dataset line and template boxes show (issue 19 item 1): the format found, and its templates
    where the boxes hold none of the user's own. A format's templates left in the boxes from the data shown before
    are still the format's: the next file is read by its own format, not refused."""
    svc = Service()
    sample = data.SAMPLES["sft_instructions"]
    shown = svc.preview_data(str(write(tmp_path, "sharegpt")), sample["template"], sample["completion_template"])
    assert shown["format"]["id"] == "sharegpt" and shown["from_format"]
    assert shown["templates"] == {"template": "", "completion_template": ""}  # through the chat template
    assert [m["role"] for m in shown["rendered"][0]["messages"]][-2:] == ["user", "assistant"]
    gsm = svc.preview_data(str(write(tmp_path, "gsm8k")), "", "", train_type="grpo")
    filled = gsm["templates"]
    assert gsm["format"]["name"] == "GSM8K" and filled["completion_template"] == data_formats.GSM8K_ANSWER
    alpaca = svc.preview_data(str(write(tmp_path, "alpaca")), filled["template"], filled["completion_template"],
                              train_type="grpo")
    assert alpaca["format"]["id"] == "alpaca" and alpaca["from_format"] and "template_error" not in alpaca
    assert alpaca["templates"]["template"] == "{{instruction}}\n\n{{input}}"
    own = svc.preview_data(str(write(tmp_path, "alpaca")), "Do: {{instruction}}", "{{output}}")
    assert not own["from_format"] and own["rendered"][0]["prompt"].startswith("Do: ")
    chosen = svc.preview_data(str(write(tmp_path, "alpaca")), "", "", data_format="text")
    assert "needs the columns text" in chosen["template_error"]



def test_a_chat_template_of_your_own_is_checked_before_start(home, tmp_path, monkeypatch):
    """The chat template field: Jinja transformers can read ({% generation %} included), naming `messages`; a
    syntax error says its line; hosted servers refuse it. With generation markers it lets assistant-only loss
    through on a model whose own template has none."""
    svc = Service()
    path = write(tmp_path, "sharegpt")

    def problems(params):
        try:
            svc.prepare({**request(SFT, path), "params": params})
        except RequestError as exc:
            return [p for p in exc.problems if "chat_template" in p]
        return []

    assert problems({"chat_template": OWN_CHAT}) == []
    assert "syntax error at line 2" in problems({"chat_template": "{% for m in messages %}\n{{ m }"})[0]
    assert "never uses `messages`" in problems({"chat_template": "{{ bos_token }}"})[0]
    monkeypatch.setenv("TLAB_HOSTED", "1")
    assert "turned off on this server" in problems({"chat_template": OWN_CHAT})[0]


def test_each_format_through_the_api_of_the_running_app(home, tmp_path):
    """What a script sees (gradio_client on the real app): /dataset_format names each format and the templates it
    fills, /check_job passes each file with empty templates (GSM8K for GRPO too), the errors name the line of a
    malformed JSONL and a missing file; and a job on an OpenAI-messages file in a column of another name runs
    to COMPLETE through /start_job."""
    from gradio_client import Client
    from test_app import start_app, wait_state

    proc, url = start_app({}, tmp_path)
    try:
        client = Client(url, verbose=False)
        for kind, (fmt_id, description, sft) in EXPECTED.items():
            path = str(write(tmp_path, kind))
            found = client.predict(path, "", "", "sft", None, api_name="/dataset_format")
            assert found["format"]["id"] == fmt_id and found["format"]["description"].startswith(description)
            assert (found["templates"]["template"], found["templates"]["completion_template"]) == sft
            assert "accelerate" in client.predict(request(SFT, path), api_name="/check_job")["command"]
        gsm8k = str(write(tmp_path, "gsm8k"))
        assert client.predict(gsm8k, "", "", "grpo", None, api_name="/dataset_format")["templates"][
            "completion_template"] == data_formats.GSM8K_ANSWER
        client.predict({**request(GRPO, gsm8k), "params": {"max_steps": 1}}, api_name="/check_job")
        broken = tmp_path / "broken.jsonl"
        broken.write_text('{"text": "a"}\n{"text": "b"}\n{"text": \n')
        for dataset, said in [(str(broken), "line 3 of broken.jsonl is not valid JSON"),
                              (str(tmp_path / "nowhere.jsonl"), "file not found")]:
            with pytest.raises(Exception, match=said):
                client.predict(request(SFT, dataset), api_name="/check_job")
        chat = str(write(tmp_path, "chat"))
        job = client.predict({**request(SFT, chat), "name": "chat-api", "cpu_processes": 1,
                              "params": {"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 128}},
                             api_name="/start_job")
        status = wait_state(client, job["job_id"], ("COMPLETE", "FAILED", "STOPPED"))
        assert status["state"] == "COMPLETE", client.predict(job["job_id"], 60, api_name="/job_log")
    finally:
        proc.terminate()
        proc.wait(20)
