"""The page reads through the service only: no module of tlab_gradio/ui imports the manifest loader or the job
store and its files, opens a file itself, reaches into the service's job store (`svc.jobs`), or asks the
service for Manifest objects (`svc.plugin`, `svc.plugins`, `svc.parameter_specs`: the page reads the plain
dicts of `plugin_list` and `plugin_form`). Checked with `ast` on the source, so it stays true as the page
grows."""
import ast
from pathlib import Path

UI = Path(__file__).resolve().parent.parent / "tlab_gradio" / "ui"
FORBIDDEN_MODULES = {"tlab_gradio.manifests", "tlab_gradio.jobs", "tlab_gradio.logs", "tlab_gradio.jobfiles"}
MANIFEST_CALLS = {"plugin", "plugins", "parameter_specs"}  # Service methods that hand out Manifest objects
FILE_CALLS = {"read_text", "read_bytes", "write_text", "write_bytes"}  # and open(...), path.open(...)
ALLOWED: dict[tuple[str, str], set[str]] = {}  # (ui module, module) -> names it may import from there


def _imported(node: ast.AST, package: str) -> list[tuple[str, set[str]]]:
    """(module, names) for an import statement, relative imports resolved against `package`."""
    if isinstance(node, ast.Import):
        return [(a.name, set()) for a in node.names]
    if isinstance(node, ast.ImportFrom):
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] if node.level else [])
        module = ".".join(filter(None, [base, node.module or ""]))
        names = {a.name for a in node.names}
        return [(module, names)] + [(f"{module}.{n}", set()) for n in names]  # `from .. import jobs` too
    return []


def violations(source: str, filename: str, package: str = "tlab_gradio.ui") -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        line = getattr(node, "lineno", 0)
        where = f"{filename}:{line}"
        for module, names in _imported(node, package):
            if module in FORBIDDEN_MODULES and not (names and names <= ALLOWED.get((filename, module), set())):
                found.append((line, f"{where} imports {module}"))
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "open" or \
                    isinstance(func, ast.Attribute) and func.attr in FILE_CALLS | {"open"}:
                found.append((line, f"{where} reads or writes a file ({ast.unparse(func)}(...))"))
            if isinstance(func, ast.Attribute) and func.attr in MANIFEST_CALLS:
                found.append((line, f"{where} asks for Manifest objects ({ast.unparse(func)}(...))"))
        if isinstance(node, ast.Attribute) and node.attr == "jobs":
            found.append((line, f"{where} reaches into the job store ({ast.unparse(node)})"))
    return [text for _, text in sorted(found, key=lambda item: item[0])]  # in line order


def test_no_ui_module_reads_past_the_service():
    files = sorted(UI.glob("*.py"))
    assert {"train_tab.py", "jobs_view.py", "plugin_form.py", "dataset_picker.py"} <= {f.name for f in files}
    problems = [v for f in files for v in violations(f.read_text(), f.name)]
    assert not problems, "the page must read through tlab_gradio.service:\n" + "\n".join(problems)


def test_the_check_sees_each_way_past_the_service():
    bad = '''
from .. import manifests
from ..jobs import JobManager
import tlab_gradio.logs
from ..jobfiles import read_json
from ..jobs import ACTIVE


def f(svc, path):
    open(path).read()
    path.read_text()
    path.write_bytes(b"")
    with path.open() as fh:
        pass
    manifest = svc.plugin("x")
    return svc.jobs.get(1)
'''
    got = violations(bad, "some_tab.py")
    assert [v.split(" ", 1)[1] for v in got] == [
        "imports tlab_gradio.manifests", "imports tlab_gradio.jobs", "imports tlab_gradio.logs",
        "imports tlab_gradio.jobfiles", "imports tlab_gradio.jobs",
        "reads or writes a file (open(...))", "reads or writes a file (path.read_text(...))",
        "reads or writes a file (path.write_bytes(...))", "reads or writes a file (path.open(...))",
        "asks for Manifest objects (svc.plugin(...))", "reaches into the job store (svc.jobs)"]
    assert violations("from ..jobs import ACTIVE, FINISHED\n", "jobs_view.py") == [
        "jobs_view.py:1 imports tlab_gradio.jobs"]
    assert violations("from .. import data, settings\nfrom ..service import Service\n", "x.py") == []
