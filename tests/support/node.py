"""Helpers to run a real dicom-node (in-process or as a CLI process) and talk to it."""

from __future__ import annotations

import functools
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification

from dicom_node.dicom.requestor import keep_responses_for_senders

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
CT_3SLICE = SHARED_DATA / "dicom-interop" / "dcmqi" / "data" / "segmentations" / "ct-3slice"
NODE_AE = "DICOMNODE"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


#: Where free_port looks when the kernel's ephemeral range leaves no room below it.
_LOWEST_PORT = 10000


def free_port() -> int:
    """A TCP port on 127.0.0.1, free now and not handed out before in this test session.

    A port is chosen here and bound later by someone else (a node, storescp, Orthanc). Two
    things could take it in between, more often on a busy machine that opens many sockets:

    - another ``free_port`` call of the same test (a node's DICOM and metrics ports, a
      peer's): the kernel's port 0 is random, so two calls can return the same port;
    - any socket that binds port 0 or connects out, which the kernel gives a port of its
      ephemeral range (``ip_local_port_range``).

    So the ports come from below the ephemeral range, each handed out once.
    """
    return _port_pool().take()


@dataclass
class _PortPool:
    """Ports below the ephemeral range, in turn from a start that differs per process."""

    low: int
    high: int
    given: set[int] = field(default_factory=set)
    next_port: int = 0

    @classmethod
    def below_ephemeral_range(cls) -> _PortPool:
        try:
            ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            ephemeral_low = 32768  # Linux's default
        low, high = _LOWEST_PORT, max(_LOWEST_PORT + 1000, ephemeral_low)
        # Another test session on this host starts elsewhere in the range.
        return cls(low, high, next_port=low + os.getpid() * 7919 % (high - low))

    def take(self) -> int:
        for _ in range(self.high - self.low):
            port = self.next_port
            self.next_port = self.low + (port + 1 - self.low) % (self.high - self.low)
            if port not in self.given and _bindable(port):
                self.given.add(port)
                return port
        raise AssertionError(f"no free TCP port left between {self.low} and {self.high} on 127.0.0.1")


