"""Where a listener's time goes, per instance: py-spy on the node under the ingest benchmark.

How to reproduce (from the top of the checkout; py-spy comes with the ``test`` extra and
needs ptrace rights on the node, e.g. root or ``kernel.yama.ptrace_scope = 0``)::

    .venv/bin/python -m tests.bench.ingest --receivers dicom-node --runs 1 --profile /tmp/prof
    .venv/bin/python -m tests.bench.profile /tmp/prof/dicom-node-run1.txt --instances 300

The benchmark starts ``py-spy record --format raw --threads --subprocesses`` on the node
once the node's worker is ready and stops it (SIGINT) right after the send, before the
node, so the profile covers the send and little else. Each sample is one thread's stack at one moment; py-spy leaves out threads
that are idle (blocked in ``select``, a lock or ``sleep``), so the samples are CPU time,
and a thread waiting for the GIL shows up where it waits (``take_gil`` is not visible to
py-spy: compare the CPU total against the wall clock instead).

The summary puts each sample in the first category (in the order of :data:`CATEGORIES`)
whose marker appears anywhere in its stack, and prints milliseconds of CPU per instance
in each, per process: what the acceptor spends in pynetdicom's PDU handling and its
polling loops, in our parse, in the file write and fsync, in the database statements and
commit, and what the scheduler and worker threads of the same process take meanwhile.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

#: (category, markers): the first category with a marker in a stack gets the sample.
#: Markers are substrings of py-spy's frame text ``function (file:line)``.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("worker: scheduler, ticks, jobs", ("apscheduler", "scheduler.py", "pipeline.py", "torch", "dicom_node/models/")),
    ("our parse and checks", ("ingest/instance.py",)),
    ("file fsync", ("InstanceStore._stage", "_fsync_file")),  # the received file's fsync (and its copy if on another file system)
    ("directory fsync", ("_fsync_path",)),  # the rest are directories': after the link, and mkdir's parents
    ("file publish (stat, link, rename, mkdir)", ("dicom/storage.py",)),
    ("db commit", ("commit (", "_commit_impl", "do_commit")),
    ("db statements", ("ingest/catalog.py", "sqlalchemy", "sqlite3", "psycopg")),
    ("group-commit hand-off", ("ingest/committer.py", "concurrent/futures")),
    ("our handler: logging, metrics, audit", ("ingest/scp.py", "logging/", "prometheus_client", "audit.py")),
    ("pynetdicom: writing the received data set", ("_recv_pdata", "dsutils.py", "dimse_messages.py", "SpoolingMessage", "_spool (")),
    ("pynetdicom: PDU decode and state machine", ("pdu.py", "pdu_items.py", "fsm.py", "dimse.py", "pdu_primitives.py")),
    ("pynetdicom: socket polling (select, sleep)", ("transport.py", "select", "sleep")),
    ("pynetdicom: reactor loops", ("dul.py", "association.py", "acse.py", "events.py")),
    ("other", ("",)),
)

#: ``--subprocesses`` prefixes each stack with its chain of processes, the recorded one last.
_PROCESS = re.compile(r'process (?P<pid>\d+):"[^"]*?dicom_node (?P<command>\w+)')


def categorise(stack: str) -> str:
    """The category of one collapsed stack (see :data:`CATEGORIES`)."""
    for name, markers in CATEGORIES:
        if any(marker in stack for marker in markers):
            return name
    return "other"


def read_samples(path: Path) -> dict[str, Counter[str]]:
    """Samples per category, per process (the ``process N`` prefix of ``--subprocesses``)."""
    by_process: dict[str, Counter[str]] = defaultdict(Counter)
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        chain = _PROCESS.findall(stack.split(";thread", 1)[0])
        # Children forked at boot keep the supervisor's command line: the pid tells them apart,
        # and their categories tell a listener (pynetdicom, catalog) from the worker.
        process = f"pid {chain[-1][0]} ({'the supervisor' if len(chain) == 1 else f'child of pid {chain[-2][0]}'}, " \
            f"command line '{chain[-1][1]}')" if chain else "node"
        by_process[process][categorise(stack)] += int(count)
    return by_process


def print_split(path: Path, n_instances: int, rate_hz: int) -> None:
    """Milliseconds of CPU per instance in each category, per process."""
    for process, counts in sorted(read_samples(path).items()):
        total = sum(counts.values())
        print(f"{process}: {total} samples at {rate_hz} Hz = {total / rate_hz:.2f} s of CPU, "
              f"{1000 * total / rate_hz / n_instances:.2f} ms per instance")
        for name, _ in CATEGORIES:
            if counts[name]:
                ms = 1000 * counts[name] / rate_hz / n_instances
                print(f"  {name:<45} {ms:6.2f} ms/instance  {100 * counts[name] / total:5.1f} %")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="a raw py-spy profile written by tests.bench.ingest --profile")
    parser.add_argument("--instances", type=int, required=True, help="instances received while it was recorded")
    parser.add_argument("--rate", type=int, default=250, help="py-spy's sampling rate (Hz) for that profile")
    args = parser.parse_args(argv)
    print_split(args.profile, args.instances, args.rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
