"""Issue 21: jobs handed to a real Slurm cluster (Debian's slurm-wlm), not a mock.

The `cluster` fixture installs slurm-wlm and munge when missing (as root, with apt-get, like the chromium fixture)
and starts munged (unless one answers), slurmctld and two slurmd (n1, n2), each in a network namespace of its own
on a bridge the fixture makes (both on loopback where namespaces cannot be made), from the repo's
tests/slurm/slurm.conf.in, on free ports, in a scratch folder; afterwards it cancels every job of that cluster and
ends the processes it started (and the slurmstepd they left), nothing else. Real CPU SFT jobs on the embedded
model run through sbatch/srun: states from squeue/sacct, Stop as scancel, a failing trainer, an app restart.
"""
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

import standins
from test_app import start_app

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "tests" / "slurm" / "slurm.conf.in"
SFT = "llama_sft_multi_gpu"
TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _install() -> None:
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Slurm (slurm-wlm, munge) is not installed and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"], check=True,
                   stdout=subprocess.DEVNULL, env=env)


def _started_by(conf: Path) -> list[psutil.Process]:
    """Processes of this test cluster: those whose environment names its configuration (slurmd's slurmstepd and
    the jobs' processes inherit it)."""
    found, mark = [], f"SLURM_CONF={conf}\0".encode()
    for proc in psutil.process_iter():
        try:  # the raw bytes: slurmstepd writes its title over its environment's start, which psutil then misreads
            if proc.pid != os.getpid() and mark in Path(f"/proc/{proc.pid}/environ").read_bytes():
                found.append(proc)
        except (psutil.Error, OSError):
            pass
    return found


class Namespaces:
    """Two network namespaces on a bridge of their own, one per slurmd: each node's address exists only inside its
    namespace (and on the bridge), so a job over both nodes crosses a network, as on two machines. Named after this
    process, removed afterwards; None where they cannot be made (no root, no CAP_NET_ADMIN, no `ip`)."""

    def __init__(self):
        tag = os.getpid() % 100000
        self.subnet = f"10.{200 + tag % 50}.{tag // 50 % 250}"
        self.bridge, self.names = f"tlb{tag}", [f"tlab{tag}n1", f"tlab{tag}n2"]
        self.host_ends = [f"tv{tag}h1", f"tv{tag}h2"]
        self.addrs = [f"{self.subnet}.2", f"{self.subnet}.3"]

    def ip(self, *args, ns=None):
        argv = ["ip", *args] if ns is None else ["nsenter", f"--net=/run/netns/{ns}", "ip", *args]
        subprocess.run(argv, check=True, capture_output=True, text=True)

    def enter(self, i):
        """The argv prefix that runs a command in node i's namespace (nsenter: `ip netns exec` remounts /sys,
        which slurmd then cannot read)."""
        return ["nsenter", f"--net=/run/netns/{self.names[i]}"]

    def create(self):
        self.ip("link", "add", self.bridge, "type", "bridge")
        self.ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        self.ip("link", "set", self.bridge, "up")
        for name, host_end, addr in zip(self.names, self.host_ends, self.addrs):
            self.ip("netns", "add", name)
            self.ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", name)
            self.ip("link", "set", host_end, "master", self.bridge)
            self.ip("link", "set", host_end, "up")
            self.ip("addr", "add", f"{addr}/24", "dev", "eth0", ns=name)
            self.ip("link", "set", "eth0", "up", ns=name)
            self.ip("link", "set", "lo", "up", ns=name)
        return self

    def remove(self):
        for args in [("link", "del", h) for h in self.host_ends] + [("link", "del", self.bridge)] + \
                [("netns", "del", n) for n in self.names]:
            subprocess.run(["ip", *args], capture_output=True)

    @classmethod
    def make(cls):
        if not shutil.which("ip") or not shutil.which("nsenter"):
            return None
        made = cls()
        try:
            return made.create()
        except subprocess.CalledProcessError as exc:
            made.remove()
            print(f"network namespaces cannot be made here ({exc.stderr.strip()}): both slurmd on loopback")
            return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the test cluster's slurmd runs as root (SlurmUser=root) and this is not root")
    _install()
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool/n1", "spool/n2", "log"):
        (d / sub).mkdir(parents=True)
    conf = d / "slurm.conf"
    text = CONF.read_text()
    nets = Namespaces.make()
    host = socket.gethostname()
    for key, value in {"@DIR@": str(d), "@HOST@": host, "@CTLD_PORT@": str(_free_port()),
                       "@CTLD_HOST@": f"{host}({nets.subnet}.1)" if nets else host,
                       "@ADDR1@": nets.addrs[0] if nets else "127.0.0.1",
                       "@ADDR2@": nets.addrs[1] if nets else "127.0.0.1",
                       "@PORT1@": str(_free_port()), "@PORT2@": str(_free_port())}.items():
        text = text.replace(key, value)
    conf.write_text(text)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[subprocess.Popen] = []
    try:
        yield from _up(d, conf, env, nets, started)
    finally:
        subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True)  # this cluster's jobs
        time.sleep(1)
        for proc in reversed(started):
            proc.terminate()
        for proc in started:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        deadline = time.monotonic() + 10
        while (left := _started_by(conf)) and time.monotonic() < deadline:  # a slurmstepd (or a job's process)
            for proc in left:  # its slurmd left, found again until none is (one may be forking as it is ended)
                proc.kill()
            time.sleep(0.2)
        if nets:
            nets.remove()