@functools.cache
def _port_pool() -> _PortPool:
    return _PortPool.below_ephemeral_range()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def shared_data(path: Path) -> Path:
    """``path`` under ../shared/data, or a failure that says what is missing (never a skip)."""
    if not path.exists():
        raise AssertionError(f"test data missing: {path} (see ../shared/data/README.md)")
    return path


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class NodeConfig:
    """A settings file for a node under a test's temporary directory."""

    workdir: Path
    port: int = field(default_factory=free_port)
    quiet_period_s: float = 2.0
    scan_interval_s: float = 0.5
    max_open_s: float = 3600.0
    min_free_mb: int = 1
    duplicate_policy: str = "keep_first"
    allowed_callers: list[tuple[str, str | None]] = field(
        default_factory=lambda: [("STORESCU", None), ("ECHOSCU", None), ("TESTSCU", "127.0.0.1")]
    )
    database_url: str | None = None
    max_pdu_size: int = 65536
    max_associations: int = 8
    #: [node] listener_processes: listener processes sharing the port
    listener_processes: int = 1
    #: (name, AE title, port, object kinds) of each destination on 127.0.0.1
    destinations: list[tuple[str, str, int, list[str]]] = field(default_factory=list)
    lease_s: float = 20.0
    heartbeat_s: float = 2.0
    delivery_retry_delay_s: float = 1.0
    delivery_max_attempts: int = 20
    delivery_timeout_s: float = 10.0
    job_max_attempts: int = 3
    send_empty_seg: bool = False
    #: the phantom tests check volumes against the HU baseline; "classifier+unet" is the product default
    model: str = "threshold"
    device: str = "auto"
    metrics_port: int = field(default_factory=free_port)
    worker_metrics_port: int = field(default_factory=free_port)
    #: The phantoms of most tests are a few slices, for speed on 2 cores: far below a head's
    #: coverage. The coverage rule (selection.min_coverage_mm, 60 mm by default) has its own tests.
    min_coverage_mm: float = 0.0
    extra: str = ""
    #: the storage root, when not ``workdir/storage`` (shared by several processes, or on its own disk)
    storage_dir: Path | None = None

    @property
    def storage_root(self) -> Path:
        return self.storage_dir or self.workdir / "storage"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.workdir / 'node.db'}"

    def write(self) -> Path:
        callers = "\n".join(
            "[[node.allowed_callers]]\n"
            f"ae_title = {toml_value(ae)}\n" + (f"host = {toml_value(host)}\n" if host else "")
            for ae, host in self.allowed_callers
        )
        destinations = "\n".join(
            f"[[destinations]]\nname = {toml_value(name)}\nae_title = {toml_value(ae)}\n"
            f"host = \"127.0.0.1\"\nport = {port}\nobjects = {toml_value(kinds)}\n"
            for name, ae, port, kinds in self.destinations
        )
        text = f"""
[node]
ae_title = "{NODE_AE}"
bind_address = "127.0.0.1"
port = {self.port}
max_associations = {self.max_associations}
listener_processes = {self.listener_processes}
acse_timeout_s = 10
dimse_timeout_s = 30
network_timeout_s = 30
max_pdu_size = {self.max_pdu_size}

{callers}

[storage]
root = {toml_value(str(self.storage_root))}
duplicate_policy = {toml_value(self.duplicate_policy)}
min_free_mb = {self.min_free_mb}

[database]
url = {toml_value(self.db_url)}

[completion]
quiet_period_s = {self.quiet_period_s}
scan_interval_s = {self.scan_interval_s}
max_open_s = {self.max_open_s}

[jobs]
lease_s = {self.lease_s}
heartbeat_s = {self.heartbeat_s}
dispatch_interval_s = 0.5

[jobs.retry]
max_attempts = {self.job_max_attempts}
initial_delay_s = 1
max_delay_s = 5

[delivery]
interval_s = 0.5
timeout_s = {self.delivery_timeout_s}

[delivery.retry]
max_attempts = {self.delivery_max_attempts}
initial_delay_s = {self.delivery_retry_delay_s}
backoff_factor = 1.5
max_delay_s = 5

[outputs]
send_empty_seg = {toml_value(self.send_empty_seg)}

[selection]
min_coverage_mm = {self.min_coverage_mm}

[analysis]
model = {toml_value(self.model)}
device = {toml_value(self.device)}

[audit]
file = {toml_value(str(self.workdir / "audit.log"))}

[observability]
port = {self.metrics_port}
worker_port = {self.worker_metrics_port}

[logging]
level = "INFO"
format = "json"
{destinations}
{self.extra}
"""
        path = self.workdir / "dicom-node.toml"
        self.workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """Run ``dicom-node ARGS`` as a user would (in the checkout, unless ``cwd``), and return the finished process."""
    if env is None and cwd != REPO:  # outside the checkout, the package is found through PYTHONPATH
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "dicom_node", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or os.environ.copy(),
        cwd=cwd,
    )


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, step_s: float = 0.25) -> None:
    """Poll ``predicate`` every ``step_s`` until it holds; fail after ``timeout_s`` naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from the node's metrics server on 127.0.0.1; (status, body), errors included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metric_value(body: str, name: str) -> float:
    """The value of one sample (name with its labels) in a Prometheus text page."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", body, re.MULTILINE)
    assert match is not None, f"{name} missing from /metrics"
    return float(match.group(1))


def echo_ok(port: int, calling_ae: str = "ECHOSCU", called_ae: str = NODE_AE) -> bool:
    """True when a C-ECHO to the peer (by default the node) on loopback ``port`` succeeds."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.network_timeout = 2
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return getattr(status, "Status", None) == 0


def terminate(process: subprocess.Popen[Any], timeout_s: float = 30.0) -> int:
    """SIGTERM, as systemd stops a service, then SIGKILL after ``timeout_s``; the exit code.

    A process that has already exited is only reaped.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


