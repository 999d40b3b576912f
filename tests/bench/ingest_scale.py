"""Ingest rate with 1M instance rows in the database against an empty database.

The requirement: the ingest rate with 1,000,000 instance rows in the database must be the
same as with an empty database. The rows are made with a bulk insert, not by sending them.

What it measures
    For every scenario, a fresh database gets the schema from the node's own migration
    (``dicom-node db upgrade``), then:

    empty   nothing more;
    1M      a bulk ``INSERT ... SELECT`` over ``generate_series`` (a recursive CTE on
            SQLite) of 5,000 studies x 1 series x 200 instances, all complete and
            received days ago, plus one succeeded job per study, as on a node that has
            been running for a while. UIDs are under the test root, spread over the key
            range so the sent UIDs land among them in the indexes. Then
            ``VACUUM (ANALYZE)`` and ``CHECKPOINT`` (what autovacuum and the checkpointer
            would do soon after), so neither runs in the background during the send.
            The load time and the database size are reported.

    Then ``dicom-node run`` starts on that database (product completion defaults: quiet
    period 30 s, scan every 5 s, so the scan runs during the send) and DCMTK's
    ``/usr/bin/storescu`` (``TCP_NODELAY=1``) sends synthetic CT slices (default 300 of
    512x512 int16), first over one association, then split over K concurrent
    associations (default 4), each its own study. The time is the wall clock of the
    storescu processes. After each send the benchmark counts the rows of the new studies
    in the database and the files on disk and exits non-zero if one is missing.

    Then, with the node stopped, the node's own ``Catalog`` records 2,000 more instances
    (200 to a study), one transaction each, in this process: the database's share of
    ingest alone, without DICOM or files. It is the only part whose work could grow with
    the rows already there, and it is much less noisy than the sends on a shared machine.

    Runs are interleaved (empty, 1M, empty, 1M, ...) to spread machine noise, and the
    medians are reported with the ratio 1M / empty: the requirement is a ratio of 1. A
    measure is called a SLOWDOWN only when its ratio is under 0.9 and every 1M run was
    slower than every empty run; under 0.9 with overlapping runs it is called noise.

Why the statements are also explained
    A rate that does not drop is evidence; a plan is the reason. After the first 1M run
    the benchmark runs the node's own code (the catalog's writes for an instance, the
    duplicate check, the completion scan, the job claim and lease scan, the metrics
    counts, and ``dicom-node status``) against the 1M database, records the SQL it sends,
    and prints each statement's plan (``EXPLAIN (ANALYZE, BUFFERS)`` inside a transaction
    that is rolled back; on SQLite ``EXPLAIN QUERY PLAN``). A pass over every row of
    study, series or instance (PostgreSQL ``Seq Scan``, SQLite ``SCAN``) is marked SCAN.

Run it from the top of the checkout (PostgreSQL on 127.0.0.1:5432, trust auth, user
postgres; it creates and drops databases named ``dicom_node_bench_<hex>``)::

    .venv/bin/python -m tests.bench.ingest_scale                       # PostgreSQL, 3 runs
    .venv/bin/python -m tests.bench.ingest_scale --database both --runs 1
    .venv/bin/python -m tests.bench.ingest_scale --instances 100 --size 256 --rows 200000
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydicom.uid import generate_uid
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Settings, load_settings
from dicom_node.db import state
from dicom_node.db.models import utcnow
from dicom_node.db.session import create_db_engine, session_factory
from dicom_node.ingest.catalog import Catalog, study_summaries
from dicom_node.ingest.completion import CompletionRule, complete_due_studies
from dicom_node.ingest.instance import ReceivedInstance
from dicom_node.jobs import queue
from dicom_node.retry import RetryPolicy
from tests.bench.ingest import (
    START_TIMEOUT_S,
    STORESCU,
    BenchmarkError,
    Endpoint,
    count_files,
    send_series,
    tool_version,
)
from tests.support.node import NODE_AE, NodeConfig, NodeProcess, cli
from tests.support.postgres import PG_ADMIN_URL
from tests.support.synthetic_ct import TEST_UID_PREFIX, SeriesSpec, write_series

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
#: Bulk UIDs end in 10**7 + (i * SCRAMBLE_FACTOR) % SCRAMBLE_MODULUS: eight digits, no leading
#: zero, distinct for i below the modulus (the factor is prime to 2, 3 and 5).
SCRAMBLE_OFFSET = 10**7
SCRAMBLE_MODULUS = 9 * 10**7
SCRAMBLE_FACTOR = 48271
#: About the size of one 512x512 int16 CT file; only stored, never read.
BULK_FILE_BYTES = 526_000
#: A ratio under 1 - this is reported as a slowdown (the machine is shared and noisy).
NOISE_TOLERANCE = 0.10
#: ``max_associations`` in tests/support/node.py.
NODE_MAX_ASSOCIATIONS = 8
#: A full scan of one of these tables at 1M rows is the finding this benchmark looks for.
SCAN_PATTERNS = {
    "postgresql": re.compile(r"Seq Scan on (study|series|instance)\b"),
    "sqlite": re.compile(r"\bSCAN (?:TABLE )?(study|series|instance)\b"),
}
#: Statements that touch the node's tables (the dialect's own start-up queries do not).
TABLE_STATEMENT = re.compile(
    r"^\s*(SELECT|UPDATE|INSERT|DELETE|WITH)\b.*\b(study|series|instance|job|delivery|output_object)\b",
    re.IGNORECASE | re.DOTALL,
)


# --------------------------------------------------------------------------- databases


class Database(Protocol):
    """One fresh database for one scenario of one run."""

    kind: str

    def create(self, workdir: Path) -> str: ...

    def size_bytes(self) -> int: ...

    def drop(self) -> None: ...


@dataclass
class PostgresDatabase:
    """``CREATE DATABASE dicom_node_bench_<hex>`` on the local server; dropped with FORCE."""

    kind: str = "postgresql"
    name: str = field(default_factory=lambda: f"dicom_node_bench_{secrets.token_hex(6)}")

    @contextmanager
    def _admin(self) -> Iterator[Connection]:
        """A connection to the server's ``postgres`` database, outside any transaction."""
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                yield connection
        finally:
            admin.dispose()

    def create(self, workdir: Path) -> str:
        with self._admin() as connection:
            connection.execute(text(f'CREATE DATABASE "{self.name}"'))
        return PG_URL.format(name=self.name)

    def size_bytes(self) -> int:
        with self._admin() as connection:
            return int(connection.execute(text("SELECT pg_database_size(:n)"), {"n": self.name}).scalar_one())

    def drop(self) -> None:
        with self._admin() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


