"""A real single-node SLURM on localhost, in one private folder: for tests, CI and trying `slurm/submit.py`.

    python -m slurm.localcluster start  [--dir runs/slurm-cluster] [--timeout 120] [--no-accounting]
    python -m slurm.localcluster status [--dir ...]        # exit 0 when every daemon is up and the node idle
    python -m slurm.localcluster env    [--dir ...]        # `export SLURM_CONF=...` for sbatch/sinfo/sacct/submitit
    python -m slurm.localcluster stop   [--dir ...]

`start` installs what is missing with apt-get (Debian's `slurm-wlm munge`, plus `slurmdbd mariadb-server`
for accounting; root only, ≈ 40 s once), writes every file under `--dir` and starts, in order:
munged (a private key and socket), mariadbd + slurmdbd (accounting, so that `sacct` and therefore
submitit can see job states), slurmctld and slurmd. Everything listens on 127.0.0.1 on ports picked
once and kept in `cluster.json` (slurmdbd binds 0.0.0.0 whatever it is told), so it can live beside
another cluster. It is idempotent: a running cluster is left alone, a half-started one is stopped
and started again. Each wait is bounded by `--timeout` and fails naming the daemon and its log tail.
From nothing (apt included) it takes ≈ 45 s; from installed packages ≈ 6 s, or < 1 s without accounting.

Clients find the cluster through `SLURM_CONF={dir}/etc/slurm.conf` (`env` prints it; `start` too).
The settings that make it quick for tests: `cred_expire=5` and `sched_interval=2` (a requeued job
restarts within seconds instead of ≈ 2 minutes), `KillWait=5`, one partition `debug` holding the node
with all its CPUs. `stop` cancels the jobs, then stops only the daemons this folder started, by the
pids in its pid files (checked against their command lines).

From Python: `LocalCluster(path).start()` returns the environment to add (`{"SLURM_CONF": ...}`) and
raises `ClusterError` with the reason when SLURM cannot run here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from slurm.host import ClusterError, install_packages, node_resources, port_open, run_quiet, tail, wait_gone, which
from trainer.distributed.world import free_port

CLUSTER_NAME = "shardtune"
PARTITION = "debug"
SLURM_PACKAGES = ("slurm-wlm", "munge")
ACCOUNTING_PACKAGES = ("slurmdbd", "mariadb-server")
SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "sinfo", "scontrol", "sacct")
ACCOUNTING_PROGRAMS = ("slurmdbd", "mariadbd", "mariadb-install-db", "mariadb", "sacctmgr")
DB_USER, DB_PASSWORD, DB_NAME = "slurm", "shardtune-local", "slurm_acct_db"


@dataclass(frozen=True)
class Daemon:
    name: str
    pid_file: Path
    log_file: Path


class LocalCluster:
    def __init__(self, path: Path | str, accounting: bool = True, timeout: float = 120.0):
        self.dir = Path(path).resolve()
        self.accounting = accounting
        self.timeout = timeout
        self.etc, self.run, self.log = self.dir / "etc", self.dir / "run", self.dir / "log"
        self.conf = self.etc / "slurm.conf"
        self.munge_socket = self.run / "munge.socket"
        self.db_socket = self.run / "mariadb.sock"

    # ---- public -----------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def daemons(self, every: bool = False) -> list[Daemon]:
        """The daemons this cluster runs, in start order (`every`: with accounting's, whatever the setting)."""
        accounting = self.accounting or every
        names = ["munged"] + (["mariadbd", "slurmdbd"] if accounting else []) + ["slurmctld", "slurmd"]
        return [Daemon(name, self.run / f"{name}.pid", self.log / f"{name}.log") for name in names]

    def start(self, install: bool = True) -> dict[str, str]:
        """Start whatever is not running (idempotent); returns the environment clients need."""
        started = time.monotonic()
        self.ensure_installed(install)
        if self.running() == [d.name for d in self.daemons()] and self.node_state() == "idle":
            return self.env
        self.stop(quiet=True)  # a half-started cluster: start it again from a clean set of daemons
        self.write_files()
        self.start_munge()
        if self.accounting:
            self.start_accounting()
        self.spawn("slurmctld", ["slurmctld", "-f", str(self.conf)])
        self.wait(
            lambda: self.query(["scontrol", "ping"]).returncode == 0, "slurmctld answering `scontrol ping`", "slurmctld"
        )
        self.spawn("slurmd", ["slurmd", "-f", str(self.conf), "-N", self.node_name])
        self.wait(lambda: self.node_state() == "idle", f"node {self.node_name} idle in `sinfo`", "slurmd")
        print(
            f"local SLURM up in {time.monotonic() - started:.1f} s ({'with' if self.accounting else 'without'} "
            f"accounting): export SLURM_CONF={self.conf}",
            file=sys.stderr,
        )
        return self.env

    def status(self) -> dict:
        expected = [d.name for d in self.daemons()]
        running = self.running()
        return {
            "dir": str(self.dir),
            "daemons": {name: name in running for name in expected},
            "node": self.node_state() if "slurmctld" in running else "down",
            "SLURM_CONF": str(self.conf),
            "accounting": self.accounting,
        }

    def stop(self, quiet: bool = False) -> list[str]:
        """Cancel our jobs, then stop the daemons this folder started (by pid file), newest first."""
        stopped = []
        if "slurmctld" in self.running():
            self.query(["scancel", "--full", "--partition", PARTITION, "--quiet"])
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.query(["squeue", "-h"]).stdout.strip():
                time.sleep(0.5)
        daemons = {d.name: d for d in self.daemons(every=True)}
        for wave in (
            ("slurmd", "slurmctld", "slurmdbd"),
            ("mariadbd", "munged"),
        ):  # munge last: slurm uses it to the end
            pids = {name: self.pid_of(daemons[name]) for name in wave}
            pids = {name: pid for name, pid in pids.items() if pid is not None}
            for pid in pids.values():
                os.kill(pid, signal.SIGTERM)
            for name, pid in pids.items():
                if not wait_gone(pid, 20):
                    os.kill(pid, signal.SIGKILL)
                    wait_gone(pid, 5)
                daemons[name].pid_file.unlink(missing_ok=True)
                stopped.append(name)
        if stopped and not quiet:
            print(f"stopped {', '.join(stopped)} ({self.dir})", file=sys.stderr)
        return stopped

    def running(self) -> list[str]:
        return [d.name for d in self.daemons(every=True) if self.pid_of(d) is not None]

    # ---- installation -------------------------------------------------------------------------
    def ensure_installed(self, install: bool) -> None:
        programs = SLURM_PROGRAMS + (ACCOUNTING_PROGRAMS if self.accounting else ())
        missing = [p for p in programs if not which(p)]
        if not missing:
            return
        packages = SLURM_PACKAGES + (ACCOUNTING_PACKAGES if self.accounting else ())
        if not install:
            raise ClusterError(f"SLURM programs missing: {', '.join(missing)} (install {' '.join(packages)})")
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise ClusterError(
                f"SLURM programs missing ({', '.join(missing)}) and cannot apt-get install "
                f"{' '.join(packages)} (needs root and apt-get)"
            )
        install_packages(packages, self.timeout + 300)
        still = [p for p in programs if not which(p)]
        if still:
            raise ClusterError(f"apt-get installed {' '.join(packages)} but {', '.join(still)} still missing")

    # ---- configuration ----------------------------------------------------------------------
    @property
    def node_name(self) -> str:
        return socket.gethostname().split(".")[0]

    def ports(self) -> dict[str, int]:
        """Ports picked once per folder (kept in cluster.json) so a restart finds the same cluster."""
        record = self.dir / "cluster.json"
        if record.exists():
            return json.loads(record.read_text())["ports"]
        ports = {name: free_port() for name in ("slurmctld", "slurmd", "slurmdbd", "mariadb")}
        record.write_text(json.dumps({"ports": ports, "node": self.node_name}, indent=1))
        return ports

    def write_files(self) -> None:
        for folder in (
            self.dir,
            self.etc,
            self.run,
            self.log,
            self.dir / "state",
            self.dir / "spool",
            self.dir / "munge",
        ):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)
        ports = self.ports()
        cpus, memory = node_resources()
        lines = [
            f"ClusterName={CLUSTER_NAME}",
            f"SlurmctldHost={self.node_name}(127.0.0.1)",
            f"SlurmctldPort={ports['slurmctld']}",
            f"SlurmdPort={ports['slurmd']}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket},cred_expire=5",
            f"StateSaveLocation={self.dir / 'state'}",
            f"SlurmdSpoolDir={self.dir / 'spool'}",
            f"SlurmctldPidFile={self.run / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.run / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.log / 'slurmctld.log'}",
            f"SlurmdLogFile={self.log / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=none",
            "ReturnToService=2",
            "SchedulerParameters=sched_interval=2,bf_interval=2",
            "KillWait=5",
            "MinJobAge=600",
            "CommunicationParameters=NoInAddrAny,NoCtldInAddrAny",
        ]
        if self.accounting:
            lines += [
                "AccountingStorageType=accounting_storage/slurmdbd",
                "AccountingStorageHost=127.0.0.1",
                f"AccountingStoragePort={ports['slurmdbd']}",
                f"AccountingStoragePass={self.munge_socket}",
            ]
        lines += [
            f"NodeName={self.node_name} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={self.node_name} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        if self.accounting:
            dbd = self.etc / "slurmdbd.conf"
            dbd.write_text(
                "\n".join(
                    [
                        "AuthType=auth/munge",
                        f"AuthInfo=socket={self.munge_socket}",
                        "DbdHost=localhost",
                        "DbdAddr=127.0.0.1",
                        f"DbdPort={ports['slurmdbd']}",
                        "SlurmUser=root",
                        f"PidFile={self.run / 'slurmdbd.pid'}",
                        f"LogFile={self.log / 'slurmdbd.log'}",
                        "StorageType=accounting_storage/mysql",
                        "StorageHost=127.0.0.1",
                        f"StoragePort={ports['mariadb']}",
                        f"StorageUser={DB_USER}",
                        f"StoragePass={DB_PASSWORD}",
                        f"StorageLoc={DB_NAME}",
                    ]
                )
                + "\n"
            )
            dbd.chmod(0o600)

    # ---- daemons ------------------------------------------------------------------------------
    def start_munge(self) -> None:
        key = self.dir / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(128))
        key.chmod(0o400)
        self.spawn(
            "munged",
            [
                "munged",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.run / 'munged.pid'}",
                f"--log-file={self.log / 'munged.log'}",
                f"--seed-file={self.dir / 'munge' / 'munged.seed'}",
            ],
        )
        self.wait(lambda: self.munge_socket.exists(), "munged's socket", "munged")

    def start_accounting(self) -> None:
        ports = self.ports()
        datadir = self.dir / "mariadb"
        if not (datadir / "mysql").exists():
            done = run_quiet(
                [
                    "mariadb-install-db",
                    f"--datadir={datadir}",
                    "--user=root",
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                ],
                self.timeout,
            )
            if done.returncode:
                raise ClusterError(f"mariadb-install-db failed:\n{tail(done.stdout + done.stderr)}")
        # mariadbd does not daemonise itself: it runs in the background, detached from us.
        self.spawn(
            "mariadbd",
            [
                "mariadbd",
                "--no-defaults",
                f"--datadir={datadir}",
                "--user=root",
                f"--socket={self.db_socket}",
                f"--port={ports['mariadb']}",
                "--bind-address=127.0.0.1",
                f"--pid-file={self.run / 'mariadbd.pid'}",
                f"--log-error={self.log / 'mariadbd.log'}",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
            ],
            detach=True,
        )
        sql = ["mariadb", "--no-defaults", f"--socket={self.db_socket}", "-u", "root", "-e"]
        self.wait(
            lambda: run_quiet(sql + ["SELECT 1"], 10).returncode == 0, "mariadbd accepting connections", "mariadbd"
        )
        grant = (
            f"CREATE USER IF NOT EXISTS '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}';"
            f"CREATE USER IF NOT EXISTS '{DB_USER}'@'localhost' IDENTIFIED BY '{DB_PASSWORD}';"
            f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'127.0.0.1';"
            f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'localhost';"
        )
        done = run_quiet(sql + [grant], 30)
        if done.returncode:
            raise ClusterError(f"could not create the slurm database user:\n{tail(done.stdout + done.stderr)}")
        self.spawn("slurmdbd", ["slurmdbd"])  # reads slurmdbd.conf beside $SLURM_CONF
        self.wait(lambda: port_open(ports["slurmdbd"]), "slurmdbd listening", "slurmdbd")
        listed = self.query(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"])
        if CLUSTER_NAME not in listed.stdout.split():
            added = self.query(["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME])
            if added.returncode and "already exists" not in added.stdout + added.stderr:
                raise ClusterError(f"sacctmgr add cluster failed:\n{tail(added.stdout + added.stderr)}")

    def spawn(self, name: str, command: list[str], detach: bool = False) -> None:
        environment = {**os.environ, **self.env}
        log_file = self.log / f"{name}.out"
        with open(log_file, "ab") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=environment,
                start_new_session=True,
                cwd=self.dir,
            )
        if detach:
            return
        try:
            code = process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            return  # still in the foreground: fine, it runs detached in its own session
        if code:
            raise ClusterError(f"{name} exited with {code} at start; {self.log_tail(name)}")

    def wait(self, ready, what: str, daemon: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.2)
        raise ClusterError(f"timed out after {self.timeout:.0f} s waiting for {what}; {self.log_tail(daemon)}")

    def log_tail(self, name: str) -> str:
        parts = []
        for path in (self.log / f"{name}.log", self.log / f"{name}.out"):
            if path.exists() and path.stat().st_size:
                parts.append(f"{path}:\n{tail(path.read_text(errors='replace'))}")
        return "\n".join(parts) or f"no log in {self.log}"

    def pid_of(self, daemon: Daemon) -> int | None:
        """The daemon's pid if it is alive and really ours (its command line names this folder or our conf)."""
        try:
            pid = int(daemon.pid_file.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            return None
        return pid if str(self.dir) in cmdline or str(self.conf) in environ else None

    def node_state(self) -> str:
        done = self.query(["sinfo", "-h", "-n", self.node_name, "-o", "%t"])
        return done.stdout.strip().rstrip("*~#!%$@^-") if done.returncode == 0 else "down"

    def query(self, command: list[str]) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=30, env={**os.environ, **self.env})
        except (OSError, subprocess.TimeoutExpired) as error:
            return subprocess.CompletedProcess(command, 1, "", str(error))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="python -m slurm.localcluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    root.add_argument("action", choices=("start", "status", "stop", "env"))
    root.add_argument("--dir", type=Path, default=Path("runs/slurm-cluster"), help="the cluster's private folder")
    root.add_argument("--timeout", type=float, default=120.0, help="seconds each daemon may take to come up")
    root.add_argument(
        "--no-accounting",
        action="store_true",
        help="skip slurmdbd + mariadb (sacct, and submitit's job states, then do not work)",
    )
    root.add_argument("--no-install", action="store_true", help="fail instead of apt-get installing missing packages")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cluster = LocalCluster(args.dir, accounting=not args.no_accounting, timeout=args.timeout)
    if args.action == "start":
        try:
            cluster.start(install=not args.no_install)
        except ClusterError as error:
            print(f"error: local SLURM did not start: {error}", file=sys.stderr)
            return 1
        print(f"export SLURM_CONF={cluster.conf}")
        return 0
    if args.action == "env":
        print(f"export SLURM_CONF={cluster.conf}")
        return 0
    if args.action == "stop":
        cluster.stop()
        return 0
    status = cluster.status()
    print(json.dumps(status, indent=1))
    return 0 if all(status["daemons"].values()) and status["node"] == "idle" else 1


if __name__ == "__main__":
    sys.exit(main())