def _up(d, conf, env, nets, started):
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    if not Path("/etc/munge/munge.key").is_file() or not Path("/etc/munge/munge.key").stat().st_size:
        subprocess.run(["mungekey", "--create"], check=True)
    if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
        started.append(subprocess.Popen(["/usr/sbin/munged", "--foreground"], user="munge", group="munge",
                                        stdout=open(d / "log" / "munged.out", "w"), stderr=subprocess.STDOUT))
        for _ in range(50):
            if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)  # the app (and the apps the tests start) find the cluster by it
    try:
        daemons = {"slurmctld": ["slurmctld", "-D", "-f", str(conf)]}
        for i, n in enumerate(("n1", "n2")):
            daemons[f"slurmd-{n}"] = (nets.enter(i) if nets else []) + ["slurmd", "-D", "-N", n, "-f", str(conf)]
        for name, argv in daemons.items():
            started.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                                            stdout=open(d / "log" / f"{name}.out", "w"), stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 30
        while True:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
            if set(out.stdout.split()) == {"idle"}:
                break
            if time.monotonic() > deadline:
                logs = "\n".join(p.read_text()[-2000:] for p in (d / "log").glob("*") if p.is_file())
                pytest.fail(f"the test cluster did not come up: {out.stdout} {out.stderr}\n{logs}")
            time.sleep(0.3)
        yield conf, nets
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


@pytest.fixture
def slurm_env(cluster, home, monkeypatch):
    monkeypatch.setenv("TLAB_SLURM", "1")
    monkeypatch.setenv("TLAB_SLURM_ACCOUNT", "")
    if cluster[1]:  # the nodes' host name resolves to no address of theirs: gloo is told their interface (README)
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth0")
    return cluster


def sft(steps, **params):
    return {"plugin": SFT, "name": "slurm-run",
            "params": {"device": "cpu", "cpu_processes": 2, "max_steps": steps, "logging_steps": 1,
                       "save_steps": 1000, "run_on": "slurm:debug", **params}}


def no_process_left(job_dir: Path) -> list:
    return standins.left_of(job_dir)


def test_run_on_is_offered_only_with_slurm_and_names_the_partitions(cluster, home, monkeypatch):
    from tlab_gradio.service import RequestError, Service

    monkeypatch.setenv("TLAB_SLURM", "0")
    assert "run_on" not in str(Service().plugin_form(SFT))
    with pytest.raises(RequestError) as info:
        Service().start_job(sft(2))
    assert any("run_on" in p for p in info.value.problems), info.value.problems
    monkeypatch.setenv("TLAB_SLURM", "1")
    svc = Service()
    sft_plugin = svc.plugin_form(SFT)
    assert "'run_on'" in str(sft_plugin) and "slurm:debug" in str(sft_plugin), sft_plugin
    checked = svc.launch_preview(sft(2, slurm_nodes=2, slurm_time_limit="0:10:00"))
    assert "#SBATCH --nodes=2" in checked["command"] and "#SBATCH --time=0:10:00" in checked["command"]
    assert "srun" in checked["command"] and '--machine_rank "$SLURM_NODEID"' in checked["command"]
    with pytest.raises(RequestError) as info:
        svc.start_job(sft(2, slurm_time_limit="ten minutes"))
    assert any("slurm_time_limit" in p for p in info.value.problems), info.value.problems
    with pytest.raises(RequestError) as info:
        svc.start_job(sft(2, num_machines=2))
    assert any("set Slurm Nodes instead of num_machines" in p for p in info.value.problems), info.value.problems
    # More nodes than the cluster has: it pends (forever), QUEUED with Slurm's reason; Stop takes it off Slurm's queue
    pending = svc.start_job(sft(2, slurm_nodes=3))
    waiting = svc.jobs.wait(pending["id"], 30, until=lambda j: (j.reason or "").startswith("Slurm job"))
    assert waiting.state == "QUEUED" and waiting.reason.startswith(f"Slurm job {waiting.slurm_id}: PENDING ("), waiting
    svc.jobs.close()  # the app restarted while its job pends: the new one watches it again, still QUEUED
    svc = Service()
    time.sleep(2)
    again = svc.jobs.get(pending["id"])
    assert (again.state, again.slurm_id, again.reason) == ("QUEUED", waiting.slurm_id, waiting.reason), again
    assert svc.stop_job(pending["id"])["state"] == "STOPPING"
    stopped = svc.jobs.wait(pending["id"], 30)
    assert (stopped.state, stopped.reason) == ("STOPPED", "stopped by the user before its first step"), stopped
    # GPUs from a cluster that has none (this app's machine has none either: the GPUs asked for are Slurm's):
    # sbatch refuses, and the job is FAILED at once with sbatch's words
    request = sft(2, device="cuda", slurm_gpus_per_node=2)
    del request["params"]["cpu_processes"]
    refused = svc.jobs.wait(svc.start_job(request)["id"], 30)
    assert refused.state == "FAILED" and refused.slurm_id is None, refused
    assert refused.reason.startswith("could not hand it to Slurm: sbatch refused the job: sbatch: error: "), refused
    assert "Invalid generic resource (gres) specification" in refused.reason, refused.reason
    assert "#SBATCH --gpus-per-node=2" in (refused.job_dir / "slurm.sbatch").read_text()
    monkeypatch.setenv("TLAB_HOSTED", "1")
    with pytest.raises(RequestError) as info:
        Service().start_job(sft(2), owner="visitor-1")
    assert "`run_on`: Slurm is turned off on this server (hosted mode)" in info.value.problems


