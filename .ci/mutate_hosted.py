#!/usr/bin/env python3
"""Mutation run over hosted mode's guards (issue 17, item 8): each guard is broken in turn, by a small text
patch to a copy of the tree, and the hosted tests are run against the copy; a guard whose breakage no test
notices is a hole in the tests. Slow (an app or two started per mutation), so not part of pytest.

    python .ci/mutate_hosted.py > bench/results/mutation-hosted-DATE.json        # every mutation
    python .ci/mutate_hosted.py preset-shared running-cap-off                     # some, by id

The copy is a commit's tree (HEAD, or $MUTATE_COMMIT), not the working tree. First the
unbroken copy must pass the tests (else every mutation would look caught). A mutation is `caught` when
pytest fails (the first failing test is named); one the fast tests miss is run again with the browser test.
Progress goes to stderr, the JSON to stdout.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The hosted tests, fastest first (pytest -x stops at the first failure).
TESTS = [
    "tests/test_login.py",
    "tests/test_reward_files.py::test_hosted_mode_refuses_code_from_a_visitor",
    "tests/test_service.py::test_an_uploaded_dataset_is_kept_in_the_workspace_once",
    "tests/test_service.py::test_an_uploaded_reward_file_is_saved_under_its_name_and_refused_when_hosted",
    "tests/test_hosted_attacks.py",
    "tests/test_app.py::test_hosted_mode_hides_server_paths_and_local_inputs",
    "tests/test_app.py::test_guessing_the_password_is_throttled_on_the_real_server",
    "tests/test_reward_files.py::test_a_script_uploads_lists_and_is_refused_through_the_app",
]
SLOW_TESTS = ["tests/test_hosted_browser.py"]  # real training in Chromium: only for what the fast ones miss

# (id, the guard, file, text as it is, text broken); or lists of texts, patched together. Each must occur once.
MUTATIONS = [
    ("hub-path", "a Hub id that is a path is refused", "tlab_gradio/job_request.py",
     'if spec.source == "hub" and not hub_id_only(spec.name):', 'if False and spec.source == "hub":'),
    ("hub-id-exists", "a Hub id naming something in the app's folder is a path", "tlab_gradio/job_request.py",
     'return not inputs.path_exists("name", text)', "return True"),
    ("hub-path-loader", "the loader refuses a Hub id that is a local path (the trainer's backstop)",
     "tlab_gradio/data.py",
     "if settings.hosted() and Path(spec.name).expanduser().exists():", "if False:"),
    ("file-outside-uploads", "a dataset file must be one of the visitor's uploads", "tlab_gradio/job_request.py",
     'if spec.source == "file" and not (inside(spec.name, uploads) and Path(spec.name).is_file()):',
     'if False:'),
    ("uploads-shared", "uploads kept per visitor", "tlab_gradio/service.py",
     "return settings.uploads_dir() / self._visitor_folder(owner)", "return settings.uploads_dir()"),
    ("preview-unchecked", "the data preview reads no server folder", "tlab_gradio/service.py",
     "job_request.hosted_dataset_check(spec, self.uploads_for(owner))", "pass"),
    ("model-path", "a model that is a local folder is refused", "tlab_gradio/job_request.py",
     'if settings.hosted() and (request.get("model") or "").strip() and not hub_id_only(request["model"]):',
     "if False:"),
    ("job-owner", "a visitor acts only on their own jobs (every verb)", "tlab_gradio/service.py",
     "if settings.hosted() and (not owner or job.owner != owner):", "if False:"),
    ("job-owner-none", "no visitor: no job", "tlab_gradio/service.py",
     "if settings.hosted() and (not owner or job.owner != owner):",
     "if settings.hosted() and owner and job.owner != owner:"),
    ("list-owner", "the jobs list shows the visitor's jobs only", "tlab_gradio/service.py",
     'return (owner or "\\0") if settings.hosted() else None', "return None"),
    ("stop-owner", "Stop: own jobs only", "tlab_gradio/service.py",
     "return self.jobs.stop(self._get(job_id, owner).id).as_dict()",
     "return self.jobs.stop(inputs.job_id(job_id)).as_dict()"),
    ("resume-owner", "Resume: own jobs only", "tlab_gradio/service.py",
     "job = self._get(job_id, owner)\n        with self._start_lock:",
     "job = self.jobs.get(inputs.job_id(job_id))\n        with self._start_lock:"),
    ("delete-owner", "Delete: own jobs only", "tlab_gradio/service.py",
     "job_id = self._get(job_id, owner).id\n        if settings.hosted():",
     "job_id = inputs.job_id(job_id)\n        if settings.hosted():"),
    ("view-owner", "a job's page (log, metrics, status): own jobs only (its nested status check broken too: "
     "alone, the first patch changes nothing)", "tlab_gradio/service.py",
     ["job = self._get(job_id, owner)\n        records, offset = logs.read_metrics",
      '"status": self.job_status(job.id, owner)'],
     ["job = self.jobs.get(inputs.job_id(job_id))\n        records, offset = logs.read_metrics",
      '"status": self.job_status(job.id, job.owner)']),
    ("files-owner", "a job's command and files: own jobs only", "tlab_gradio/service.py",
     "return self._details(self._get(job_id, owner))", "return self._details(self.jobs.get(inputs.job_id(job_id)))"),
    ("metrics-owner", "a compared job's metrics: own jobs only", "tlab_gradio/service.py",
     "return logs.read_metrics(self._get(job_id, owner).metrics_path, offset)",
     "return logs.read_metrics(self.jobs.get(inputs.job_id(job_id)).metrics_path, offset)"),
    ("clone-owner", "Clone: own jobs only", "tlab_gradio/service.py",
     "job = self._get(job_id, owner)\n        request = dict(job.spec.request",
     "job = self.jobs.get(inputs.job_id(job_id))\n        request = dict(job.spec.request"),
    ("no-visitor", "a hosted request with no visitor session is refused", "tlab_gradio/service.py",
     "if settings.hosted() and not (isinstance(owner, str) and owner):", "if False:"),
    ("allowed-paths", "gradio serves no job folder by path", "tlab_gradio/ui/__init__.py",
     'allowed_paths=[] if settings.hosted() else [str(settings.home() / "jobs")]',
     'allowed_paths=[str(settings.home() / "jobs")]'),
    ("hide-paths", "server paths become names in every shown text", "tlab_gradio/service.py",
     "if not settings.hosted() or not isinstance(text, str) or not text:\n            return text",
     "if True:\n            return text"),
    ("hide-log", "a job's log lines hide server paths", "tlab_gradio/service.py",
     "return [self.hide_paths(line) for line in self.", "return [line for line in self."),
    ("hide-error", "a failed job's error hides server paths", "tlab_gradio/service.py",
     "error = self.hide_paths(error)", "pass"),
    ("hide-messages", "error messages to the page and API hide server paths", "tlab_gradio/ui/common.py",
     "return gr.Error(get_service().hide_paths(message), print_exception=False)",
     "return gr.Error(message, print_exception=False)"),
    ("api-path-keys", "the API's job summaries drop folders, command and config", "tlab_gradio/ui/api.py",
     "if not settings.hosted():\n        return job\n    return {k: v",
     "if True:\n        return job\n    return {k: v"),
    ("caps", "a run's size is capped (HOSTED_CAPS)", "tlab_gradio/job_request.py",
     "if clean and settings.hosted():\n        problems += _hosted_caps(clean, placement)",
     "if False:\n        problems += _hosted_caps(clean, placement)"),
    ("cap-steps", "max_steps capped at 1000", "tlab_gradio/job_request.py",
     '"max_steps": 1000,', '"max_steps": 10**9,'),
    ("cap-processes", "at most HOSTED_MAX_PROCESSES processes (GPUs included)", "tlab_gradio/job_request.py",
     "if placement is not None and placement.num_processes > HOSTED_MAX_PROCESSES:", "if False:"),
    ("multi-machine", "training across machines refused", "tlab_gradio/job_request.py",
     'if (p.get("main_process_ip") or "").strip():', "if False:"),
    ("queued-cap", "a visitor's unfinished jobs capped", "tlab_gradio/service.py",
     "if not settings.hosted():\n            return\n        cap = settings.hosted_max_jobs_per_visitor()",
     "if True:\n            return\n        cap = settings.hosted_max_jobs_per_visitor()"),
    ("queued-cap-running", "running jobs count toward the unfinished cap", "tlab_gradio/service.py",
     'if self.jobs.count(owner, ("QUEUED", *ACTIVE)) >= cap:', 'if self.jobs.count(owner, ("QUEUED",)) >= cap:'),
    ("resume-cap", "a resumed job counts toward the cap", "tlab_gradio/service.py",
     "if job.state in FINISHED:\n                self._visitor_cap(owner)", "if False:\n                pass"),
    ("running-cap-off", "a visitor's running jobs capped (scheduler)", "tlab_gradio/jobs.py",
     "per_visitor = settings.hosted_max_running_per_visitor() if settings.hosted() else None",
     "per_visitor = None"),
    ("running-cap-count", "the scheduler counts a visitor's jobs it starts in the same pass", "tlab_gradio/jobs.py",
     "                    if job.owner:\n                        theirs[job.owner] = theirs.get(job.owner, 0) + 1\n",
     ""),
    ("upload-cap-http", "gradio refuses an upload over the cap", "tlab_gradio/ui/__init__.py",
     "max_file_size=int(settings.hosted_max_upload_mb() * 2**20) if settings.hosted() else None",
     "max_file_size=None"),
    ("upload-cap-service", "save_upload refuses a file over the cap", "tlab_gradio/service.py",
     "if settings.hosted() and Path(path).stat().st_size > settings.hosted_max_upload_mb() * 2**20:",
     "if False:"),
    ("install", "installs refused", "tlab_gradio/service.py",
     'if settings.hosted():\n            raise RequestError(["installing packages',
     'if False:\n            raise RequestError(["installing packages'),
    ("reward-upload", "reward files refused", "tlab_gradio/service.py",
     "def save_reward_file(self, name: str, source: str | bytes) -> dict[str, Any]:\n        if settings.hosted():",
     "def save_reward_file(self, name: str, source: str | bytes) -> dict[str, Any]:\n        if False:"),
    ("reward-request", "a request naming reward files refused", "tlab_gradio/job_request.py",
     "    if settings.hosted():\n        return [reward_files.HOSTED_REFUSAL]", "    pass"),
    ("reward-list", "reward files neither listed nor offered", "tlab_gradio/service.py",
     "allowed = not settings.hosted()", "allowed = True"),
    ("delete", "deletes refused", "tlab_gradio/service.py",
     'if settings.hosted():\n            raise RequestError(["deleting jobs',
     'if False:\n            raise RequestError(["deleting jobs'),
    ("login-wired", "the page's login goes through the throttle", "tlab_gradio/ui/__init__.py",
     "auth=login.ThrottledLogin(users).login if users else None", "auth=users"),
    ("login-lock", "a locked name is refused, the right password too", "tlab_gradio/login.py",
     "if self._locked(username, now):\n            return False", "if False:\n            return False"),
    ("login-spray", "failures over all names lock everyone", "tlab_gradio/login.py",
     '((name, self.LIMIT), ("", 4 * self.LIMIT))', "((name, self.LIMIT),)"),
    ("login-delay", "each failure waits", "tlab_gradio/login.py",
     "if not ok and self.delay:", "if False:"),
    ("preset-shared", "presets per visitor", "tlab_gradio/service.py",
     "if not settings.hosted():\n            return self.presets\n        return Presets(",
     "if True:\n            return self.presets\n        return Presets("),
    ("preset-list-none", "no visitor: no presets listed", "tlab_gradio/service.py",
     "if settings.hosted() and not owner:\n            return []  # no visitor: nobody's presets",
     "if False:\n            return []"),
    ("preset-page-load", "the page's Load preset asks for the visitor's preset", "tlab_gradio/ui/train_tab.py",
     "svc.load_preset(", "(lambda name, owner: svc.load_preset(name, 'session:shared'))("),
    ("preset-page-save", "the page's Save preset saves as the visitor", "tlab_gradio/ui/train_tab.py",
     "svc.save_preset(", "(lambda name, request, owner: svc.save_preset(name, request, 'session:shared'))("),
]


def copy_tree(dest: Path, commit: str) -> None:
    """The tree of `commit` (not the working tree: others' unfinished edits there are no baseline)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


INCONCLUSIVE = re.compile(r"did not answer within|TimeoutError|ReadTimeout|timed out")  # a slow machine, not a test


def run_tests(tree: Path, tests: list[str], log: Path, tries: int = 3) -> tuple[bool, str | None, float, str]:
    """(passed, the first failing test, seconds, its first `E` line). A failure that is the machine's (the app
    did not answer in time, a request timed out) is no catch: the run is tried again, up to `tries` times."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1",
           "PIP_NO_INDEX": "1", "PIP_RETRIES": "0"}  # a broken install guard must not reach the network
    for attempt in range(tries):
        started = time.monotonic()
        with open(log, "w") as out:
            code = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                  cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        text = log.read_text()
        failed = re.search(r"^(?:FAILED|ERROR) (\S+)", text, re.M)
        why = re.search(r"^E\s+(.{0,300})", text, re.M)
        result = (code == 0, failed.group(1) if failed else (None if code == 0 else f"pytest exit {code}"),
                  round(time.monotonic() - started, 1), why.group(1).strip() if why else "")
        if code == 0 or not INCONCLUSIVE.search(text) or attempt == tries - 1:
            return result
        print(f"  inconclusive ({result[1]}: {result[3][:120]}); again", file=sys.stderr)
    return result


def main(only: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not only or m[0] in only]
    unknown = set(only) - {m[0] for m in MUTATIONS}
    if unknown:
        sys.exit(f"unknown mutation(s): {sorted(unknown)}")
    work = Path(tempfile.mkdtemp(prefix="tlab-mutate-"))
    tree = work / "tree"
    commit = subprocess.run(["git", "rev-parse", os.environ.get("MUTATE_COMMIT", "HEAD")], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.strip()
    copy_tree(tree, commit)
    ok, failed, baseline, _ = run_tests(tree, TESTS, work / "baseline.log")
    print(f"baseline: {'passed' if ok else 'FAILED ' + str(failed)} in {baseline} s", file=sys.stderr)
    if not ok:
        print((work / "baseline.log").read_text()[-3000:], file=sys.stderr)
        return 2
    results = []
    for mid, guard, rel, before, after in chosen:
        path = tree / rel
        original = path.read_text()
        pairs = list(zip(before, after)) if isinstance(before, list) else [(before, after)]  # several patches
        counts = [original.count(b) for b, _ in pairs]
        if counts != [1] * len(pairs):
            results.append({"id": mid, "guard": guard, "file": rel, "caught": None,
                            "error": f"the texts to break occur {counts} times (once each wanted)"})
            print(f"{mid}: NOT APPLIED", file=sys.stderr)
            continue
        broken = original
        for b, a in pairs:
            broken = broken.replace(b, a)
        path.write_text(broken)
        try:
            passed, failed, seconds, why = run_tests(tree, TESTS, work / f"{mid}.log")
            entry = {"id": mid, "guard": guard, "file": rel, "caught": not passed, "caught_by": failed,
                     "failure": why, "seconds": seconds}
            if passed:  # the fast tests missed it: the browser test too?
                passed, failed, seconds, why = run_tests(tree, SLOW_TESTS, work / f"{mid}-slow.log")
                entry.update(caught=not passed, caught_by=failed, failure=why, slow_seconds=seconds)
        finally:
            path.write_text(original)
        results.append(entry)
        print(f"{mid}: {'caught by ' + str(entry['caught_by']) if entry['caught'] else 'NOT CAUGHT'} "
              f"({entry.get('seconds')} s)", file=sys.stderr)
    report = {
        "what": "hosted-mode guards broken one at a time in a copy of the tree; the hosted tests run against each",
        "commit": commit, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tests": TESTS, "slow_tests_for_survivors": SLOW_TESTS,
        "baseline_seconds": baseline,
        "mutations": len(results), "caught": sum(bool(r["caught"]) for r in results),
        "not_caught": [r["id"] for r in results if not r["caught"]],
        "results": results,
    }
    print(json.dumps(report, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