@dataclass
class SqliteDatabase:
    """A new SQLite file in the run's working directory (removed with it)."""

    kind: str = "sqlite"
    path: Path | None = None

    def create(self, workdir: Path) -> str:
        workdir.mkdir(parents=True, exist_ok=True)
        self.path = workdir / "node.db"
        return f"sqlite:///{self.path}"

    def size_bytes(self) -> int:
        assert self.path is not None
        files = [self.path, self.path.with_name(self.path.name + "-wal")]
        return sum(path.stat().st_size for path in files if path.exists())

    def drop(self) -> None:
        return  # the file goes with the run's working directory


def make_database(kind: str) -> Database:
    if kind == "postgresql":
        return PostgresDatabase()
    if kind == "sqlite":
        return SqliteDatabase()
    raise ValueError(f"unknown database {kind!r}")


def check_postgres() -> str:
    """The server version, or a BenchmarkError that says PostgreSQL is missing."""
    admin = create_engine(PG_ADMIN_URL)
    try:
        with admin.connect() as connection:
            return str(connection.execute(text("SHOW server_version")).scalar_one())
    except Exception as exc:  # noqa: BLE001 - any failure means the server is not usable
        raise BenchmarkError(f"PostgreSQL is required on 127.0.0.1:5432 with trust auth ({exc})") from exc
    finally:
        admin.dispose()


# --------------------------------------------------------------------------- bulk load


