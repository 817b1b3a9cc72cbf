"""Promises the repository makes about itself."""
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, re.S)[:2]


def test_ci_runs_the_readme_test_command():
    app_cmd, test_cmd = readme_commands()
    assert app_cmd.endswith("python app.py")
    ci_lines = [l for l in (REPO / ".ci/run").read_text().splitlines() if l and not l.startswith(("#", "set ", "cd "))]
    assert ci_lines == [test_cmd]


def test_the_core_never_imports_gradio():
    code = ("import sys, tlab_gradio.service, tlab_gradio.trainers.common, tlab_gradio.data, tlab_gradio.logs;"
            "assert 'gradio' not in sys.modules, 'core imported gradio'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    for path in (REPO / "tlab_gradio").rglob("*.py"):
        if "ui" in path.relative_to(REPO / "tlab_gradio").parts:
            continue
        assert not re.search(r"^\s*(import gradio|from gradio)", path.read_text(), re.M), path


def test_constraints_pin_what_is_installed_for_every_requirement():
    """constraints.txt is the environment the tests run in: every package the requirements pull in, at the
    version installed (the README's commands install with it, so in CI the two agree). A requirement added
    without regenerating it, or an install that drifted from it, fails here."""
    written = (REPO / "constraints.txt").read_text()
    fresh = subprocess.run([sys.executable, str(REPO / ".ci" / "freeze-constraints")], capture_output=True,
                           text=True, check=True).stdout
    pins = lambda text: {line for line in text.splitlines() if "==" in line}  # noqa: E731
    assert pins(fresh) == pins(written), (
        f"not as tested: {sorted(pins(fresh) ^ pins(written))}; run `python .ci/freeze-constraints > "
        "constraints.txt` in the tested environment and commit it on purpose")
