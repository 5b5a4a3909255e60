"""A sweep as two processes on this machine (jax.distributed over 127.0.0.1), against one.

Every process is started in its own session and killed (by process group) when its
test ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import EXIT_USAGE, SCRIPTS, assert_one_line_error, assert_usage_error, call

from jax_iris.cli import sweep as sweep_cli
from jax_iris.cli.distributed import CONNECT_SLACK_S, EXIT_LOST, LOST_SLACK_S
from jax_iris.distributed import HEARTBEAT_TIMEOUT_S, ClusterEnv, detect_cluster
from jax_iris.io.store import STORE_DIR

PROG = "sweep.py"
# A 2 x 1 grid of 6 seeds: 12 nets, 3 on each of the 4 devices of two processes.
SWEEP = ["--arch", "atten", "--seeds", 6, "--lr", 0.005, 0.01, "--epochs", 20, "--host-devices", 2]
# Long enough that neither process finishes before the other is killed.
LONG_SWEEP = ["--arch", "atten", "--seeds", 400, "--epochs", 5000, "--host-devices", 2]
RUN_TIMEOUT = 300  # seconds for one sweep process; generous, the 2 cores may be shared
LOST_BOUND = HEARTBEAT_TIMEOUT_S + LOST_SLACK_S  # what --help promises after a process dies


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cluster_flags(port: int, process_id: int, count: int = 2) -> list[object]:
    return [
        "--coordinator",
        f"127.0.0.1:{port}",
        "--num-processes",
        count,
        "--process-id",
        process_id,
    ]


def child_env(tmp_path: Path) -> dict[str, str]:
    """CPU, 2 host devices, no compilation cache, no launcher or proxy variables, logs in tmp."""
    launcher = ("SLURM_", "OMPI_", "PMI")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(launcher) and not k.lower().endswith("_proxy")  # 127.0.0.1 only
    }
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_IRIS_CACHE_DIR="",
        TMPDIR=str(tmp_path),
        PYTHONUNBUFFERED="1",
    )
    return env


class Sweep:
    """``scripts/sweep.py ARGS`` in its own session, output to files under ``folder``."""

    def __init__(self, args: list[object], folder: Path, name: str) -> None:
        self.stdout_path = folder / f"{name}.stdout"
        self.stderr_path = folder / f"{name}.stderr"
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, SCRIPTS / "sweep.py", *map(str, args)],
                cwd=folder,
                env=child_env(folder),
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    @property
    def out(self) -> str:
        return self.stdout_path.read_text()

    @property
    def err(self) -> str:
        return self.stderr_path.read_text()

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)

    def wait_for(self, text: str, timeout: float = RUN_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.out:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.err}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout} s"
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the whole session (the command and the child it forked)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def sweeps():
    """Start sweeps with ``sweeps(args, folder, name)``; all are killed at the end."""
    started: list[Sweep] = []

    def start(args: list[object], folder: Path, name: str) -> Sweep:
        started.append(Sweep(args, folder, name))
        return started[-1]

    yield start
    for sweep in started:
        sweep.kill()


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.mark.subprocess
@pytest.mark.slow
def test_two_processes_give_the_csv_of_one(tmp_path, sweeps):
    one = sweeps([*SWEEP, "--out", "one"], tmp_path, "one")
    assert one.wait() == 0, one.err
    port = free_port()
    procs = [
        sweeps([*SWEEP, "--out", f"out{i}", *cluster_flags(port, i)], tmp_path, f"p{i}")
        for i in range(2)
    ]
    codes = [p.wait() for p in procs]
    assert codes == [0, 0], [p.err for p in procs]
    assert [p.err for p in procs] == ["", ""]
    assert "devices: 4 x cpu" in procs[0].out and "wrote " in procs[0].out

    expected, got = read_csv(tmp_path / "one" / "sweep.csv"), read_csv(tmp_path / "out0/sweep.csv")
    assert len(got) == len(expected) == 12
    assert got == expected  # bit for bit: every net is the same group program
    assert sorted(p.name for p in (tmp_path / "out0").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )

    # Process 1 trained its half, wrote nothing, and said where the results went, once.
    assert not (tmp_path / "out1").exists()
    told = [line for line in procs[1].out.splitlines() if "process 0 writes" in line]
    assert told == [
        f"process 1 of 2: done; process 0 writes the results to {socket.gethostname()}:"
        f"{(tmp_path / 'out0').resolve()}"
    ]
    assert "wrote " not in procs[1].out


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize(
    ("victim", "how"),
    [(1, signal.SIGKILL), (0, signal.SIGKILL), (0, signal.SIGTERM)],
    ids=["kill-1", "kill-0", "term-0"],
)
def test_a_dying_process_stops_the_other(tmp_path, sweeps, victim, how):
    port = free_port()
    procs = [
        sweeps([*LONG_SWEEP, "--out", f"out{i}", *cluster_flags(port, i)], tmp_path, f"p{i}")
        for i in range(2)
    ]
    for p in procs:
        p.wait_for("devices: 4 x cpu")  # both joined and started the sweep
    time.sleep(2)
    survivor = procs[1 - victim]
    killed_at = time.monotonic()
    procs[victim].proc.send_signal(how)  # the command only: its child must follow
    code = survivor.wait(timeout=LOST_BOUND + 30)
    took = time.monotonic() - killed_at

    assert code == EXIT_LOST, survivor.err
    assert took <= LOST_BOUND, f"{took:.1f} s"
    assert_one_line_error(survivor.err, f"{PROG}: error: process {1 - victim} of 2 ")
    # the runtime's heartbeat ends it, or a gather that was under way fails first
    assert "stopped: another process died" in survivor.err or (
        "lost contact with another process" in survivor.err
    ), survivor.err
    assert "no outputs were written; finished chunks are kept" in survivor.err
    if how == signal.SIGTERM:  # the victim could still speak: one line too
        assert procs[victim].wait() == 128 + signal.SIGTERM
        assert_one_line_error(procs[victim].err, "stopped by SIGTERM", "run the same command")
    # Process 0 may have stored finished chunks; no process wrote an output.
    kept = [p.name for p in (tmp_path / "out0").iterdir()] if (tmp_path / "out0").exists() else []
    assert kept in ([], [STORE_DIR]) and not (tmp_path / "out1").exists()
    assert "wrote " not in survivor.out


@pytest.mark.subprocess
@pytest.mark.slow
def test_unreachable_coordinator_is_one_line_before_training(tmp_path, sweeps):
    timeout = 2
    port = free_port()  # nobody listens there
    lone = sweeps(
        [*SWEEP, "--out", "out", *cluster_flags(port, 1), "--connect-timeout", timeout],
        tmp_path,
        "lone",
    )
    started = time.monotonic()
    code = lone.wait(timeout=timeout + CONNECT_SLACK_S + 30)
    took = time.monotonic() - started

    assert code == EXIT_USAGE
    assert_one_line_error(
        lone.err, f"{PROG}: error: cannot reach the coordinator at 127.0.0.1:{port}"
    )
    assert took <= timeout + CONNECT_SLACK_S, f"{took:.1f} s"
    assert "devices:" not in lone.out  # it stopped before training
    assert not (tmp_path / "out").exists()


COORDINATOR = ["--coordinator", "127.0.0.1:5000"]  # never reached: the flags are refused first


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        ([*COORDINATOR, "--num-processes", 2, "--process-id", 2], ["--process-id", "0 to 1"]),
        ([*COORDINATOR, "--num-processes", 2, "--process-id", -1], ["--process-id", "got -1"]),
        ([*COORDINATOR, "--num-processes", 0, "--process-id", 0], ["--num-processes", "got 0"]),
        (["--num-processes", 2], ["--coordinator", "--process-id", "together"]),
        ([*COORDINATOR, "--process-id", 0], ["--num-processes", "together"]),
        (["--connect-timeout", 0], ["--connect-timeout", "got 0"]),
    ],
)
def test_bad_process_flags_are_one_line(tmp_path, capsys, flags, needles):
    argv = [*SWEEP, "--out", tmp_path / "out", *flags]
    assert_usage_error(call(sweep_cli.main, argv, capsys), PROG, *needles)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", ":5000"])
def test_malformed_coordinator_is_one_line(tmp_path, capsys, address):
    argv = [*SWEEP, "--out", tmp_path / "out", "--coordinator", address]
    argv += ["--num-processes", 2, "--process-id", 1]
    assert_usage_error(call(sweep_cli.main, argv, capsys), PROG, "--coordinator", "HOST:PORT")


def test_busy_coordinator_port_is_one_line(tmp_path, capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = [*SWEEP, "--out", tmp_path / "out", *cluster_flags(port, 0)]
        outcome = call(sweep_cli.main, argv, capsys)
    assert_usage_error(outcome, PROG, f"port {port}", "--coordinator")


@pytest.mark.parametrize(
    ("name", "version", "refused"),
    [
        ("jax", "0.8.1", True),
        ("jaxlib", "0.7.2", True),
        ("jax", "0.8.2", False),
        ("jaxlib", "0.10.2", False),
        ("jax", "0.10.0.dev20260101", False),
    ],
)
def test_several_processes_need_jax_0_8_2(tmp_path, capsys, monkeypatch, name, version, refused):
    # jax 0.8.1, the floor otherwise, cannot run one: a line naming what to install, before
    # anything starts (a single process needs no such version).
    from jax_iris import distributed

    versions = {"jax": "0.10.2", "jaxlib": "0.10.2", name: version}  # the other one new
    monkeypatch.setattr(distributed.metadata, "version", versions.__getitem__)
    argv = [*SWEEP, "--out", tmp_path / "out", *cluster_flags(free_port(), 1)]
    argv += ["--connect-timeout", 1]
    if refused:
        needles = ["several processes", f"this is {name} {version}", "pip install 'jax>=0.8.2'"]
        assert_usage_error(call(sweep_cli.main, argv, capsys), PROG, *needles)
        assert not (tmp_path / "out").exists()
    else:
        distributed.check_jax_version()  # nothing raised


def test_launchers_are_detected_as_jax_detects_them():
    slurm = {
        "SLURM_JOB_ID": "7",
        "SLURM_STEP_NODELIST": "node[1-2]",
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "0",
    }
    assert detect_cluster(slurm) == ClusterEnv("SLURM", 2, 1)
    assert detect_cluster({k: v for k, v in slurm.items() if k != "SLURM_LOCALID"}) is None
    ompi = {
        "OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1",
        "OMPI_COMM_WORLD_SIZE": "4",
        "OMPI_COMM_WORLD_RANK": "3",
    }
    assert detect_cluster(ompi) == ClusterEnv("Open MPI", 4, 3)
    assert detect_cluster({}) is None


def test_one_task_under_slurm_runs_as_one_process(monkeypatch):
    from jax_iris.cli.distributed import check_distributed_args

    for name, value in [
        ("SLURM_JOB_ID", "7"),
        ("SLURM_STEP_NODELIST", "node1"),
        ("SLURM_NTASKS", "1"),
        ("SLURM_PROCID", "0"),
        ("SLURM_LOCALID", "0"),
    ]:
        monkeypatch.setenv(name, value)
    args = sweep_cli.parser().parse_args([])
    assert check_distributed_args(args) is None
    monkeypatch.setenv("SLURM_NTASKS", "3")
    monkeypatch.setenv("SLURM_PROCID", "2")
    plan = check_distributed_args(args)
    assert (plan.coordinator, plan.num_processes, plan.process_id) == (None, 3, 2)


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "flag"), [(["--lr", 0.5, 0.01], "--lr"), (["--epochs", 21], "--epochs")]
)
def test_processes_given_different_sweeps_refuse_before_training(tmp_path, sweeps, change, flag):
    """Process 1 given another --lr list (or --epochs): both stop in one line, exit 2,
    before training, and nothing is written."""
    port = free_port()
    args = [[*SWEEP, "--out", "out", *cluster_flags(port, 0)]]
    args.append([*SWEEP, *change, "--out", "out1", *cluster_flags(port, 1)])
    procs = [sweeps(a, tmp_path, f"p{i}") for i, a in enumerate(args)]
    codes = [p.wait() for p in procs]
    assert codes == [EXIT_USAGE, EXIT_USAGE], [p.err for p in procs]
    assert_one_line_error(procs[1].err, "given different sweeps", flag, "same flags")
    assert_one_line_error(procs[0].err, "given different sweeps", "process 1 differs")
    assert "nets x" not in procs[0].out + procs[1].out  # nothing trained
    assert not (tmp_path / "out1").exists()
    assert not list((tmp_path / "out").glob(f"{STORE_DIR}/*/*/*.chunk"))