@dataclass(frozen=True)
class BulkShape:
    """How many rows the bulk load makes, and how they nest."""

    instances: int
    studies: int
    series_per_study: int = 1

    @property
    def series(self) -> int:
        return self.studies * self.series_per_study

    @property
    def instances_per_series(self) -> int:
        return -(-self.instances // self.series)  # ceiling: the last series may be short


@dataclass(frozen=True)
class LoadReport:
    """What the bulk load took and left behind."""

    load_s: float
    maintenance_s: float
    size_bytes: int


class Sql:
    """The few expressions that differ between PostgreSQL and SQLite in the bulk load."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect

    def numbers(self) -> str:
        """A CTE ``g(i)`` of 1..:n; SQLite has no generate_series without an extension."""
        if self.dialect == "postgresql":
            return "WITH g(i) AS (SELECT generate_series(1, :n))"
        return "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < :n)"

    @staticmethod
    def uid(kind: int, counter: str) -> str:
        """``<test root><scrambled counter>.<kind>``, unique per kind.

        The counter is scrambled (a multiplication modulo 9e7, a bijection) so the bulk
        UIDs spread over the whole key range, and the UIDs the benchmark sends, made with
        ``generate_uid`` under the same root, land among them in the unique indexes, as a
        new study's UIDs do in a real archive, not after them at one edge of the B-tree.
        """
        scrambled = f"({SCRAMBLE_OFFSET} + (CAST({counter} AS bigint) * {SCRAMBLE_FACTOR}) % {SCRAMBLE_MODULUS})"
        return f"('{TEST_UID_PREFIX}' || CAST({scrambled} AS text) || '.{kind}')"

    def minutes_after_base(self, minutes: str) -> str:
        """:base (naive UTC, days ago) plus ``minutes``: every study received at its own time."""
        if self.dialect == "postgresql":
            return f"(CAST(:base AS timestamp) + ({minutes}) * interval '1 minute')"
        return f"datetime(:base, '+' || ({minutes}) || ' minutes')"


def bulk_statements(sql: Sql) -> list[tuple[str, str]]:
    """(table, INSERT ... SELECT) for study, series, instance and job, in FK order.

    Row ``i`` of each table gets id ``i``, so parents are found by integer division and
    no join is needed: each statement is one pass over ``generate_series``.
    """
    study_of_series = "((i - 1) / :sps + 1)"
    series_of_instance = "((i - 1) / :ips + 1)"
    study_of_instance = "(((i - 1) / :ips) / :sps + 1)"
    at = sql.minutes_after_base
    study = f"""{sql.numbers()}
        INSERT INTO study (id, study_instance_uid, state, generation, opened_at, last_received_at,
                           completed_at, completion_reason, created_at)
        SELECT i, {sql.uid(1, "i")}, 'complete', 1, {at("i")}, {at("i")}, {at("i")}, 'quiet', {at("i")}
        FROM g"""
    series = f"""{sql.numbers()}
        INSERT INTO series (id, study_id, series_instance_uid, modality, series_number, state,
                            first_received_at, last_received_at, completed_at)
        SELECT i, {study_of_series}, {sql.uid(2, "i")}, 'CT', (i - 1) % :sps + 1, 'complete',
               {at(study_of_series)}, {at(study_of_series)}, {at(study_of_series)}
        FROM g"""
    path = " || '/' || ".join((sql.uid(1, study_of_instance), sql.uid(2, series_of_instance), sql.uid(3, "i")))
    path += " || '.dcm'"
    instance = f"""{sql.numbers()}
        INSERT INTO instance (id, series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid,
                              instance_number, path, size_bytes, calling_ae_title, study_generation, received_at)
        SELECT i, {series_of_instance}, {sql.uid(3, "i")}, '{CT_IMAGE_STORAGE}', '{EXPLICIT_VR_LE}',
               (i - 1) % :ips + 1, {path}, {BULK_FILE_BYTES}, 'PACS', 1, {at(study_of_instance)}
        FROM g"""
    job = f"""{sql.numbers()}
        INSERT INTO job (id, study_id, study_generation, model_key, state, attempts, max_attempts,
                         next_attempt_at, created_at, started_at, finished_at)
        SELECT i, i, 1, 'bench-bulk', 'succeeded', 1, 3, {at("i")}, {at("i")}, {at("i")}, {at("i")}
        FROM g"""
    return [("study", study), ("series", series), ("instance", instance), ("job", job)]


def bulk_load(url: str, shape: BulkShape, database: Database) -> LoadReport:
    """Fill the migrated database with ``shape`` rows in one transaction, then maintain it."""
    sql = Sql(database.kind)
    base = (utcnow() - datetime.timedelta(days=60)).replace(microsecond=0)
    common = {
        "base": base.strftime("%Y-%m-%d %H:%M:%S"),
        "sps": shape.series_per_study,
        "ips": shape.instances_per_series,
    }
    counts = {"study": shape.studies, "series": shape.series, "instance": shape.instances, "job": shape.studies}
    engine = create_engine(url)
    try:
        started = time.perf_counter()
        with engine.begin() as connection:
            for table, statement in bulk_statements(sql):
                connection.execute(text(statement), {**common, "n": counts[table]})
            if database.kind == "postgresql":
                for table in counts:  # explicit ids leave the SERIAL sequences at 1
                    connection.execute(
                        text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
                    )
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        maintain(engine, database.kind)
        maintenance_s = time.perf_counter() - started
    finally:
        engine.dispose()
    return LoadReport(load_s, maintenance_s, database.size_bytes())


def maintain(engine: Engine, kind: str) -> None:
    """What autovacuum and the checkpointer would do soon: done now, not during the send."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if kind == "postgresql":
            connection.execute(text("VACUUM (ANALYZE)"))
            connection.execute(text("CHECKPOINT"))
        else:
            connection.execute(text("ANALYZE"))
            connection.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))


