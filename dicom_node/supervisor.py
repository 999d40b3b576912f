"""One command, several processes: ``dicom-node run`` supervises its listeners and its worker.

Why processes and not threads: a listener's threads and the worker's share one GIL in one
process, so model loading, preprocessing and the scheduler ticks delay every C-STORE
response, and one listener process uses about one core whatever the number of
associations. The supervisor keeps the embedded default one command and one config:

- It binds the DICOM port once and hands the listening socket to ``[node]
  listener_processes`` listener processes (pre-fork, as web servers do): they all accept
  on it, and a process already serving associations waits a few milliseconds before it
  accepts, so a less busy one usually takes each new connection (``SharedSocketServer``).
  A second node started on the same port still fails to bind, which ``SO_REUSEPORT``
  would have allowed silently.
- ``run`` adds one worker process (ticks, jobs, outbox) at a lower CPU priority (nice
  +10), so analysis yields the CPU to reception.
- It serves ``/metrics`` (the children's counters, summed through prometheus_client's
  multiprocess mode) and ``/health`` (database, storage, and every child running).
- At boot it forks the children from itself, after importing the node and before it starts
  any thread, so they need no second interpreter start (seconds of CPU, paid before the
  port answers); a child restarted later is a fresh ``python -m dicom_node`` process.

Children die with their parent: each asks the kernel for SIGKILL when the parent dies
(``PR_SET_PDEATHSIG``), so a ``kill -9`` of the unit leaves no orphan holding the port or
a job, exactly as when everything ran in one process. A child that exits on its own is
restarted after a pause (1 s, doubling up to 30 s, back to 1 s after a minute of running);
an association it held is aborted and the PACS resends what was not acknowledged. A
child that exits with a configuration error (2) or an unmigrated database (3) stops the
whole node with that status: a restart cannot help, and systemd does not restart into it.
SIGTERM and SIGINT stop the children (listeners first, then the worker) and wait for them;
SIGHUP is passed on, and each child reloads its own part of the configuration.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

#: Set in a child's environment: the supervisor's pid (the child dies with it).
SUPERVISOR_PID_ENV = "DICOM_NODE_SUPERVISOR_PID"
#: Set for a listener child: the number of the inherited listening socket's file descriptor.
LISTEN_FD_ENV = "DICOM_NODE_LISTEN_FD"
#: Set for a child that should run at a lower CPU priority: the increment for ``os.nice``.
NICE_ENV = "DICOM_NODE_NICE"
#: prometheus_client's multiprocess mode: children write their counters under this folder.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Exit statuses that a restart cannot fix: configuration (2), database not migrated (3).
FATAL_EXIT_STATUSES = (2, 3)
#: The worker's CPU priority below the listeners' (analysis yields to reception).
WORKER_NICE = 10
FIRST_RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
#: A child that ran this long before exiting is restarted after the first delay again.
STABLE_AFTER_S = 60.0
STOP_TIMEOUT_S = 60.0
#: Linux prctl option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ChildSpec:
    """One process the supervisor keeps running."""

    name: str  # in logs: "listener 1", "worker"
    command: str  # the dicom-node command it runs: "scp" or "worker"
    nice: int = 0


def child_specs(listener_processes: int, *, worker: bool) -> list[ChildSpec]:
    """The listeners, then (for ``run``) the worker."""
    specs = [ChildSpec(f"listener {i}", "scp") for i in range(1, listener_processes + 1)]
    if worker:
        specs.append(ChildSpec("worker", "worker", nice=WORKER_NICE))
    return specs


@dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes] | _Forked | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    delay_s: float = FIRST_RESTART_DELAY_S


@dataclass
class Supervisor:
    """Starts the children, restarts the ones that exit, passes signals on, stops them."""

    specs: list[ChildSpec]
    config: Path
    listen_socket: socket.socket | None
    metrics_dir: Path
    clock: Callable[[], float] = time.monotonic
    _children: list[_Child] = field(default_factory=list, init=False)

    def start(self, run_forked: Callable[[ChildSpec], None] | None = None) -> None:
        """Start every child. With ``run_forked``, fork them from this process instead of
        starting new interpreters (restarts always start a new interpreter).

        A forked child already has every module its parent imported: the node answers
        seconds sooner at boot and after a ``kill -9`` (importing the node costs a few
        seconds of CPU, many more on a loaded host, and would be paid twice in a row).
        Forking is safe only while this process has no other thread, which is the case
        before the supervisor serves HTTP; a restart later, when it does, starts a new
        interpreter instead.
        """
        self._children = [_Child(spec) for spec in self.specs]
        for child in self._children:
            if run_forked is not None:
                self._fork(child, run_forked)
            else:
                self._launch(child)

    def _child_env(self, child: _Child, listen_fd: int | None) -> dict[str, str]:
        env = {
            SUPERVISOR_PID_ENV: str(os.getpid()),
            METRICS_DIR_ENV: str(self.metrics_dir),
            NICE_ENV: str(child.spec.nice),
        }
        if child.spec.command == "scp" and listen_fd is not None:
            env[LISTEN_FD_ENV] = str(listen_fd)
        return env

    def _fork(self, child: _Child, run_forked: Callable[[ChildSpec], None]) -> None:
        if threading.active_count() > 1:  # another thread could hold a lock the child needs
            self._launch(child)
            return
        listen_fd = None
        if self.listen_socket is not None and child.spec.command == "scp":
            listen_fd = os.dup(self.listen_socket.fileno())  # the listener's own copy; ours is closed after the fork
        env = self._child_env(child, listen_fd)
        pid = os.fork()
        if pid == 0:  # the child: never returns into the supervisor's code
            status = 1
            try:
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(signum, signal.SIG_DFL)
                # fork copied every descriptor: a listener serves on its own copy (LISTEN_FD_ENV),
                # and the worker must not hold the port, or it would stay open, accepting
                # connections nobody serves, for as long as the worker outlives the listeners.
                if self.listen_socket is not None:
                    self.listen_socket.close()
                os.environ.update(env)
                use_multiprocess_metrics()
                run_forked(child.spec)
                status = 0
            except SystemExit as exc:  # typer.Exit is a SystemExit too
                status = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - reported, then the child ends
                logger.exception(f"{child.spec.name} failed")
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)  # no atexit, no finalizers of the parent's objects
        if listen_fd is not None:
            os.close(listen_fd)
        child.process = _Forked(pid)
        child.started_at = self.clock()
        child.restart_at = None
        logger.info(f"{child.spec.name} started (pid {pid})")

    def _launch(self, child: _Child) -> None:
        listen_fd = self.listen_socket.fileno() if self.listen_socket is not None else None
        env = {**os.environ, **self._child_env(child, listen_fd)}
        pass_fds = (listen_fd,) if LISTEN_FD_ENV in env and listen_fd is not None else ()
        # Always from the main thread: PR_SET_PDEATHSIG fires when the thread that forked
        # the child ends, and the main thread lives as long as the supervisor.
        child.process = subprocess.Popen(
            [sys.executable, "-m", "dicom_node", child.spec.command, "--config", str(self.config)],
            env=env,
            pass_fds=pass_fds,
        )
        child.started_at = self.clock()
        child.restart_at = None
        logger.info(f"{child.spec.name} started (pid {child.process.pid})")

    def check(self) -> int | None:
        """Reap children that exited and restart those that are due; a fatal exit status, or None."""
        now = self.clock()
        for child in self._children:
            if child.process is not None and (status := child.process.poll()) is not None:
                child.process = None
                if status in FATAL_EXIT_STATUSES:
                    logger.error(f"{child.spec.name} exited with status {status}: stopping the node (see its messages above)")
                    return status
                if now - child.started_at >= STABLE_AFTER_S:
                    child.delay_s = FIRST_RESTART_DELAY_S
                child.restart_at = now + child.delay_s
                logger.error(f"{child.spec.name} exited with status {status}; restarting it in {child.delay_s:.0f} s")
                child.delay_s = min(child.delay_s * 2, MAX_RESTART_DELAY_S)
            elif child.process is None and child.restart_at is not None and now >= child.restart_at:
                self._launch(child)
        return None

    def problems(self) -> list[str]:
        """Children not running now (for ``/health``)."""
        return [f"{child.spec.name} not running" for child in self._children if child.process is None]

    def signal_all(self, signum: int) -> None:
        for child in self._children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signum)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM the listeners, then the worker; SIGKILL whoever outlives ``timeout_s``.

        Listeners first: the last instances are recorded before the worker's ticks stop.
        """
        for command in ("scp", "worker"):
            group = [c.process for c in self._children if c.spec.command == command and c.process is not None]
            for process in group:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            deadline = self.clock() + timeout_s
            for process in group:
                try:
                    process.wait(timeout=max(0.0, deadline - self.clock()))
                except subprocess.TimeoutExpired:
                    logger.error(f"pid {process.pid} did not stop within {timeout_s:.0f} s: killing it")
                    process.kill()
                    process.wait()
        for child in self._children:
            child.process = None
            child.restart_at = None


