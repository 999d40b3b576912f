"""npm packages for the viewer tests, installed once into a cache outside the checkout.

Two kinds, both pinned in the repository:

* a folder's ``package.json`` + ``package-lock.json``, installed with ``npm ci``
  into ``<cache>/<digest of the manifests>`` (OHIF's parsers, puppeteer-core);
* one package's published tarball, fetched with ``npm pack`` and checked
  against the integrity (sha512) recorded next to the test: the built OHIF
  viewer, whose ~40 runtime dependencies are already bundled in its ``dist/``
  and so need not be installed.

The cache is ``$DICOM_NODE_NPM_CACHE`` or ``~/.cache/dicom-node/viewer-npm``.
Each entry is filled in a temporary folder and renamed into place, so an
interrupted or concurrent install never leaves a half-filled entry. Without
Node, npm or the registry the tests fail with the reason; they never skip.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

NPM_TIMEOUT_S = 600
LOCKED_MANIFESTS = ("package.json", "package-lock.json")


#: dcmjs 0.52 (OHIF's parser) does not load under Node 18, Debian 12's own nodejs.
MIN_NODE_MAJOR = 20


def tool(name: str) -> str:
    """The path of ``node`` or ``npm``, or a test failure that says how to install them."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Node.js {MIN_NODE_MAJOR}+ with npm (Debian 13: apt-get install nodejs npm)")
    if name == "node":
        _check_node_version(path)
    return path


def _check_node_version(node: str) -> None:
    """Fail with the reason when ``node`` is older than the parsers need (not later, with a SyntaxError)."""
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=60, check=False).stdout.strip()
    major = int(version.lstrip("v").split(".")[0]) if version.lstrip("v")[:1].isdigit() else 0
    if major < MIN_NODE_MAJOR:
        pytest.fail(
            f"{node} is Node.js {version or '(unknown version)'}; the viewer tests need {MIN_NODE_MAJOR}+ "
            "(Debian 12's nodejs is 18: take Node 20 from Debian 13 or NodeSource)"
        )


def cache_root() -> Path:
    configured = os.environ.get("DICOM_NODE_NPM_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "dicom-node" / "viewer-npm"


def _digest(folder: Path, names: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        path = folder / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b"") + b"\0")
    return digest.hexdigest()[:16]


def _fill_once(target: Path, ready: Path, fill: Callable[[Path], None]) -> Path:
    """Run ``fill`` on a staging folder that becomes ``target`` unless ``ready`` already exists."""
    if ready.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="install-", dir=target.parent))
    try:
        fill(staging)
        try:
            staging.rename(target)
        except OSError:
            if not ready.exists():  # not a concurrent install that won
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _npm(arguments: Sequence[str], cwd: Path, what: str, env: Mapping[str, str] | None = None) -> str:
    command = [tool("npm"), *arguments]
    try:
        completed = subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`npm {' '.join(arguments)}` took over {NPM_TIMEOUT_S} s: is the npm registry reachable?")
    if completed.returncode != 0:
        pytest.fail(
            f"`npm {' '.join(arguments)}` failed (exit {completed.returncode}); {what} needs the npm registry "
            f"(or a filled cache under {cache_root()}):\n{completed.stderr[-3000:]}"
        )
    return completed.stdout


def locked_packages(folder: Path, env: Mapping[str, str] | None = None) -> Path:
    """``npm ci`` of ``folder``'s manifests (``npm install`` while it has no lockfile); the install folder."""
    tool("node")
    present = [name for name in LOCKED_MANIFESTS if (folder / name).exists()]
    target = cache_root() / _digest(folder, LOCKED_MANIFESTS)

    def fill(staging: Path) -> None:
        for name in present:
            shutil.copy2(folder / name, staging / name)
        verb = "ci" if "package-lock.json" in present else "install"
        _npm([verb, "--no-audit", "--no-fund", "--ignore-scripts"], staging, f"{folder.name}'s packages", env)

    return _fill_once(target, target / "node_modules", fill)


def packed_package(spec: str, integrity: str) -> Path:
    """The unpacked tarball of ``spec`` (``name@version``), checked against its sha512 ``integrity``.

    Returns the tarball's ``package/`` folder.
    """
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        raise ValueError(f"integrity must be sha512-..., not {integrity!r}")
    target = cache_root() / ("pack-" + hashlib.sha256(f"{spec}\0{integrity}".encode()).hexdigest()[:16])

    def fill(staging: Path) -> None:
        _npm(["pack", spec, "--silent", "--pack-destination", str(staging)], staging, spec)
        (tarball,) = staging.glob("*.tgz")
        actual = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if actual != expected:
            pytest.fail(f"{spec}: the registry's tarball is not the pinned one (sha512-{actual} != {integrity})")
        with tarfile.open(tarball) as archive:
            archive.extractall(staging, filter="data")
        tarball.unlink()

    return _fill_once(target, target / "package", fill) / "package"
