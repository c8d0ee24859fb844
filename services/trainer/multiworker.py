"""One job on several worker processes: TensorFlow's MultiWorkerMirroredStrategy, configured through
TF_CONFIG. No scheduler of our own: something else starts the processes, and each finds its peers in
TF_CONFIG.

- Locally (Compose, a laptop, the tests): the trainer replica that owns a job with `workers: N > 1`
  starts N processes of the worker entry point (`python -m services.trainer.mwms_worker`) on free
  loopback ports, worker 0 being the chief, and watches them (`WorkerGroup`). The replica's own process
  never joins the collective: TensorFlow's collective context is process-wide and fixed at start-up, and
  the replica trains other jobs in-process.
- On Kubernetes the same entry point is what a Kubeflow `TFJob` runs (the operator sets TF_CONFIG:
  deploy/k8s/overlays/operators/tfjob-trainer.yaml), or an indexed Job with a headless Service, where
  the worker computes TF_CONFIG from JOB_COMPLETION_INDEX and the Service's DNS names
  (`indexed_job_tf_config`; deploy/k8s/overlays/multiworker).

Only the chief (worker 0) writes checkpoints and exports; the others write theirs to a temporary
directory that is thrown away (every worker must run the same saving code). Every worker resumes from
the chief's latest checkpoint. A worker that dies makes the others fail too (collective timeout,
TensorFlow's peer health check, and the group's watchdog, which kills the survivors at once); the
replica then restarts the whole group from the chief's last checkpoint, up to a limit, before the job
fails. A worker that cannot reach a peer within the start-up timeout fails naming that address.

This module imports no TensorFlow: the TF_CONFIG rules are tested and used by deploy checks as plain
Python.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import InvalidArgument, Unavailable
from services.common.settings import SettingsError

log = logging.getLogger("classforge.trainer")

WORKER_MODULE = "services.trainer.mwms_worker"
DEFAULT_PORT = 2222  # the TFJob operator's default port, used by the indexed Job too
# Environment of the worker entry point (besides TF_CONFIG and the deployment's CLASSFORGE_* settings).
JOB_ID_ENV = "CLASSFORGE_MWMS_JOB_ID"
STORE_DIR_ENV = "CLASSFORGE_MWMS_STORE_DIR"  # a local directory store instead of MinIO (local runs, tests)
# An indexed Job's worker computes TF_CONFIG from these and JOB_COMPLETION_INDEX (set by Kubernetes).
INDEXED_ENV = {"workers": "CLASSFORGE_MWMS_WORKERS", "job_name": "CLASSFORGE_MWMS_JOB_NAME",
               "service": "CLASSFORGE_MWMS_SERVICE", "namespace": "CLASSFORGE_MWMS_NAMESPACE",
               "port": "CLASSFORGE_MWMS_PORT"}


def tf_config(addresses: list[str], index: int) -> dict:
    """TF_CONFIG of worker `index` in a cluster of `addresses` (host:port), worker 0 being the chief."""
    if not addresses:
        raise SettingsError("TF_CONFIG: the cluster has no workers")
    if not 0 <= index < len(addresses):
        raise SettingsError(f"TF_CONFIG: task index {index} is outside the {len(addresses)} workers")
    return {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}}


def indexed_job_addresses(workers: int, job_name: str, service: str, namespace: str,
                          port: int = DEFAULT_PORT) -> list[str]:
    """The workers of an indexed Job (`completionMode: Indexed`) whose pod template sets
    `subdomain: <service>` (a headless Service): pod i is `<job_name>-<i>`, reachable as
    `<job_name>-<i>.<service>.<namespace>.svc`."""
    if workers < 1:
        raise SettingsError(f"{INDEXED_ENV['workers']}={workers}: an indexed Job needs at least one worker")
    return [f"{job_name}-{i}.{service}.{namespace}.svc:{port}" for i in range(workers)]


def indexed_job_tf_config(index: int, workers: int, job_name: str, service: str, namespace: str,
                          port: int = DEFAULT_PORT) -> dict:
    return tf_config(indexed_job_addresses(workers, job_name, service, namespace, port), index)


def resolve_tf_config(environ: Mapping[str, str]) -> dict:
    """The worker's TF_CONFIG: the one set in the environment (the TFJob operator, the local launcher),
    else computed for an indexed Job from JOB_COMPLETION_INDEX and CLASSFORGE_MWMS_*. SettingsError
    naming the variable when neither is usable."""
    if environ.get("TF_CONFIG"):
        try:
            config = json.loads(environ["TF_CONFIG"])
            workers = config["cluster"].get("worker", [])
            chief = config["cluster"].get("chief", [])
            task_type, index = config["task"]["type"], int(config["task"]["index"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SettingsError(f"TF_CONFIG is not a TensorFlow cluster config ({exc!r}); expected "
                                f'{{"cluster": {{"worker": [...]}}, "task": {{"type": ..., "index": ...}}}}') from None
        members = {"worker": workers, "chief": chief}.get(task_type)
        if members is None or not 0 <= index < len(members):
            raise SettingsError(f"TF_CONFIG: task {task_type}/{index} is not in the cluster {config['cluster']}")
        return config
    if "JOB_COMPLETION_INDEX" not in environ:
        raise SettingsError("TF_CONFIG is not set, and neither is JOB_COMPLETION_INDEX (an indexed Job's): "
                            "the worker cannot know its cluster")
    values = {}
    for key, name in INDEXED_ENV.items():
        raw = environ.get(name, "")
        if key == "port" and not raw:
            raw = str(DEFAULT_PORT)
        if not raw:
            raise SettingsError(f"{name} is required in an indexed Job (JOB_COMPLETION_INDEX is set)")
        values[key] = raw
    try:
        index, workers, port = int(environ["JOB_COMPLETION_INDEX"]), int(values["workers"]), int(values["port"])
    except ValueError:
        raise SettingsError(f"JOB_COMPLETION_INDEX, {INDEXED_ENV['workers']} and {INDEXED_ENV['port']} must be "
                            f"integers") from None
    return indexed_job_tf_config(index, workers, values["job_name"], values["service"], values["namespace"], port)


def is_chief(config: dict) -> bool:
    """The chief writes the checkpoints and the model: the `chief` task when the cluster has one (a TFJob
    with a Chief replica), else worker 0."""
    task = config["task"]
    if config["cluster"].get("chief"):
        return task["type"] == "chief"
    return task["type"] == "worker" and int(task["index"]) == 0


def peers_of(config: dict) -> list[str]:
    """Every address of the cluster except this task's own."""
    own = config["cluster"][config["task"]["type"]][int(config["task"]["index"])]
    return [a for kind in ("chief", "worker") for a in config["cluster"].get(kind, []) if a != own]


