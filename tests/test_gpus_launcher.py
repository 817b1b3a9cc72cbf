import shlex

import pytest
import yaml

from tlab_gradio import gpus, launcher
from tlab_gradio.job_spec import Launch


def fake_gpus(n, cc=(9, 0), physical=None):
    physical = physical or [str(i) for i in range(n)]
    return [gpus.GPU(i, physical[i], "H100", 81559, 0, 0, 30, cc) for i in range(n)]


FOUR = fake_gpus(4)


def test_auto_means_every_visible_gpu():
    assert [g.index for g in gpus.parse_gpu_ids("auto", FOUR)] == [0, 1, 2, 3]
    assert [g.index for g in gpus.parse_gpu_ids(None, FOUR)] == [0, 1, 2, 3]  # not given
    with pytest.raises(gpus.DeviceError, match="gpu_ids is empty: write `auto`"):
        gpus.parse_gpu_ids("", FOUR)  # a cleared box is no choice (issue 17: it ran on every GPU)


def test_a_subset_is_exactly_that_subset_in_order():
    assert [g.index for g in gpus.parse_gpu_ids(" 2, 0 ", FOUR)] == [2, 0]


@pytest.mark.parametrize("text, message", [
    ("0,0", "GPU 0 is listed twice"),
    ("-1", "-1 is negative"),
    ("a", "'a' is not a GPU number"),
    ("1.5", "'1.5' is not a GPU number"),
    ("0,,1", "empty entry"),
    ("4", "GPU 4 does not exist (GPUs on this machine: 0, 1, 2, 3)"),
])
def test_bad_gpu_ids_name_the_bad_value(text, message):
    with pytest.raises(gpus.DeviceError) as info:
        gpus.parse_gpu_ids(text, FOUR)
    assert message in str(info.value)
    assert repr(text) in str(info.value)


def test_cuda_without_gpus_is_refused():
    with pytest.raises(gpus.DeviceError, match="device `cuda`: this machine has no CUDA GPU"):
        gpus.resolve("cuda", "auto", None, [])
    with pytest.raises(gpus.DeviceError, match="GPU 0 does not exist"):
        gpus.parse_gpu_ids("0", [])
    with pytest.raises(gpus.DeviceError, match="'tpu': must be"):
        gpus.resolve("tpu", None, None, FOUR)


def test_cpu_processes():
    assert gpus.resolve("cpu", "0,1", 2, FOUR) == gpus.Placement("cpu", (), 2)
    with pytest.raises(gpus.DeviceError, match="at least 1"):
        gpus.resolve("cpu", None, 0, [])


