import json
import os
import time

from tlab_gradio import logs


class CountingReader:
    """A binary file that counts the bytes read from it."""

    def __init__(self, handle):
        self.handle = handle
        self.bytes_read = 0

    def seek(self, *a):
        return self.handle.seek(*a)

    def tell(self):
        return self.handle.tell()

    def read(self, n=-1):
        data = self.handle.read(n)
        self.bytes_read += len(data)
        return data


def test_tail_edge_cases(tmp_path):
    p = tmp_path / "log.txt"
    assert logs.tail(tmp_path / "missing.txt", 5) == []
    p.write_text("")
    assert logs.tail(p, 5) == []
    p.write_text("a\nb\nc")  # no trailing newline: the partial line counts
    assert logs.tail(p, 2) == ["b", "c"]
    assert logs.tail(p, 10) == ["a", "b", "c"]
    p.write_text("a\nb\nc\n")
    assert logs.tail(p, 1) == ["c"]
    assert logs.tail(p, 0) == []
    long_line = "x" * (3 * logs.BLOCK)
    p.write_text(f"first\n{long_line}\nlast\n")
    assert logs.tail(p, 2) == [long_line, "last"]


def test_tail_cost_does_not_grow_with_the_file(tmp_path):
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    line = "step 123 loss 1.2345 some log text\n"
    small.write_text(line * 1_000)
    with open(big, "w") as fh:
        for _ in range(20):
            fh.write(line * 50_000)  # a million lines, ~35 MB
    costs = []
    for path in (small, big):
        with open(path, "rb") as fh:
            reader = CountingReader(fh)
            got = logs.tail_file(reader, 100)
            assert got == [line.strip()] * 100
            costs.append(reader.bytes_read)
    assert costs[1] <= logs.BLOCK  # one block from the end, whatever the size
    assert costs[0] <= logs.BLOCK


def test_follow_returns_whole_lines_and_advances(tmp_path):
    p = tmp_path / "log.txt"
    p.write_text("one\ntw")
    text, off = logs.follow(p, 0)
    assert text == "one\n" and off == 4
    with open(p, "a") as fh:
        fh.write("o\nthree\n")
    text, off = logs.follow(p, off)
    assert text == "two\nthree\n"
    assert logs.follow(p, off) == ("", off)
    p.write_text("new\n")  # replaced by a shorter file: start again
    assert logs.follow(p, off) == ("new\n", 4)


def test_metrics_reading_skips_a_line_being_written(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n" + json.dumps({"step": 2, "loss": 1.5}) + "\n{\"step\": 3,")
    assert logs.last_metrics(p, 2) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    records, off = logs.read_metrics(p)
    assert [r["step"] for r in records] == [1, 2]
    with open(p, "a") as fh:
        fh.write(' "loss": 1.0}\n')
    records, _ = logs.read_metrics(p, off)
    assert records == [{"step": 3, "loss": 1.0}]


FAILING = """
import os, sys, time
import torch
if os.environ.get("RANK") == "1":
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                                 "79.19 GiB of which 1.50 GiB is free.")
time.sleep(float(sys.argv[1]))  # the other rank fails later (or is stopped by the launcher first)
try:
    open("/surely/not/here")
except OSError as exc:
    raise RuntimeError("could not read the data") from exc
"""


def _launch(tmp_path, processes, delay):
    """A real `accelerate launch` of failing ranks on CPU, its output as a job's log."""
    import subprocess
    import sys

    from test_app import free_port

    script = tmp_path / "fail.py"
    script.write_text(FAILING)
    log = tmp_path / f"log-{processes}.txt"
    flags = ["--multi_gpu"] if processes > 1 else ["--cpu"]
    with log.open("w") as out:
        subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *flags, "--num_processes", str(processes),
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", str(free_port()), str(script), str(delay)],
                       stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False)
    return log


def test_a_failed_jobs_reason_is_its_first_error_not_the_launchers(tmp_path):
    two_ranks = _launch(tmp_path, 2, 3.0)
    text = two_ranks.read_text()
    assert "ChildFailedError" in text  # the launcher's report comes last, and names no cause
    reason = logs.failure(two_ranks)
    # the agent's report names the rank that failed first
    assert reason.startswith("rank 1: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.")
    assert "(the GPU ran out of memory: set Gradient Checkpointing on" in reason

    # One rank: an error raised from another is reported as raised (the chain's last), with no hint.
    one = _launch(tmp_path, 1, 0)
    assert "CalledProcessError" in one.read_text()
    assert logs.failure(one) == "RuntimeError: could not read the data"


def test_failure_without_a_traceback_is_none(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("loading\nstep 1\nKilled\n")
    assert logs.failure(log) is None
    assert logs.failure(tmp_path / "missing.txt") is None
    long = tmp_path / "long.txt"
    long.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: " + "x" * 1000 + "\n")
    assert logs.failure(long) == "ValueError: " + "x" * 400 + "…"


ROOT_CAUSE = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
sft.py FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-01_18:46:43
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 14145)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 14145
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-01_18:46:43
  host      : localhost
  rank      : {rank} (local_rank: {rank})
  exitcode  : {code} (pid: 14146)
  error_file: {error_file}
  traceback : {traceback}