class _Forked:
    """A forked child, with the part of ``subprocess.Popen``'s interface the supervisor uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (status := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(["fork"], timeout or 0.0)
            time.sleep(0.05)
        return status

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def use_multiprocess_metrics() -> None:
    """In a forked child: make prometheus_client write counters to ``PROMETHEUS_MULTIPROC_DIR``.

    prometheus_client picks its value class when it is imported, from the environment; the
    parent imported it without the variable. ``values.get_value_class`` is how it picks it.
    """
    from prometheus_client import values

    values.ValueClass = values.get_value_class()


@dataclass(frozen=True)
class Supervised:
    """What a child learns from its supervisor."""

    listen_socket: socket.socket | None


def is_supervised() -> bool:
    """True in a child of :class:`Supervisor` (before :func:`adopt_supervision`)."""
    return SUPERVISOR_PID_ENV in os.environ


def adopt_supervision() -> Supervised | None:
    """In a child of :class:`Supervisor`: die with the parent, take the priority and socket given.

    None when this process was not started by a supervisor. The variables are removed from
    the environment so that nothing this process starts takes them for its own.
    """
    parent = os.environ.pop(SUPERVISOR_PID_ENV, None)
    fd = os.environ.pop(LISTEN_FD_ENV, None)
    nice = int(os.environ.pop(NICE_ENV, "0") or 0)
    if parent is None:
        return None
    _die_with_parent(int(parent))
    if nice:
        os.nice(nice)
    return Supervised(listen_socket=socket.socket(fileno=int(fd)) if fd else None)


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux for SIGKILL when the parent dies; exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (AttributeError, OSError) as exc:  # not Linux: the child may outlive a killed parent
        logger.warning(f"this child will not die with its supervisor: {exc}")
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        sys.exit(1)


def listening_socket(address: str, port: int, *, retry_for_s: float = 5.0) -> socket.socket:
    """Bind and listen on ``address:port`` for the listener processes to share.

    A node restarted at once after ``kill -9`` may find the port still held for a moment by
    its dying children (they get SIGKILL when the parent dies): retry briefly.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    deadline = time.monotonic() + retry_for_s
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
            sock.listen(socket.SOMAXCONN)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