def test_cuda_visible_devices_filter(monkeypatch):
    entries = [(0, "GPU-aaa"), (1, "GPU-bbb"), (2, "GPU-ccc"), (3, "GPU-ddd")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert gpus._visible_filter(entries) == [(2, "GPU-ccc"), (3, "GPU-ddd")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbb,0")
    assert gpus._visible_filter(entries) == [(1, "GPU-bbb"), (0, "GPU-aaa")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,9,2")  # CUDA stops at the first bad entry
    assert gpus._visible_filter(entries) == [(1, "GPU-bbb")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpus._visible_filter(entries) == []


def test_user_index_maps_to_the_physical_gpu():
    # App started with CUDA_VISIBLE_DEVICES=2,3: the user's GPU 1 is physical GPU 3.
    visible = fake_gpus(2, physical=["2", "3"])
    placement = gpus.resolve("cuda", "1", None, visible)
    assert placement.physical_ids == ["3"] and placement.num_processes == 1
    argv = launcher.build_argv(launch_on(placement), launcher.Path("/j"), 1234)
    assert argv[argv.index("--gpu_ids") + 1] == "3"


def launch_on(placement, mixed_precision="bf16", trainer="t.py"):
    return Launch(trainer=str(trainer), device=placement.device, gpu_ids=placement.physical_ids,
                  num_processes=placement.num_processes, mixed_precision=mixed_precision)


def argv_for(placement, mp="bf16"):
    return launcher.build_argv(launch_on(placement, mp, "/x/sft.py"), launcher.Path("/jobs/7"), 29555)


def test_argv_one_gpu():
    argv = argv_for(gpus.resolve("cuda", "1", None, FOUR))
    assert argv[argv.index("--config_file"):] == [
        "--config_file", "/jobs/7/accelerate.yaml", "--num_processes", "1", "--num_machines", "1",
        "--gpu_ids", "1", "--mixed_precision", "bf16", "--main_process_port", "29555",
        "/x/sft.py", "--job-dir", "/jobs/7"]
    assert "--multi_gpu" not in argv and "--cpu" not in argv


def test_argv_three_gpus_and_auto():
    argv = argv_for(gpus.resolve("cuda", "0,2,3", None, FOUR))
    assert "--multi_gpu" in argv
    assert argv[argv.index("--num_processes") + 1] == "3"
    assert argv[argv.index("--gpu_ids") + 1] == "0,2,3"
    argv = argv_for(gpus.resolve("cuda", "auto", None, FOUR))
    assert argv[argv.index("--num_processes") + 1] == "4"
    assert argv[argv.index("--gpu_ids") + 1] == "0,1,2,3"


def test_argv_cpu_one_and_two_processes():
    one = argv_for(gpus.resolve("cpu", None, 1, []), "no")
    assert "--cpu" in one and "--multi_gpu" not in one and "--gpu_ids" not in one
    assert one[one.index("--num_processes") + 1] == "1"
    two = argv_for(gpus.resolve("cpu", None, 2, []), "no")
    assert "--multi_gpu" in two and "--cpu" not in two and "--gpu_ids" not in two
    assert two[two.index("--num_processes") + 1] == "2"


def test_cpu_launches_say_their_thread_count(monkeypatch):
    """Left to accelerate, the thread count per CPU process is chosen with a warning in every CPU job's log: the
    command passes it (the physical cores over the processes, or the app's OMP_NUM_THREADS)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(launcher.psutil, "cpu_count", lambda logical=True: 8)
    one, two = (argv_for(gpus.resolve("cpu", None, n, []), "no") for n in (1, 2))
    assert one[one.index("--num_cpu_threads_per_process") + 1] == "8"
    assert two[two.index("--num_cpu_threads_per_process") + 1] == "4"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    two = argv_for(gpus.resolve("cpu", None, 2, []), "no")
    assert two[two.index("--num_cpu_threads_per_process") + 1] == "3"
    assert "--num_cpu_threads_per_process" not in argv_for(gpus.resolve("cuda", "0", None, FOUR))


def test_mixed_precision_follows_the_hardware():
    assert launcher.mixed_precision_for(gpus.resolve("cuda", "0", None, FOUR), "auto") == "bf16"
    old = fake_gpus(2, cc=(7, 0))
    assert launcher.mixed_precision_for(gpus.resolve("cuda", "auto", None, old), "auto") == "fp16"
    assert launcher.mixed_precision_for(gpus.resolve("cpu", None, 1, []), "auto") == "no"
    assert launcher.mixed_precision_for(gpus.resolve("cpu", None, 1, []), "bf16") == "bf16"


def test_launch_files_are_accepted_by_accelerate(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    placement = gpus.resolve("cuda", "1,3", None, FOUR)
    argv = launcher.write_launch_files(tmp_path, launch_on(placement, trainer=tmp_path / "sft.py"))
    cfg = yaml.safe_load((tmp_path / "accelerate.yaml").read_text())
    assert cfg["distributed_type"] == "MULTI_GPU" and cfg["num_processes"] == 2 and cfg["gpu_ids"] == "1,3"
    assert cfg["mixed_precision"] == "bf16" and cfg["use_cpu"] is False
    assert str(cfg["main_process_port"]) == argv[argv.index("--main_process_port") + 1]
    loaded = load_config_from_file(str(tmp_path / "accelerate.yaml"))
    assert loaded.num_processes == 2 and loaded.gpu_ids == "1,3"
    assert shlex.split((tmp_path / "command.txt").read_text()) == argv


def test_free_ports_differ():
    assert len({launcher.free_port() for _ in range(5)}) > 1


def test_gpu_ids_are_checked_on_a_machine_without_gpus_too():
    with pytest.raises(gpus.DeviceError, match="GPU 0 is listed twice"):
        gpus.resolve("cuda", "0,0", None, [])
    with pytest.raises(gpus.DeviceError, match=r"GPU 7 does not exist \(GPUs on this machine: none\)"):
        gpus.resolve("cuda", "7", None, [])
    with pytest.raises(gpus.DeviceError, match="'abc' is not a GPU number"):
        gpus.resolve("cpu", "abc", 1, [])  # never valid, whatever the device
