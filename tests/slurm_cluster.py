"""A real single-host SLURM cluster for tests: `slurmctld` and `slurmd` as plain
processes (no systemd), with a config in a temporary directory and nothing written
to /etc. Authentication is off (`auth/none`), which is only for a machine that runs
the tests. The Debian packages (`slurmctld slurmd slurm-client`) are installed when
missing and we are root (`make install-test` installs them too).
"""
import os
import shutil
import socket
import subprocess
import time

PACKAGES = ("slurmctld", "slurmd", "slurm-client")
_BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "sinfo", "squeue", "scontrol",
             "scancel")

_CONFIG = """\
ClusterName=tandemtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
FirstJobId={first_job}
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=16 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def missing_reason() -> str | None:
  """Why no cluster can run here, or None. Installs the packages if root."""
  if all(shutil.which(b) for b in _BINARIES):
    return None
  if os.geteuid() == 0 and shutil.which("apt-get"):
    install = ["apt-get", "install", "-y", "-q", *PACKAGES]
    if subprocess.run(install, capture_output=True).returncode:
      subprocess.run(["apt-get", "update", "-q"], capture_output=True)
      subprocess.run(install, capture_output=True)
    if all(shutil.which(b) for b in _BINARIES):
      return None
  return (f"SLURM's {', '.join(PACKAGES)} are not installed and could not be "
          "installed here (needs root and apt-get): run `make install-test` as root.")


def _free_ports(count: int) -> list[int]:
  """`count` distinct free TCP ports: all sockets are held open while the OS picks
  (one at a time, a closed port can be handed out again: slurmctld and slurmd
  then get the same one)."""
  sockets = [socket.socket() for _ in range(count)]
  try:
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


class Cluster:
  """Started by `start()`, stopped (by PID) by `stop()`; `env` has SLURM_CONF."""

  def __init__(self, root: str):
    self.root = root
    self.conf = os.path.join(root, "slurm.conf")
    self.env = {**os.environ, "SLURM_CONF": self.conf}
    self._daemons = []

  def start(self, timeout: float = 60.0) -> "Cluster":
    for sub in ("state", "spool"):
      os.makedirs(os.path.join(self.root, sub), exist_ok=True)
    with open(self.conf, "w") as f:
      ctld_port, d_port = _free_ports(2)
      # Job ids apart from another test worker's cluster on this host.
      f.write(_CONFIG.format(root=self.root, ctld_port=ctld_port, d_port=d_port,
                             first_job=1000 * (os.getpid() % 1000) + 1))
    for command in (["slurmctld", "-D", "-f", self.conf],
                    ["slurmd", "-D", "-N", "localhost", "-f", self.conf]):
      log = open(os.path.join(self.root, command[0] + ".out"), "w")
      self._daemons.append(subprocess.Popen(command, stdout=log, stderr=log,
                                            env=self.env, cwd=self.root))
    deadline = time.time() + timeout
    while time.time() < deadline:
      state = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
      if state == "idle":
        return self
      time.sleep(0.5)
    self.stop()
    raise RuntimeError(f"SLURM did not come up in {timeout:.0f} s; logs in "
                       f"{self.root}: " + self.logs())

  def run(self, *command, check=True, **kwargs) -> subprocess.CompletedProcess:
    """A SLURM command against this cluster."""
    return subprocess.run(command, env=kwargs.pop("env", self.env),
                          capture_output=True, text=True, check=check, **kwargs)

  def job_state(self, job_id: str) -> str:
    """squeue's state, or "" once the job has left the queue."""
    return self.run("squeue", "-h", "-j", job_id, "-o", "%T", check=False
                    ).stdout.strip()

  def logs(self) -> str:
    out = []
    for name in ("slurmctld.log", "slurmd.log"):
      path = os.path.join(self.root, name)
      if os.path.exists(path):
        out.append(f"--- {name}\n" + open(path).read()[-3000:])
    return "\n".join(out)

  def stop(self) -> None:
    if self._daemons:  # Jobs first: their tasks outlive slurmd.
      self.run("scancel", "--user", "root", check=False, timeout=30)
      time.sleep(1)
    for daemon in self._daemons:
      daemon.terminate()
    for daemon in self._daemons:
      try:
        daemon.wait(timeout=15)
      except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()
    self._daemons = []