def wait_reachable(addresses: list[str], timeout: float, poll: float = 0.2) -> None:
    """Waits until a TCP connection to every address succeeds; Unavailable naming those still unreachable
    after `timeout` seconds. Run before the strategy waits for its cluster, whose own timeout says no
    address."""
    deadline = time.monotonic() + timeout
    waiting = list(addresses)
    while waiting:
        still = []
        for address in waiting:
            host, _, port = address.rpartition(":")
            try:
                with socket.create_connection((host.strip("[]"), int(port)), timeout=min(2.0, timeout)):
                    pass
            except OSError:
                still.append(address)
        waiting = still
        if waiting and time.monotonic() >= deadline:
            raise Unavailable(f"cannot reach the worker(s) at {', '.join(waiting)} within {timeout:.0f}s "
                              f"(TF_CONFIG cluster)")
        if waiting:
            time.sleep(poll)


def loopback_addresses(count: int) -> list[str]:
    """`count` free ports on 127.0.0.1 (bound together, then released for the workers to bind)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    finally:
        for s in sockets:
            s.close()


def check_worker_count(workers: int, max_workers: int) -> int:
    """The processes a job runs on (1 for 0 or 1); InvalidArgument above the deployment's maximum (also
    refused at submit; checked again here for jobs submitted before the limit was lowered)."""
    if workers > max_workers:
        raise InvalidArgument("config.workers", f"{workers} workers asked for, but this trainer runs at most "
                                                f"{max_workers} (CLASSFORGE_TRAINER_MAX_WORKERS)")
    return max(workers, 1)


@dataclass
class GroupResult:
    status: str  # "succeeded", "failed" or "stopped"
    message: str = ""


class WorkerGroup:
    """N local worker processes of one job, started together and ended together: when one fails, the
    others are killed at once (they would otherwise wait in a collective until its timeout); a stop
    request kills all of them (the chief's last checkpoint is where the next run resumes)."""

    def __init__(self, job_id: str, workers: int, *, env: Mapping[str, str], log_dir: Path,
                 python: str = sys.executable):
        self.job_id = job_id
        self.addresses = loopback_addresses(workers)
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen] = []
        base = dict(os.environ) | dict(env) | {JOB_ID_ENV: job_id}
        for index in range(workers):
            worker_env = base | {"TF_CONFIG": json.dumps(tf_config(self.addresses, index))}
            with open(self.log_path(index), "wb") as out:
                self.processes.append(subprocess.Popen(
                    [python, "-m", WORKER_MODULE], env=worker_env, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True))  # its own process group: killed with its children
        log.info("multi-worker group started", extra={"job_id": job_id, "workers": self.addresses,
                                                      "pids": [p.pid for p in self.processes]})

    def log_path(self, index: int) -> Path:
        return self.log_dir / f"worker-{index}.log"

    def wait(self, stop: threading.Event, poll: float = 0.2) -> GroupResult:
        """Until every worker has exited 0 ("succeeded"), one has failed ("failed", with its last log
        line) or `stop` is set ("stopped"). Never waits on a dead group: the first failure ends it."""
        try:
            while True:
                codes = [p.poll() for p in self.processes]
                failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
                if failed:
                    i = failed[0]
                    return GroupResult("failed", f"worker {i} ({self.addresses[i]}) exited with "
                                                 f"{_exit_text(codes[i])}: {self.last_error(i)}")
                if all(code == 0 for code in codes):
                    return GroupResult("succeeded")
                if stop.wait(poll):
                    return GroupResult("stopped")
        finally:
            self.kill()

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for process in self.processes:
            process.wait()

    def last_error(self, index: int) -> str:
        """The worker's last line that says what went wrong (its log is JSON lines or plain text)."""
        try:
            lines = self.log_path(index).read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        for line in reversed(lines):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and record.get("worker_error"):
                return str(record["worker_error"])
        tail = [line for line in lines if line.strip()]
        return tail[-1][-500:] if tail else "(no output)"


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"