def instance_rows(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM instance")).scalar_one())
    finally:
        engine.dispose()


def stored_in_studies(url: str, study_uids: list[str]) -> int:
    """Instance rows recorded for these studies, counted with plain SQL (not the node's code)."""
    engine = create_engine(url)
    marks = ", ".join(f":u{k}" for k in range(len(study_uids)))
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    text(
                        "SELECT count(*) FROM instance JOIN series ON series.id = instance.series_id "
                        f"JOIN study ON study.id = series.study_id WHERE study.study_instance_uid IN ({marks})"
                    ),
                    {f"u{k}": uid for k, uid in enumerate(study_uids)},
                ).scalar_one()
            )
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class SentSeries:
    """One generated series on disk, in its own study."""

    directory: Path
    study_instance_uid: str
    n_instances: int
    n_bytes: int


@dataclass(frozen=True)
class Workload:
    """What each run sends: one series over one association, then K series at once."""

    single: SentSeries
    concurrent: list[SentSeries]

    @property
    def study_uids(self) -> list[str]:
        return [self.single.study_instance_uid, *(s.study_instance_uid for s in self.concurrent)]

    @property
    def n_concurrent(self) -> int:
        return sum(s.n_instances for s in self.concurrent)

    @property
    def n_instances(self) -> int:
        return self.single.n_instances + self.n_concurrent


def make_series(directory: Path, n_slices: int, size: int) -> SentSeries:
    spec = SeriesSpec(n_slices=n_slices, rows=size, columns=size)
    paths = write_series(spec, directory)
    return SentSeries(directory, spec.study_instance_uid, len(paths), sum(p.stat().st_size for p in paths))