============================================================
"""


def rank_log(tmp_path, *lines, rank=1, code=1, error_file="<N/A>", traceback="To enable traceback see: ..."):
    log = tmp_path / "log.txt"
    log.write_text("\n".join(lines) + "\n" + ROOT_CAUSE.format(rank=rank, code=code, error_file=error_file,
                                                               traceback=traceback))
    return log


def error_file(error_dir, rank, message, timestamp, run="none_abc"):
    path = error_dir / run / "attempt_0" / str(rank) / "error.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    callstack = f"Traceback (most recent call last):\n  File \"sft.py\", line 3, in main\n{message}\n"
    path.write_text(json.dumps({"message": {"message": message.replace("torch.", ""), "extraInfo": {
        "py_callstack": callstack, "timestamp": str(timestamp)}}}))
    return path


def test_rank_tracebacks_are_read_per_rank_and_the_failing_rank_named(tmp_path):
    """Two ranks' prefixed lines interleave; the agent's report says rank 1 failed first."""
    log = rank_log(tmp_path,
                   "[rank0]: Traceback (most recent call last):",
                   "[rank1]: Traceback (most recent call last):",
                   '[rank0]:   File "sft.py", line 9, in main',
                   '[rank1]:   File "sft.py", line 7, in main',
                   "[rank1]: OSError: [Errno 28] No space left on device",
                   "[rank0]: RuntimeError: Connection closed by peer")
    assert logs.failure(log) == ("rank 1: OSError: [Errno 28] No space left on device (the disk is full: delete old "
                                 "jobs' checkpoints, or lower Checkpoints Kept)")
    # No report (the agent itself died): the first traceback in the log, its rank named
    no_report = tmp_path / "no-report.txt"
    no_report.write_text("\n".join(log.read_text().splitlines()[:6]) + "\n")
    assert logs.failure(no_report) == "rank 0: RuntimeError: Connection closed by peer"


def test_a_rank_killed_by_a_signal_is_named_with_it(tmp_path):
    log = rank_log(tmp_path, "[tlab] rank 1 of world size 2", rank=1, code=-9,
                   traceback="Signal 9 (SIGKILL) received by PID 14146")
    assert logs.failure(log) == "rank 1: killed by SIGKILL (out of memory?)"
    # ...and a rank that just exited non-zero, with no traceback anywhere
    assert logs.failure(rank_log(tmp_path, rank=1, code=3)) == "rank 1: exited with code 3"


def test_error_files_come_first_and_the_earliest_wins_without_a_report(tmp_path):
    errors = tmp_path / "torchelastic"
    error_file(errors, 0, "RuntimeError: Connection closed by peer", 1_700_000_005)
    error_file(errors, 1, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.", 1_700_000_001)
    # the log says something else (or nothing): the error files are what the ranks raised
    log = rank_log(tmp_path, "[rank1]: MemoryError", rank=1, code=1, error_file=str(errors / "x" / "error.json"))
    assert logs.failure(log, error_dir=errors).startswith(
        "rank 1: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. (the GPU ran out of memory")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert logs.failure(empty, error_dir=errors).startswith("rank 1: torch.OutOfMemoryError")
    # A resumed job launches again: only the latest launch's files count
    time.sleep(0.01)
    newer = error_file(errors, 0, "ValueError: bad row", 1_700_000_100, run="none_def")
    os.utime(newer.parents[2], None)
    assert logs.failure(empty, error_dir=errors) == "rank 0: ValueError: bad row"


def test_a_trainers_own_stop_names_no_rank(tmp_path):
    """Every rank stops on a non-finite loss: the reason is the job's, said plainly."""
    log = rank_log(tmp_path,
                   "[rank0]: Traceback (most recent call last):",
                   "[rank0]: tlab_gradio.trainers.common.NonFiniteTrainingError: grad norm became NaN at step 1; try",
                   rank=0)
    assert logs.failure(log) == "grad norm became NaN at step 1; try"


def test_a_resumed_jobs_reason_is_its_last_attempts_not_an_earlier_ones(tmp_path):
    """The log and the error folder hold every attempt: an attempt that failed with nothing to say must not be
    given the first attempt's error."""
    log = rank_log(tmp_path, "[tlab] job 3 attempt 1: accelerate launch",  # what the app writes (attempt_line)
                   "[rank1]: Traceback (most recent call last):", "[rank1]: torch.OutOfMemoryError: CUDA out of memory.")
    with log.open("a") as out:
        out.write("[tlab] job 3 attempt 2: accelerate launch\nKilled\n")
    assert logs.failure(log) is None
    errors = tmp_path / "torchelastic"
    old = error_file(errors, 1, "torch.OutOfMemoryError: CUDA out of memory.", 1_700_000_001)
    os.utime(old.parents[2], (1_700_000_001, 1_700_000_001))
    assert logs.failure(log, error_dir=errors, since=1_700_000_050) is None
    assert logs.failure(log, error_dir=errors, since=1_700_000_000).startswith("rank 1: torch.OutOfMemoryError")
    assert logs.attempt_line(3, 2, ["accelerate", "launch"]) == "[tlab] job 3 attempt 2: accelerate launch\n"
