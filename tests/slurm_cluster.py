"""A real one-machine SLURM cluster for the tests: munged, slurmctld and slurmd started as root
with a slurm.conf that names this host as controller and as the one compute node.

Everything lives in a temp dir (config, munge key and socket, state, spool, pid and log files),
on free ports, so it never touches a system SLURM. `stop()` stops exactly the daemons it started,
by pid. Debian's `slurm-wlm` and `munge` (22.05) provide the binaries; .ci/run installs them.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "squeue")


def missing_binaries() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.processes: list[subprocess.Popen] = []

    @property
    def env(self) -> dict:
        """The environment a client (sbatch, scontrol) needs to talk to this cluster."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def write_config(self) -> None:
        for folder in ("state", "spool", "munge", "log"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=omnitest",
            # JAX derives its coordinator port from the job id: ids unique to this cluster keep
            # a job clear of anything left from another test session.
            f"FirstJobId={1000 + int.from_bytes(os.urandom(2), 'big') % 50000}",
            f"SlurmctldHost={self.host}",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", f"AuthInfo=socket={self.munge_socket}",
            "CredType=cred/munge",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log", f"SlurmdLogFile={r}/log/slurmd.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill", "MpiDefault=none", "ReturnToService=2",
            "JobCompType=jobcomp/none", "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "SchedulerParameters=bf_interval=1,sched_interval=1",
            "MinJobAge=600",  # keep finished jobs visible to scontrol for the tests
            "KillWait=10",
            f"NodeName={self.host} CPUs={os.cpu_count()} RealMemory={memory_mb * 3 // 4} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4",
            "",
        ]))

    def start(self, timeout: float = 60) -> None:
        self.write_config()
        r = self.root
        self._spawn([binary("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                     f"--key-file={r}/munge/munge.key", f"--pid-file={r}/munge/munged.pid",
                     f"--log-file={r}/log/munged.log", f"--seed-file={r}/munge/munged.seed"], "munged")
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged did not create its socket")
        self._spawn([binary("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld")
        self._wait(lambda: self._run("scontrol", "ping").returncode == 0, timeout, "slurmctld does not answer")
        self._spawn([binary("slurmd"), "-D", "-f", str(self.conf)], "slurmd")
        self._wait(lambda: "idle" in self._run("sinfo", "-h", "-o", "%t").stdout, timeout, "the node is not idle")

    def _spawn(self, command, name) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")
        self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env))

    def _run(self, *command, env=None, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([binary(command[0]), *command[1:]], capture_output=True, text=True,
                              env=env or self.env, timeout=60, **kwargs)

    def _wait(self, ready, timeout, message) -> None:
        deadline = time.time() + timeout
        while not ready():
            dead = [p.args[0] for p in self.processes if p.poll() is not None]
            if dead or time.time() > deadline:
                raise RuntimeError(f"SLURM cluster: {message}" + (f" ({', '.join(dead)} exited)" if dead else "")
                                   + "\n" + self.logs())
            time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((self.root / "log").iterdir()))

    def run(self, *command, **kwargs) -> subprocess.CompletedProcess:
        """A SLURM client command (sbatch, scontrol, squeue, scancel) against this cluster."""
        return self._run(*command, **kwargs)

    def job(self, job_id: str) -> dict:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
        out = self._run("scontrol", "show", "job", "-o", str(job_id)).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def wait_for_state(self, job_id: str, states: set[str], timeout: float = 600) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {self.job(job_id)}")

    def stop(self) -> None:
        """Cancel every job of this cluster, wait for their processes to end, then stop the daemons."""
        self._run("scancel", "--full", "--user=root")
        deadline = time.time() + 30
        while self._run("squeue", "-h").stdout.strip() and time.time() < deadline:
            time.sleep(0.5)
        for process in reversed(self.processes):
            process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
