"""The systemd units in systemd/: accepted by systemd-analyze, hardened, split as designed.

``systemd-analyze verify`` refuses a unit whose ExecStart= binary does not exist, and the
units name the installed one, /opt/dicom-node/.venv/bin/dicom-node. Rather than create
anything outside a temporary directory, each test verifies copies of the units in
``tmp_path`` in which that one path is replaced by this checkout's own
``.venv/bin/dicom-node``; the originals are checked to name exactly the installed path,
so the rewrite can hide nothing else. Nothing needs a running systemd (this runs in
containers too) or root.

Exposure scores measured with ``systemd-analyze security --offline=true`` (systemd 252,
Debian 12): listener 1.4, worker 1.6, single process 1.7, all "OK" (bands: SAFE < 1.0,
OK < 5.0, MEDIUM < 7.5, EXPOSED < 9.0, then UNSAFE). What remains is inherent: network
access, no PrivateUsers= (port 104, GPU device nodes), no IP allow-list (site-specific).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_node.config import load_settings
from tests.support.node import REPO

UNITS_DIR = REPO / "systemd"
LISTENER, WORKER, SINGLE, TARGET = (
    "dicom-node-scp.service",
    "dicom-node-worker.service",
    "dicom-node.service",
    "dicom-node.target",
)
SERVICES = (LISTENER, WORKER, SINGLE)
INSTALLED = "/opt/dicom-node/.venv/bin/dicom-node"
#: Fail when a change makes a unit noticeably more exposed than measured (see above).
MAX_EXPOSURE = 2.5
NVIDIA_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")

Unit = dict[str, dict[str, list[str]]]


def _tool(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).exists():
        pytest.fail(f"{name} is missing: install Debian's systemd package (tests/run-all.sh does)")
    return path


def parse_unit(path: Path) -> Unit:
    """Sections -> key -> values in order, as systemd reads them.

    A key may repeat (DeviceAllow=, SystemCallFilter=); an empty assignment resets the
    list, as in systemd, and is kept as ``[""]`` so that "set to empty" stays visible.
    """
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    logical: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not logical and (not raw.strip() or raw.lstrip().startswith(("#", ";"))):
            continue
        if raw.endswith("\\"):
            logical.append(raw[:-1])
            continue
        line = " ".join([*logical, raw]).strip()
        logical = []
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        values = section.setdefault(key.strip(), [])
        value = value.strip()
        if value:
            values.append(value)
        else:
            values[:] = [""]
    return unit


def _service(name: str) -> dict[str, list[str]]:
    return parse_unit(UNITS_DIR / name)["Service"]


def _one(values: dict[str, list[str]], key: str) -> str:
    assert key in values, f"{key}= missing"
    assert len(values[key]) == 1, f"{key}= set {len(values[key])} times"
    return values[key][0]


@pytest.fixture
def runnable_units(tmp_path: Path) -> Path:
    """Copies of the units whose ExecStart binary exists: this checkout's venv."""
    here = Path(sys.executable).with_name("dicom-node")
    assert here.exists(), f"{here} missing: install dicom-node into the venv (pip install -e .)"
    for name in (*SERVICES, TARGET):
        text = (UNITS_DIR / name).read_text(encoding="utf-8")
        (tmp_path / name).write_text(text.replace(INSTALLED, str(here)), encoding="utf-8")
    return tmp_path


def test_every_command_runs_the_installed_binary() -> None:
    for name in SERVICES:
        service = _service(name)
        for key in ("ExecStartPre", "ExecStart"):
            for command in service.get(key, []):
                assert command.startswith(INSTALLED + " "), f"{name}: {key}={command}"
        assert _one(service, "ExecReload") == "/bin/kill -HUP $MAINPID", name
    assert _one(_service(LISTENER), "ExecStart") == f"{INSTALLED} scp"
    assert _one(_service(WORKER), "ExecStart") == f"{INSTALLED} worker"
    assert _one(_service(SINGLE), "ExecStart") == f"{INSTALLED} run"


