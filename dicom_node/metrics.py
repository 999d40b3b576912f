"""Prometheus metrics, the health endpoint and the status page, served on a loopback port.

One :class:`Metrics` object per process holds its own registry (no module globals): the
listener and the worker count what they do, and gauges that describe shared state
(studies by state, queue depth, disk free) are read from the database and the storage
root at scrape time, so every process reports the same truth.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

#: Seconds; job stages take from milliseconds (write) to minutes (CPU inference of 1000 slices).
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class Metrics:
    """The counters and histograms of one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.associations = Counter(
            "dicom_node_associations", "Associations requested, by result", ["result"], registry=self.registry
        )
        self.instances = Counter(
            "dicom_node_instances_received", "C-STORE requests handled, by outcome", ["outcome"], registry=self.registry
        )
        self.received_bytes = Counter(
            "dicom_node_received_bytes", "Bytes of instances stored", registry=self.registry
        )
        self.failures = Counter(
            "dicom_node_failures", "Refusals and failures, by stage and reason", ["stage", "reason"], registry=self.registry
        )
        self.skipped = Counter(
            "dicom_node_jobs_skipped", "Jobs ended 'skipped': the study is not for this analysis (not failures)",
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "dicom_node_job_stage_seconds", "Duration of job stages", ["stage"], buckets=STAGE_BUCKETS, registry=self.registry
        )
        self.deliveries = Counter(
            "dicom_node_deliveries", "Delivery attempts, by destination and resulting state", ["destination", "state"],
            registry=self.registry,
        )

    def add_collector(self, collector: Collector) -> None:
        """Register a collector that reads shared state at scrape time."""
        self.registry.register(collector)


class ChildrenMetrics:
    """What ``dicom-node run`` serves: its child processes' counters, summed.

    Each child (listeners, worker) starts with ``PROMETHEUS_MULTIPROC_DIR`` set, so
    prometheus_client writes its counters to files in ``directory``; this registry reads
    and sums them at scrape time. Counters of a child that exited stay in the sum, so they
    never go backwards when a child is restarted.
    """

    def __init__(self, directory: Path) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(self.registry, path=str(directory))

    def add_collector(self, collector: Collector) -> None:
        """Register a collector that reads shared state at scrape time."""
        self.registry.register(collector)


class StateCollector(Collector):
    """Gauges read at scrape time from callables (database counts, free disk)."""

    def __init__(
        self,
        *,
        studies_by_state: Callable[[], dict[str, int]],
        jobs_by_state: Callable[[], dict[str, int]],
        deliveries_by_state: Callable[[], dict[tuple[str, str], int]],
        disk_free_bytes: Callable[[], int],
    ) -> None:
        self._studies = studies_by_state
        self._jobs = jobs_by_state
        self._deliveries = deliveries_by_state
        self._disk_free = disk_free_bytes

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            studies, jobs, deliveries = self._studies(), self._jobs(), self._deliveries()
        except Exception:  # a scrape must not fail because the DB is briefly away
            logger.warning("metrics: database unavailable at scrape")
            studies, jobs, deliveries = {}, {}, {}
        family = GaugeMetricFamily("dicom_node_studies", "Studies by state", labels=["state"])
        for state, count in sorted(studies.items()):
            family.add_metric([state], count)
        yield family
        family = GaugeMetricFamily("dicom_node_jobs", "Jobs by state (queued = queue depth)", labels=["state"])
        for state, count in sorted(jobs.items()):
            family.add_metric([state], count)
        yield family
        family = GaugeMetricFamily(
            "dicom_node_outbox", "Deliveries by destination and state", labels=["destination", "state"]
        )
        for (destination, state), count in sorted(deliveries.items()):
            family.add_metric([destination, state], count)
        yield family
        try:
            free = self._disk_free()
        except OSError:  # storage away (unmounted, I/O error): /health says so; keep the other series
            logger.warning("metrics: storage unavailable at scrape")
            return
        yield GaugeMetricFamily("dicom_node_disk_free_bytes", "Free bytes on the storage file system", value=free)


HealthCheck = Callable[[], list[str]]
#: Renders the status page (HTML bytes); None serves no page at ``/``.
StatusPage = Callable[[], bytes]

#: Headers of the status page: no script, no framing, nothing cached (it shows live state).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def serve_http(
    metrics: Metrics | ChildrenMetrics, health: HealthCheck, *, address: str, port: int, page: StatusPage | None = None
) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve ``/metrics`` (Prometheus text format), ``/health`` (200 ready, 503 with reasons)
    and, when given, the read-only status ``page`` at ``/``. Every method but GET gets 405:
    nothing here changes state, so nothing here accepts a request that could."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
            headers: dict[str, str] = {}
            if self.path == "/metrics":
                body, status, content_type = generate_latest(metrics.registry), 200, CONTENT_TYPE_LATEST
            elif self.path == "/health":
                problems = health()
                status = 503 if problems else 200
                body = ("not ready: " + "; ".join(problems) if problems else "ready").encode() + b"\n"
                content_type = "text/plain; charset=utf-8"
            elif page is not None and self.path in ("/", "/index.html"):
                body, status, content_type, headers = self._page()
            else:
                body, status, content_type = b"not found\n", 404, "text/plain; charset=utf-8"
            self._answer(status, body, content_type, headers)

        def _page(self) -> tuple[bytes, int, str, dict[str, str]]:
            assert page is not None
            try:
                return page(), 200, "text/html; charset=utf-8", PAGE_HEADERS
            except Exception as exc:  # the database away: say so, and keep serving /health
                logger.warning(f"status page unavailable: {exc.__class__.__name__}")
                body = f"status page unavailable ({exc.__class__.__name__}); see /health and the log\n".encode()
                return body, 503, "text/plain; charset=utf-8", {}

        def _answer(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _refuse(self) -> None:
            self.send_response(405)
            self.send_header("Allow", "GET")
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            body = b"method not allowed: this server is read-only (GET)\n"
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_TRACE = do_CONNECT = _refuse  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base
            return  # scrapes every few seconds would flood the log

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server, thread