def test_a_job_stopped_on_slurm_ends_stopped_with_no_process_left(slurm_env, tmp_path, monkeypatch):
    from tlab_gradio.service import Service

    monkeypatch.setenv("TLAB_SLURM_WORKSPACE", str(tmp_path / "shared"))  # the nodes' shared folder
    svc = Service()
    job = svc.start_job(sft(400))
    assert job["state"] == "QUEUED"
    assert Path(svc.jobs.get(job["id"]).job_dir) == (tmp_path / "shared" / "jobs" / str(job["id"])).resolve()
    running = svc.jobs.wait(job["id"], TIMEOUT, until=lambda j: j.state != "QUEUED" and (
        j.state != "RUNNING" or svc.job_status(j.id)["step"] >= 1))
    assert running.state == "RUNNING", svc.job_log(job["id"], 40)
    assert running.slurm_id and svc.job_status(job["id"])["slurm_job_id"] == running.slurm_id
    row = svc.job_row(job["id"])
    assert row["runs_on"] == "slurm" and row["slurm_job_id"] == running.slurm_id
    assert job["id"] not in [j["id"] for j in svc.machine_usage()["jobs"]]  # not this machine's processes
    details = svc.job_details(job["id"])
    assert f"# Slurm job {running.slurm_id}" in details["command"] and "srun" in details["command"]
    assert f"--output={running.job_dir}/log.txt" in details["command"], details["command"]
    stopping = svc.stop_job(job["id"])
    assert stopping["state"] == "STOPPING"
    done = svc.jobs.wait(job["id"], 60)
    assert done.state == "STOPPED", (done.state, done.reason)
    assert done.reason.startswith("stopped by the user at step")
    deadline = time.monotonic() + 15
    while no_process_left(done.job_dir) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert no_process_left(done.job_dir) == []
    out = subprocess.run(["sacct", "-c", "-n", "-X", "-P", "-j", running.slurm_id, "-o", "State"],
                         capture_output=True, text=True)
    assert out.stdout.split()[0].startswith("CANCELLED"), out.stdout