def test_systemd_analyze_verify_accepts_every_unit(runnable_units: Path) -> None:
    names = [*SERVICES, TARGET]
    result = subprocess.run(
        [_tool("systemd-analyze"), "verify", "--man=no", "--recursive-errors=no", *names],
        cwd=runnable_units,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Warnings (an unknown key, a bad value) do not change the exit status: fail on them too.
    ours = [line for line in result.stderr.splitlines() if any(name in line for name in names)]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_exposure_stays_low(runnable_units: Path, name: str) -> None:
    result = subprocess.run(
        [_tool("systemd-analyze"), "security", "--offline=true", "--no-pager", str(runnable_units / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    score, band = float(match[1]), match[2]
    assert score <= MAX_EXPOSURE and band in {"SAFE", "OK"}, f"{name}: {score} {band}\n{result.stdout}"


@pytest.mark.parametrize("name", SERVICES)
def test_common_hardening_and_environment(name: str) -> None:
    service = _service(name)
    expected = {
        "User": "dicom-node",
        "Group": "dicom-node",
        "StateDirectory": "dicom-node",
        "LogsDirectory": "dicom-node",
        "ConfigurationDirectory": "dicom-node",
        "WorkingDirectory": "/var/lib/dicom-node",
        "EnvironmentFile": "-/etc/dicom-node/dicom-node.env",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "SystemCallArchitectures": "native",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "Restart": "on-failure",
        "DevicePolicy": "closed",
    }
    for key, value in expected.items():
        assert _one(service, key) == value, f"{name}: {key}"
    assert service["SystemCallFilter"][0] == "@system-service", name
    assert "DICOM_NODE_CONFIG=/etc/dicom-node/dicom-node.toml" in _one(service, "Environment").split()
    assert re.fullmatch(r"\d+s", _one(service, "TimeoutStopSec")), name
    assert "DynamicUser" not in service, "a static user shares storage between the units"


def test_only_the_listener_gets_the_port_capability() -> None:
    for name in (LISTENER, SINGLE):
        service = _service(name)
        assert _one(service, "CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE", name
        assert _one(service, "AmbientCapabilities") == "CAP_NET_BIND_SERVICE", name
    worker = _service(WORKER)
    assert _one(worker, "CapabilityBoundingSet") == "", "the worker needs no capability"
    assert worker.get("AmbientCapabilities", [""]) == [""]


def test_exactly_one_split_unit_upgrades_the_database() -> None:
    upgrading = [
        name for name in (LISTENER, WORKER) if any("db upgrade" in c for c in _service(name).get("ExecStartPre", []))
    ]
    assert upgrading == [LISTENER]
    assert _one(_service(SINGLE), "ExecStartPre") == f"{INSTALLED} db upgrade"
    assert LISTENER in parse_unit(UNITS_DIR / WORKER)["Unit"]["After"][0].split(), "worker waits for the migration"


def test_the_listener_has_no_device_and_the_worker_has_the_gpu() -> None:
    listener = _service(LISTENER)
    assert _one(listener, "PrivateDevices") == "yes"
    assert "DeviceAllow" not in listener
    assert _one(listener, "MemoryDenyWriteExecute") == "yes"
    for name in (WORKER, SINGLE):
        service = _service(name)
        assert _one(service, "PrivateDevices") == "no", name
        allowed = {value.split()[0]: value.split()[1] for value in service["DeviceAllow"]}
        for node in NVIDIA_NODES:
            assert allowed.get(node) == "rw", f"{name}: {node}"
        assert allowed.get("char-nvidia*") == "rw", f"{name}: every GPU (/dev/nvidia0, ...)"
        assert "MemoryDenyWriteExecute" not in service, f"{name}: CUDA and PyTorch compile kernels at run time"


def test_target_groups_the_split_units_and_the_single_unit_conflicts() -> None:
    target = parse_unit(UNITS_DIR / TARGET)
    assert set(target["Unit"]["Wants"][0].split()) == {LISTENER, WORKER}
    assert target["Install"]["WantedBy"] == ["multi-user.target"]
    for name in (LISTENER, WORKER):
        unit = parse_unit(UNITS_DIR / name)
        assert unit["Unit"]["PartOf"] == [TARGET], name
    conflicts = parse_unit(UNITS_DIR / SINGLE)["Unit"]["Conflicts"][0].split()
    assert set(conflicts) == {TARGET, LISTENER, WORKER}


def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group", "shadow", "gshadow"):
        (tmp_path / "etc" / name).touch()
    result = subprocess.run(
        [_tool("systemd-sysusers"), f"--root={tmp_path}", str(UNITS_DIR / "dicom-node.sysusers.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    user = (tmp_path / "etc" / "passwd").read_text().strip().split(":")
    assert user[0] == "dicom-node" and user[5] == "/var/lib/dicom-node" and user[6] == "/usr/sbin/nologin"
    assert (tmp_path / "etc" / "group").read_text().startswith("dicom-node:")


def test_env_example_names_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (UNITS_DIR / "dicom-node.env.example").read_text(encoding="utf-8")
    assert "0600" in text
    assignments = dict(re.findall(r"^#?(DICOM_NODE_[A-Z_]+)=(\S+)$", text, re.M))
    assert {"DICOM_NODE_DATABASE__URL", "DICOM_NODE_TLS__PRIVATE_KEY_PASSWORD"} <= set(assignments)
    for key, value in assignments.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(REPO / "config" / "dicom-node.toml")
    assert settings.database.url == assignments["DICOM_NODE_DATABASE__URL"]
    assert settings.tls.private_key_password is not None
