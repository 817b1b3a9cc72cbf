"""The form's live check is Start's check, and its problems land at the fields they name (issue 18 items 3-4).
The page itself is tested in test_browser.py; here the parts, through the real service."""
import pytest

from tlab_gradio.service import RequestError, Service
from tlab_gradio.ui import live
from tlab_gradio.ui.plugin_form import number_value

SFT = "llama_sft_multi_gpu"
TINY = {"device": "cpu", "max_steps": 2}


def problems(svc: Service, request: dict) -> list[str]:
    with pytest.raises(RequestError) as caught:
        svc.launch_preview(request)
    return caught.value.problems


def test_the_live_check_refuses_what_start_refuses_the_data_and_templates_included(home):
    svc = Service(home)
    wrong = {"plugin": SFT, "template": "Q: {{question}}", "params": TINY}
    # It used to pass (the live check skipped the data), and Start then refused it.
    assert any("`question`, which the dataset does not have" in p for p in problems(svc, wrong))
    with pytest.raises(RequestError):
        svc.start_job(wrong)
    assert "accelerate" in svc.launch_preview({"plugin": SFT, "template": "Do: {{instruction}}", "params": TINY})[
        "command"]


def test_a_number_field_hands_on_numbers_and_keeps_text_that_is_none_for_the_check_to_name(home):
    number, integer = {"type": "number"}, {"type": "integer"}
    assert number_value(number, "2e-4") == 0.0002
    assert number_value(number, " 0.00123 ") == 0.00123
    assert number_value(integer, "4") == 4 and isinstance(number_value(integer, "4"), int)
    assert number_value(number, "") is None  # a cleared box: the default
    assert number_value(number, "two e minus four") == "two e minus four"
    assert number_value({"type": "string"}, "4") == "4"
    svc = Service(home)
    found = problems(svc, {"plugin": SFT, "params": {**TINY, "learning_rate": number_value(number, "two e minus four"),
                                                     "max_steps": number_value(integer, "4.5")}})
    marks = live.field_problems(found, list(svc.plugin_form(SFT)["parameters"]), "Bundled sample")
    assert marks["param-learning_rate"] == ["'two e minus four' is not a number"]
    assert marks["param-max_steps"] == ["4.5 is not a whole number"]


def test_each_problem_is_marked_at_the_fields_it_names(home):
    svc = Service(home)
    names = list(svc.plugin_form(SFT)["parameters"])
    found = problems(svc, {"plugin": SFT, "template": "Q: {{question}}", "params": {**TINY, "use_lora": False,
                                                                                   "fuse_model": True}})
    marks = live.field_problems(found, names, "Bundled sample")
    assert "`question`, which the dataset does not have" in marks["template"][0]
    assert marks["param-fuse_model"] == marks["param-use_lora"]  # one problem about both, at both
    assert "needs `use_lora`" in marks["param-fuse_model"][0]
    assert set(marks) == {"template", "param-fuse_model", "param-use_lora"}
    found = problems(svc, {"plugin": SFT, "template": "Do: {{instruction}}", "completion_template": "{{answer}}",
                           "params": TINY})
    assert set(live.field_problems(found, names, "Bundled sample")) == {"completion-template"}

    found = problems(svc, {"plugin": SFT, "dataset": {"source": "file", "name": str(home / "missing.csv")},
                           "model": str(home / "no-model"), "params": TINY})
    marks = live.field_problems(found, names, "Local path")
    assert "does not exist" in marks["ds-path"][0] and "does not exist" in marks["model"][0]


def test_an_answer_is_shown_only_for_the_latest_change():
    """The page's side (live.show_js) compares the answer's number with the page's count; here the shape."""
    out = live.answer(7, ["verdict", "command"], {"param-x": ["bad"]})
    assert out == {"seq": "7", "shown": ["verdict", "command"], "fields": {"param-x": ["bad"]}}
    assert "String(raw.seq) !== String(w[\"check\"]" in live.show_js("check", ["a", "b"], marks=True)
    assert "tlMark" not in live.show_js("preview", ["a", "b", "c"])


def test_start_takes_the_request_of_the_latest_check_only():
    """Start names the change its page last had checked; the request kept for an older change is never started."""
    class Page:
        session_hash, username = "page-1", None

    checked = live.Checked()
    checked.keep(Page, 3, {"plugin": SFT, "params": {"learning_rate": 0.001}}, None)
    assert checked.request(Page, "3")["params"] == {"learning_rate": 0.001}
    with pytest.raises(RequestError, match="changed while they were being checked"):
        checked.request(Page, "4")  # a newer change whose check is not in
    checked.keep(Page, 4, None, ["dataset: upload a file"])  # the form made no request: its problems
    with pytest.raises(RequestError, match="upload a file"):
        checked.request(Page, "4")
    # Checks run on several threads: change 6's check answering before change 5's leaves change 6 kept (CI saw Start
    # refused once, the older check having finished last).
    checked.keep(Page, "6", {"plugin": SFT, "params": {"learning_rate": 0.006}}, None)
    checked.keep(Page, "5", {"plugin": SFT, "params": {"learning_rate": 0.005}}, None)
    assert checked.request(Page, "6")["params"] == {"learning_rate": 0.006}

    class Other:
        session_hash, username = "page-2", None

    with pytest.raises(RequestError):
        checked.request(Other, "4")  # another page's check is not this one's

