"""What one process serves over HTTP: /metrics, /health and the read-only status page.

A standalone listener or worker serves its own; under ``dicom-node run`` only the
supervisor does, with its children's counters summed (:class:`~dicom_node.metrics.ChildrenMetrics`).
A port already taken (a second worker on this host) is logged and the process runs on
without HTTP: observability must never stop the data path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Engine

from dicom_node.admin.page import collect as collect_page, render as render_page
from dicom_node.config import Settings
from dicom_node.db import state
from dicom_node.db.session import session_factory
from dicom_node.dicom.storage import InstanceStore
from dicom_node.metrics import ChildrenMetrics, Metrics, StateCollector, serve_http

logger = logging.getLogger(__name__)


def serve_observability(
    current: Callable[[], Settings],
    engine: Engine,
    store: InstanceStore,
    metrics: Metrics | ChildrenMetrics,
    port: int,
    more_problems: Callable[[], list[str]] = list,
) -> Callable[[], None]:
    """Start /metrics, /health and the status page for this process; returns the function that stops them.

    ``current`` gives the running settings, so that a reload that adds a destination
    shows on the page at once. ``more_problems`` adds to /health (the supervisor's children).
    """
    settings = current()
    metrics.add_collector(
        StateCollector(
            studies_by_state=lambda: state.studies_by_state(engine),
            jobs_by_state=lambda: state.jobs_by_state(engine),
            deliveries_by_state=lambda: state.deliveries_by_state(engine),
            disk_free_bytes=store.free_bytes,
        )
    )

    def health() -> list[str]:
        problem = state.database_problem(engine)
        return ([problem] if problem else []) + store.problems() + more_problems()

    sessions = session_factory(engine)

    def page() -> bytes:
        # The running settings: a reload that adds a destination shows it at once.
        with sessions() as session:
            return render_page(collect_page(engine, session, current()))

    address = f"{settings.observability.bind_address}:{port}"
    try:
        server, _ = serve_http(
            metrics,
            health,
            address=settings.observability.bind_address,
            port=port,
            page=page if settings.observability.status_page else None,
        )
    except OSError as exc:  # e.g. a second worker on this host: run on, without metrics
        logger.error(f"metrics and health not served: {exc.strerror}", extra={"listen_address": address})
        return lambda: None
    logger.info("metrics, health and status page", extra={"listen_address": address})
    return server.shutdown