def make_workload(root: Path, instances: int, associations: int, size: int) -> Workload:
    """The same files are sent in every run: each run has its own database and storage."""
    single = make_series(root / "single", instances, size)
    shares = [instances // associations + (1 if k < instances % associations else 0) for k in range(associations)]
    concurrent = [make_series(root / f"assoc{k}", n, size) for k, n in enumerate(shares)]
    return Workload(single, concurrent)


def send_concurrently(series: list[SentSeries], endpoint: Endpoint) -> float:
    """One storescu per series, all at once; the wall clock from the first start to the last exit."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(series)) as pool:
        futures = [pool.submit(send_series, s.directory, endpoint) for s in series]
        for future in futures:
            future.result()
    return time.perf_counter() - started


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class RunResult:
    """One scenario of one run: a rate per measure (see :func:`measure_once`)."""

    database: str
    scenario: str
    rows_before: int
    rates: dict[str, float]
    load: LoadReport | None


@dataclass(frozen=True)
class Scenario:
    """A database kind and how many instance rows it holds before the send."""

    database: str
    name: str
    shape: BulkShape | None


def start_node(workdir: Path, url: str) -> NodeProcess:
    # Product completion defaults: the studies stay open during the send and the scan runs.
    config = NodeConfig(workdir=workdir, database_url=url, model="threshold", quiet_period_s=30.0, scan_interval_s=5.0)
    node = NodeProcess(config)
    try:
        node.start(timeout_s=START_TIMEOUT_S)
    except AssertionError as exc:
        raise BenchmarkError(f"dicom-node did not start: {exc}") from exc
    return node


def migrate(workdir: Path, url: str) -> Path:
    """The schema comes from the node's own migration, as an operator would install it."""
    config_path = NodeConfig(workdir=workdir, database_url=url).write()
    done = cli("db", "upgrade", "--config", str(config_path))
    if done.returncode != 0:
        raise BenchmarkError(f"dicom-node db upgrade failed:\n{done.stderr[-4000:]}")
    return config_path


def check_stored(url: str, workload: Workload, node: NodeProcess) -> None:
    """Every sent instance has its row and its file, or the run fails."""
    in_db = stored_in_studies(url, workload.study_uids)
    on_disk = count_files(node.config.storage_root, "*.dcm", skip=(".incoming",))
    if in_db != workload.n_instances or on_disk != workload.n_instances:
        raise BenchmarkError(
            f"sent {workload.n_instances} instances; {in_db} rows in the DB, {on_disk} files on disk"
        )


def measure_once(
    scenario: Scenario, workload: Workload, workdir: Path, *, catalog_records: int, explain: bool
) -> RunResult:
    """Fresh database (bulk-loaded or not), fresh node; both sends; the catalog alone; clean up."""
    database = make_database(scenario.database)
    node: NodeProcess | None = None
    try:
        url = database.create(workdir)
        config_path = migrate(workdir, url)
        load = bulk_load(url, scenario.shape, database) if scenario.shape else None
        rows_before = instance_rows(url)
        # Flush what is dirty now (the generated series, the bulk load), or the kernel's
        # writeback of it competes with the node's fsyncs in whichever run comes first.
        os.sync()
        node = start_node(workdir, url)
        endpoint = Endpoint(NODE_AE, node.config.port)
        rates = {"1 assoc": workload.single.n_instances / send_series(workload.single.directory, endpoint)}
        rates[f"{len(workload.concurrent)} assocs"] = workload.n_concurrent / send_concurrently(
            workload.concurrent, endpoint
        )
        check_stored(url, workload, node)
        node.stop()
        node = None
        if catalog_records:
            rates["catalog"] = catalog_rate(config_path, catalog_records)
        if explain:
            print_explained(scenario, explain_hot_statements(config_path, scenario.database))
        return RunResult(scenario.database, scenario.name, rows_before, rates, load)
    finally:
        if node is not None and node.process is not None:
            node.stop()
        database.drop()
        shutil.rmtree(workdir, ignore_errors=True)


def catalog_rate(config_path: Path, records: int) -> float:
    """Instances recorded per second by the node's :class:`Catalog` alone, one commit each.

    The database is the only part of ingest whose work could grow with the rows already
    there. Timed without DICOM, files or file fsyncs (what one association's instances
    cost the group committer), it is much less noisy than the sends on a shared machine.
    """
    settings = load_settings(config_path)
    engine = create_db_engine(settings.database)
    catalog = Catalog(engine, settings.storage.duplicate_policy)
    items = probe_instances(records)
    try:
        with engine.connect():
            pass  # connect and let the dialect initialise outside the timing
        started = time.perf_counter()
        for item in items:
            result = catalog.record_batch([item])[0]
            if isinstance(result, Exception):
                raise BenchmarkError(f"the catalog refused a probe instance: {result!r}")
        return records / (time.perf_counter() - started)
    finally:
        catalog.close()
        engine.dispose()


# --------------------------------------------------------------------------- explain


@dataclass(frozen=True)
class Action:
    """Product code whose SQL is explained; ``hot`` when it runs while instances arrive."""

    label: str
    hot: bool
    run: Callable[[], object]


@dataclass(frozen=True)
class Explained:
    """The plan of one statement the node sent."""

    label: str
    hot: bool
    statement: str
    plan: list[str]
    scans: list[str]


@contextmanager
def captured(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """The (SQL, parameters) the engine sends while the block runs."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def rolled_back(sessions: sessionmaker[Session], work: Callable[[Session], object]) -> Callable[[], object]:
    """Run ``work`` in a session that is rolled back: a scan must not change the database."""

    def run() -> object:
        with sessions() as session:
            try:
                return work(session)
            finally:
                session.rollback()

    return run


def probe_instances(count: int, per_series: int = 200) -> list[ReceivedInstance]:
    """``count`` new instances, ``per_series`` to a study, UIDs made as a modality would."""
    items: list[ReceivedInstance] = []
    while len(items) < count:
        study_uid, series_uid = generate_uid(TEST_UID_PREFIX), generate_uid(TEST_UID_PREFIX)
        items += [probe_instance(study_uid, series_uid, k + 1) for k in range(min(per_series, count - len(items)))]
    return items


def probe_instance(study_uid: str, series_uid: str, number: int) -> ReceivedInstance:
    sop_uid = generate_uid(TEST_UID_PREFIX)
    return ReceivedInstance(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=CT_IMAGE_STORAGE,
        transfer_syntax_uid=EXPLICIT_VR_LE,
        modality="CT",
        series_number=2,
        instance_number=number,
        calling_ae_title="STORESCU",
        path=f"{study_uid}/{series_uid}/{sop_uid}.dcm",
        size_bytes=BULK_FILE_BYTES,
    )


def hot_actions(settings: Settings, engine: Engine, sessions: sessionmaker[Session]) -> list[Action]:
    """The node's database work, through the node's own functions, in the order it happens."""
    catalog = Catalog(engine, settings.storage.duplicate_policy)
    study_uid, series_uid = generate_uid(TEST_UID_PREFIX), generate_uid(TEST_UID_PREFIX)
    first, second = probe_instance(study_uid, series_uid, 1), probe_instance(study_uid, series_uid, 2)
    rule = CompletionRule.from_settings(settings.completion)
    retry = RetryPolicy.from_settings(settings.jobs.retry)
    lease = datetime.timedelta(seconds=settings.jobs.lease_s)
    return [
        Action("C-STORE: duplicate check", True, lambda: catalog.is_stored(first.sop_instance_uid)),
        Action("C-STORE: first instance of a new study", True, lambda: catalog.record_batch([first])),
        Action("C-STORE: next instance of an open study", True, lambda: catalog.record_batch([second])),
        Action("tick: completion scan", True, rolled_back(sessions, lambda s: complete_due_studies(s, rule, utcnow()))),
        Action(
            "tick: job claim",
            True,
            rolled_back(sessions, lambda s: queue.claim(s, owner="bench", lease=lease, now=utcnow())),
        ),
        Action(
            "tick: lease scan",
            True,
            rolled_back(sessions, lambda s: queue.reap_expired_leases(s, policy=retry, now=utcnow())),
        ),
        Action(
            "metrics scrape",
            True,
            lambda: (state.studies_by_state(engine), state.jobs_by_state(engine), state.deliveries_by_state(engine)),
        ),
        Action("dicom-node status (operator)", False, rolled_back(sessions, study_summaries)),
    ]


def explain_hot_statements(config_path: Path, kind: str) -> list[Explained]:
    """Run each action with the product engine, capture its SQL, and explain every statement."""
    settings = load_settings(config_path)
    engine = create_db_engine(settings.database)
    try:
        with engine.connect():
            pass  # the dialect's own start-up queries happen here, not in the capture
        sessions = session_factory(engine)
        explained = []
        for action in hot_actions(settings, engine, sessions):
            with captured(engine) as statements:
                action.run()
            for statement, parameters in statements:
                if TABLE_STATEMENT.match(statement):
                    plan = explain(engine, kind, statement, parameters)
                    scans = sorted(set(SCAN_PATTERNS[kind].findall("\n".join(plan))))
                    explained.append(Explained(action.label, action.hot, statement, plan, scans))
        return explained
    finally:
        engine.dispose()


def explain(engine: Engine, kind: str, statement: str, parameters: Any) -> list[str]:
    """The plan lines; on PostgreSQL with actual times, in a transaction rolled back."""
    raw = engine.raw_connection()
    try:
        if kind == "sqlite":
            cursor = raw.cursor()
            rows = cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
            return [str(row[-1]) for row in rows]
        return _explain_postgres(raw.driver_connection, statement, parameters)
    finally:
        raw.rollback()
        raw.close()


def _explain_postgres(connection: Any, statement: str, parameters: Any) -> list[str]:
    import psycopg  # only the PostgreSQL path needs it; client-side binding lets EXPLAIN take parameters

    for options in ("ANALYZE, BUFFERS", "COSTS"):
        try:
            with psycopg.ClientCursor(connection) as cursor:
                cursor.execute(f"EXPLAIN ({options}) {statement}", parameters)
                return [row[0] for row in cursor.fetchall()]
        except psycopg.errors.UniqueViolation:
            connection.rollback()  # the node already inserted this row: plan it without running it
        finally:
            connection.rollback()
    raise BenchmarkError(f"cannot explain: {statement}")


def one_line(statement: str, width: int = 160) -> str:
    flat = " ".join(statement.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def print_explained(scenario: Scenario, explained: list[Explained]) -> None:
    print(f"=== plans of the node's statements, {scenario.database}, {scenario.name} instance rows ===")
    for item in explained:
        mark = "SCAN " + ",".join(item.scans) if item.scans else "index"
        print(f"\n[{mark}] {item.label}{'' if item.hot else ' (not on the ingest path)'}")
        print(f"  SQL: {one_line(item.statement)}")
        for line in item.plan:
            print(f"    {line}")
    flagged = [item for item in explained if item.scans]
    print()
    if not flagged:
        print("every statement is an index lookup or touches only small tables")
    for item in flagged:
        where = "ingest path / periodic tick" if item.hot else "operator command"
        print(f"FULL SCAN of {', '.join(item.scans)} [{where}] {item.label}: {one_line(item.statement, 120)}")
    print(flush=True)


# --------------------------------------------------------------------------- report


def rows_label(rows: int) -> str:
    if rows == 0:
        return "empty"
    if rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    if rows % 1_000 == 0:
        return f"{rows // 1_000}k"
    return str(rows)


def median_rates(results: list[RunResult]) -> dict[str, float]:
    return {measure: statistics.median(r.rates[measure] for r in results) for measure in results[0].rates}


def grouped(results: list[RunResult]) -> dict[str, dict[str, list[RunResult]]]:
    """database -> scenario -> its runs, in the order they ran."""
    groups: dict[str, dict[str, list[RunResult]]] = {}
    for result in results:
        groups.setdefault(result.database, {}).setdefault(result.scenario, []).append(result)
    return groups


def print_table(results: list[RunResult]) -> None:
    measures = list(results[0].rates)
    header = (
        f"{'database':<10} | {'scenario':<8} | {'rows before':>11} | {'load s':>6} | {'DB MiB':>6} | "
        + " | ".join(f"{measure + '/s':>13}" for measure in measures)
        + f" | ratio vs empty ({' / '.join(measures)})"
    )
    print(header)
    print("-" * len(header))
    for database, by_scenario in grouped(results).items():
        base = median_rates(by_scenario["empty"])
        for scenario, runs in by_scenario.items():
            rates = median_rates(runs)
            loads = [r.load for r in runs if r.load is not None]
            load_s = f"{statistics.median(x.load_s + x.maintenance_s for x in loads):6.1f}" if loads else f"{'-':>6}"
            size = f"{statistics.median(x.size_bytes for x in loads) / 2**20:6.0f}" if loads else f"{'-':>6}"
            print(
                f"{database:<10} | {scenario:<8} | {runs[0].rows_before:>11,} | {load_s} | {size} | "
                + " | ".join(f"{rates[m]:>13.1f}" for m in measures)
                + " | "
                + " / ".join(f"{rates[m] / base[m]:.2f}" for m in measures)
            )
    print()
    for database, by_scenario in grouped(results).items():
        for scenario, runs in by_scenario.items():
            each = "; ".join(f"{m}: " + ", ".join(f"{r.rates[m]:.0f}" for r in runs) for m in measures)
            print(f"runs {database} {scenario}: {each}")
    print()
    print_verdict(results)


def verdict(empty: list[float], loaded: list[float]) -> str:
    """What the runs of one measure say, given that this machine is shared and noisy.

    A slowdown is claimed only when the medians differ by more than the tolerance and every
    loaded run is slower than every empty run (with 3 runs each, chance alone does that 1
    time in 20, so fewer runs decide nothing); a ratio under the tolerance with overlapping
    runs is noise.
    """
    ratio = statistics.median(loaded) / statistics.median(empty)
    if ratio >= 1 - NOISE_TOLERANCE:
        return f"{ratio:.2f} no slowdown"
    if min(len(empty), len(loaded)) < 3:
        return f"{ratio:.2f} inconclusive (fewer than 3 runs)"
    if max(loaded) < min(empty):
        return f"{ratio:.2f} SLOWDOWN"
    return f"{ratio:.2f} inconclusive (runs overlap: noise)"


def print_verdict(results: list[RunResult]) -> None:
    for database, by_scenario in grouped(results).items():
        empty = by_scenario["empty"]
        for scenario, runs in by_scenario.items():
            if scenario == "empty":
                continue
            each = ", ".join(
                f"{m}: {verdict([r.rates[m] for r in empty], [r.rates[m] for r in runs])}" for m in runs[0].rates
            )
            print(f"{database}: {scenario} / empty (tolerance {NOISE_TOLERANCE:.0%}) -> {each}")
            loads = [r.load for r in runs if r.load is not None]
            print(
                f"{database}: bulk load {statistics.median(d.load_s for d in loads):.1f} s + "
                f"vacuum/analyze/checkpoint {statistics.median(d.maintenance_s for d in loads):.1f} s, "
                f"database {statistics.median(d.size_bytes for d in loads) / 2**20:.0f} MiB"
            )


def print_header(args: argparse.Namespace, workload: Workload, pg_version: str | None) -> None:
    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M:%S %Z}")
    print(
        f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{tool_version([str(STORESCU), '--version'])}" + (f", PostgreSQL {pg_version}" if pg_version else "")
    )
    shape = BulkShape(args.rows, args.studies)
    print(
        f"bulk rows: {shape.studies} studies x {shape.series_per_study} series x "
        f"{shape.instances_per_series} instances = {shape.instances:,} instance rows (+ {shape.studies} jobs)"
    )
    mb = (workload.single.n_bytes + sum(s.n_bytes for s in workload.concurrent)) / 2 / 1e6
    print(
        f"workload: {workload.single.n_instances} CT instances {args.size}x{args.size} int16 (~{mb:.0f} MB) over 1 "
        f"association, then the same count over {args.associations} concurrent associations (one study each); "
        f"storescu +sd, TCP_NODELAY=1; median of {args.runs} interleaved runs",
        flush=True,
    )
    print()


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs of each scenario (median reported)")
    parser.add_argument("--instances", type=int, default=300, help="CT slices per send (each of the two sends)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each slice")
    parser.add_argument("--associations", type=int, default=4, help="K concurrent associations of the second send")
    parser.add_argument("--rows", type=int, default=1_000_000, help="instance rows bulk-loaded in the loaded scenario")
    parser.add_argument("--studies", type=int, default=5_000, help="studies the bulk rows belong to (1 series each)")
    parser.add_argument("--database", choices=("postgresql", "sqlite", "both"), default="postgresql")
    parser.add_argument(
        "--catalog-records", type=int, default=2000, help="instances recorded by the catalog alone (0: skip)"
    )
    parser.add_argument("--no-explain", action="store_true", help="skip the plans of the node's statements")
    args = parser.parse_args(argv)
    if min(args.runs, args.instances, args.size, args.associations, args.rows, args.studies) < 1:
        parser.error("every count must be at least 1")
    if args.catalog_records < 0:
        parser.error("--catalog-records must not be negative")
    if args.associations > NODE_MAX_ASSOCIATIONS or args.associations > args.instances:
        parser.error(f"--associations must be at most {NODE_MAX_ASSOCIATIONS} and at most --instances")
    if args.rows >= SCRAMBLE_MODULUS or args.studies > args.rows:
        parser.error(f"--rows must be below {SCRAMBLE_MODULUS:,} and at least --studies")
    return args


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    kinds = ("postgresql", "sqlite") if args.database == "both" else (args.database,)
    loaded = BulkShape(args.rows, args.studies)
    return [
        scenario
        for kind in kinds
        for scenario in (Scenario(kind, "empty", None), Scenario(kind, rows_label(args.rows), loaded))
    ]


def print_progress(run: int, result: RunResult) -> None:
    rates = ", ".join(f"{rate:.1f}/s {measure}" for measure, rate in result.rates.items())
    load = f", bulk load {result.load.load_s:.1f}+{result.load.maintenance_s:.1f} s" if result.load else ""
    print(
        f"run {run}: {result.database:<10} {result.scenario:<6} {rates}{load}, load average {os.getloadavg()[0]:.1f}",
        file=sys.stderr,
        flush=True,
    )


def run_benchmark(args: argparse.Namespace) -> None:
    os.environ["TCP_NODELAY"] = "1"  # inherited by the node and by every storescu
    pg_version = check_postgres() if args.database != "sqlite" else None
    with tempfile.TemporaryDirectory(prefix="dicom-node-bench-scale-") as tmp:
        scratch = Path(tmp)
        workload = make_workload(scratch / "series", args.instances, args.associations, args.size)
        print_header(args, workload, pg_version)
        results: list[RunResult] = []
        explained: set[str] = set()
        for run in range(1, args.runs + 1):
            for scenario in scenarios(args):
                explain = not args.no_explain and scenario.shape is not None and scenario.database not in explained
                workdir = scratch / f"run{run}-{scenario.database}-{scenario.name}"
                result = measure_once(
                    scenario, workload, workdir, catalog_records=args.catalog_records, explain=explain
                )
                if explain:
                    explained.add(scenario.database)
                results.append(result)
                print_progress(run, result)
        print_table(results)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        run_benchmark(args)
    except BenchmarkError as exc:
        print(f"benchmark FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"\nbenchmark took {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