class NodeProcess:
    """``dicom-node run`` (or ``scp``) in a child process, as systemd would start it."""

    def __init__(self, config: NodeConfig, command: str = "run") -> None:
        self.config = config
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = config.workdir / ("node.log" if command == "run" else f"{command}.log")

    def start(self, timeout_s: float = 30.0) -> NodeProcess:
        config_path = self.config.write()
        if self.process is None:
            migrated = cli("db", "upgrade", "--config", str(config_path))
            assert migrated.returncode == 0, migrated.stderr
        with self.log_path.open("ab") as log:  # the child has its own copy
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dicom_node", self.command, "--config", str(config_path)],
                stdout=log,
                stderr=log,
                cwd=REPO,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"node exited with {self.process.returncode}: {self.log()}")
            if self.command == "worker":  # no listener to echo: alive after a moment is ready
                time.sleep(1.0)
                if self.process.poll() is None:
                    return self
            elif echo_ok(self.config.port) and self._observability_ready():
                return self
            time.sleep(0.2)
        # The caller gets no handle to stop it: a node left running would hold its ports and
        # take CPU from every later test of the session, turning one slow start into many.
        terminate(self.process)
        raise AssertionError(f"node did not answer C-ECHO within {timeout_s} s: {self.log()}")

    def _observability_ready(self) -> bool:
        """``run`` serves /metrics from its supervisor, which may start it just after its listeners answer."""
        if self.command != "run":
            return True
        try:
            with socket.create_connection(("127.0.0.1", self.config.metrics_port), timeout=1):
                return True
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        return terminate(self.process)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def restart(self) -> NodeProcess:
        """Start again on the same config, storage and database."""
        return self.start()


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file: everything after the File Meta Information."""
    ds = dcmread(path, stop_before_pixels=True)
    meta_length = int(ds.file_meta.FileMetaInformationGroupLength)
    # 128-byte preamble + "DICM" + group length element (12 bytes) + the rest of group 2
    return path.read_bytes()[132 + 12 + meta_length :]


def _nodelay(event: evt.Event) -> None:
    # Without it each C-STORE waits about 50 ms on Nagle's algorithm (see NOTES.md).
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def store_files(
    port: int,
    paths: list[Path],
    *,
    calling_ae: str = "TESTSCU",
    contexts: list[tuple[str, list[str]]] | None = None,
) -> list[Dataset | None]:
    """Send Part 10 files over one association with pynetdicom; return each status dataset.

    Files are sent as they are encoded (no decoding), so broken files reach the node
    exactly as broken as they are on disk.
    """
    # Send the encoded bytes as they are (no decode/re-encode by pynetdicom). The switch is
    # process-wide and tests send from several threads, so it is left on; the node's own
    # sender passes decoded data sets and does not depend on it.
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    if contexts is None:
        seen = []
        for path in paths:
            meta = dcmread(path, stop_before_pixels=True, specific_tags=[]).file_meta
            pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
            if pair not in seen:
                seen.append(pair)
        contexts = [(sop, [ts]) for sop, ts in seen]
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    assoc = keep_responses_for_senders(
        ae.associate("127.0.0.1", port, ae_title=NODE_AE, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
    )
    assert assoc.is_established, "association was not established"
    try:
        return [assoc.send_c_store(path) for path in paths]
    finally:
        if assoc.is_established:
            assoc.release()


#: In ``storescu -v`` output: the file being sent, then the peer's answer to it.
_SENDING = re.compile(r"Sending file: (.+)$")
_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


def storescu_responses(port: int, files: list[Path], *, calling_ae: str = "STORESCU", timeout_s: float = 300) -> dict[Path, str]:
    """Send ``files`` over one association with DCMTK's storescu; each file's answer ("Success", "Refused: ...").

    Tests that send from several threads at once use this rather than pynetdicom's
    requestor, which under CPU load sometimes hands a C-STORE response to its own reactor
    thread ("Received unexpected C-STORE service message") and then aborts. ``-nh`` goes
    on after a refusal, as a PACS sending a study does.
    """
    result = subprocess.run(
        ["/usr/bin/storescu", "-v", "-nh", "-aet", calling_ae, "-aec", NODE_AE, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, env=DCMTK_ENV, timeout=timeout_s,
    )
    answers: dict[Path, str] = {}
    current: Path | None = None
    for line in (result.stdout + result.stderr).splitlines():
        if sending := _SENDING.search(line):
            current = Path(sending.group(1).strip())
        elif (response := _RESPONSE.search(line)) and current is not None:
            answers[current] = response.group(1)
            current = None
    return answers


def status_code(status: Dataset | None) -> int | None:
    return None if status is None else int(status.Status)
