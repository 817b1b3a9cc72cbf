"""Issue 17, item 6 (ranks): a failed job's reason names the failing rank and its cause, from torchelastic's
per-rank error files first and the log's `[rankN]:` lines after; a killed rank and a lost traceback no longer
end as a bare "exited with code 1".

Attacks on a real two-rank `accelerate launch` (tests/fake_trainer.py): a rank killed by SIGKILL, and a rank
whose traceback never reaches the log (its output lost, as on a full disk) raising ENOSPC.
"""
import json

import standins
from tlab_gradio import logs
from test_job_processes import TIMEOUT, real_spec

RANK_ERRORS = "torchelastic"  # jobfiles.RANK_ERRORS: the agent's log folder in the job folder


def test_a_rank_killed_by_sigkill_is_named_with_the_signal(real_manager):
    job = real_manager.wait(real_manager.create(real_spec("killed")).id, TIMEOUT)
    assert job.state == "FAILED", "\n".join(real_manager.log_tail(job.id, 60))
    assert job.reason == "rank 1: killed by SIGKILL (out of memory?) [exited with code 1]"
    assert standins.left_of(job.job_dir) == []


def test_a_ranks_error_file_names_it_when_its_traceback_never_reached_the_log(real_manager):
    job = real_manager.wait(real_manager.create(real_spec("raises")).id, TIMEOUT)
    log = "\n".join(real_manager.log_tail(job.id, 80))
    assert job.state == "FAILED", log
    assert "[rank1]" not in log and "\nOSError" not in log  # the rank's own traceback never reached the log
    assert job.reason == ("rank 1: OSError: [Errno 28] No space left on device (the disk is full: delete old jobs' "
                          "checkpoints, or lower Checkpoints Kept) [exited with code 1]"), job.reason
    # The error file itself, the trainer's (common.record_errors), in the job folder; read first, so the reason
    # holds with the log gone too
    files = list((job.job_dir / RANK_ERRORS).glob("*/attempt_0/1/error.json"))
    assert len(files) == 1 and "No space left on device" in json.loads(files[0].read_text())["message"]["message"]
    job.log_path.write_text("")
    assert logs.failure(job.log_path, error_dir=job.job_dir / RANK_ERRORS).startswith(
        "rank 1: OSError: [Errno 28] No space left on device")