def test_many_watchers_share_one_squeue_a_second(cluster, tmp_path, monkeypatch):
    """Every Slurm job has a watcher thread asking for its state each second; squeue is run once for all of them
    (Slurm's manual: squeue in a loop loads slurmctld). Three real jobs, asked about by 12 threads for 3 s: their
    states right, at most about one squeue a second, each naming every watched job; and sacct's end states after
    a scancel."""
    from tlab_gradio import slurm

    queue = slurm.Queue(every=1.0)
    monkeypatch.setattr(slurm, "QUEUE", queue)
    calls, real_run = [], slurm._run
    monkeypatch.setattr(slurm, "_run", lambda argv, env=None: calls.append(argv) or real_run(argv, env))
    ids = [subprocess.run(["sbatch", "--parsable", "--chdir", str(tmp_path), "--wrap", "sleep 120", *extra],
                          capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
           for extra in ([], [], ["--begin", "now+1hour"])]  # two run, the third waits for its start time
    asked, seen = [0], {}

    def watch(job_id):
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            seen[job_id] = slurm.state(job_id)
            asked[0] += 1
            time.sleep(0.02)

    deadline = time.monotonic() + 30  # both sleeps started
    while [slurm.state(i).ours if slurm.state(i) else None for i in ids[:2]] != ["RUNNING"] * 2:
        assert time.monotonic() < deadline, [slurm.state(i) for i in ids]
        time.sleep(0.3)
    calls.clear()
    threads = [threading.Thread(target=watch, args=(ids[i % 3],)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    squeues = [c for c in calls if c[0] == "squeue"]
    assert asked[0] > 100 and 1 <= len(squeues) <= 5, (asked[0], len(squeues))  # ~3 reads in 3 s
    assert all(set(c[c.index("-j") + 1].split(",")) == set(ids) for c in squeues), squeues
    assert not [c for c in calls if c[0] == "sacct"]  # all three listed by squeue
    assert [seen[i].ours for i in ids] == ["RUNNING", "RUNNING", "QUEUED"], seen
    assert seen[ids[2]].reason == "BeginTime", seen[ids[2]]
    subprocess.run(["scancel", *ids], check=True)
    deadline = time.monotonic() + 30
    while any((s := slurm.state(i)) is None or not s.finished for i in ids):
        assert time.monotonic() < deadline, [slurm.state(i) for i in ids]
        time.sleep(0.5)
    assert [slurm.state(i).ours for i in ids] == ["STOPPED"] * 3


def test_a_failing_trainer_on_slurm_ends_failed_with_its_error(slurm_env, tiny_model_dir, tmp_path):
    from tlab_gradio.service import Service

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"this is not a safetensors file")
    svc = Service()
    job = svc.start_job({**sft(2), "model": str(broken)})
    failed = svc.jobs.wait(job["id"], TIMEOUT)
    assert failed.state == "FAILED", (failed.state, failed.reason)
    assert "safetensors" in failed.reason.lower(), failed.reason
    assert failed.reason.endswith("[Slurm: FAILED, exit code 1:0]"), failed.reason
    assert failed.exit_code == 1
    assert no_process_left(failed.job_dir) == []


def test_through_the_api_two_nodes_queued_running_complete_across_an_app_restart(slurm_env, tmp_path):
    """A 2-process job, one process on each of the cluster's two nodes (two slurmd in network namespaces of their
    own, else on loopback), through /start_job on the real app; the app is restarted while the job runs and watches
    it again to its end."""
    _, nets = slurm_env
    from gradio_client import Client

    from test_app import wait_state

    proc, url = start_app({}, tmp_path)
    try:
        client = Client(url, verbose=False)
        job = client.predict(sft(8, cpu_processes=1, slurm_nodes=2), api_name="/start_job")
        assert job["state"] == "QUEUED"
        running = wait_state(client, job["job_id"], ("RUNNING", "COMPLETE", "FAILED"), TIMEOUT)
        assert running["state"] == "RUNNING" and running["slurm_job_id"], running
        proc.terminate()  # mid-job: the job is Slurm's, it runs on
        proc.wait(30)
        squeue = subprocess.run(["squeue", "-h", "-j", running["slurm_job_id"], "-o", "%T"],
                                capture_output=True, text=True)
        assert squeue.stdout.strip() in ("RUNNING", "COMPLETING", ""), squeue
        proc, url = start_app({}, tmp_path)
        client = Client(url, verbose=False)
        status = wait_state(client, job["job_id"], ("COMPLETE", "FAILED", "STOPPED"), TIMEOUT)
        assert status["state"] == "COMPLETE", (status, client.predict(job["job_id"], 60, api_name="/job_log"))
        assert status["slurm_job_id"] == running["slurm_job_id"]
        assert status["step"] == status["total_steps"] == 8 and status["world_size"] == 2
        assert status["last_metrics"] and status["exit_code"] == 0
        log = (Path(os.environ["TLAB_HOME"]) / "jobs" / str(job["job_id"]) / "log.txt").read_text()
        assert "node 0 of 2 on" in log and "node 1 of 2 on" in log, log
        # the main process at node n1's address: with namespaces, one that exists only inside n1's namespace
        assert f"main {nets.addrs[0] if nets else '127.0.0.1'}:" in log, log
        out = subprocess.run(["sacct", "-c", "-n", "-X", "-P", "-j", status["slurm_job_id"], "-o",
                              "NodeList,State"], capture_output=True, text=True)
        assert out.stdout.split() == ["n[1-2]|COMPLETED"], out.stdout
    finally:
        proc.terminate()
        proc.wait(30)
