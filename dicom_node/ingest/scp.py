"""The C-ECHO / C-STORE listener: event handlers that turn outcomes into DICOM statuses.

The handlers only check, store and record; they never analyse (that would hold the
sender's association hostage to a model). A success status (0x0000) is returned only
after the file is fsynced, atomically renamed into place and its database row is
committed. Every refusal carries a specific status and an Error Comment; which status
for which refusal is the table in :mod:`dicom_node.dicom.statuses`.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.transport import AssociationServer, ThreadedAssociationServer

from dicom_node.audit import AuditLog
from dicom_node.config import NodeSettings
from dicom_node.dicom.contexts import (
    ACCEPTED_TRANSFER_SYNTAXES,
    VERIFICATION_CLASS,
    VERIFICATION_TRANSFER_SYNTAXES,
    storage_class_uids,
)
from dicom_node.dicom.statuses import (  # the codes are also imported from here by callers and tests
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    REJECT_CALLED_AE,
    REJECT_CALLING_AE,
    SUCCESS,
    status_for,
)
from dicom_node.dicom.storage import InstanceStore, instance_path, storage_error
from dicom_node.errors import (
    DatabaseUnavailableError,
    DicomNodeError,
    SeriesConflictError,
)
from dicom_node.ingest.catalog import Catalog, RecordOutcome, RecordResult
from dicom_node.ingest.committer import GroupCommitter
from dicom_node.ingest.instance import ReceivedInstance, read_received
from dicom_node.ingest.reactor import PromptRequestHandler, spool_failure
from dicom_node.metrics import Metrics

logger = logging.getLogger(__name__)

#: A listener process sharing the port waits this long per association it already serves
#: before it takes a new connection, so that a less busy process takes it first.
YIELD_PER_ASSOCIATION_S = 0.003
#: The longest such wait: a connection is still taken when every process is busy.
MAX_ACCEPT_YIELD_S = 0.012


def failure(status: int, comment: str) -> Dataset:
    """A C-STORE response status with an Error Comment (LO: at most 64 characters)."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds


class PromptServer(ThreadedAssociationServer):
    """pynetdicom's threaded server whose associations wake on events instead of polling
    (:mod:`dicom_node.ingest.reactor`): ``request_handler`` is a public parameter of
    pynetdicom's server, and ``AE.make_server`` passes it on, as it passes extra keywords
    such as ``spool_directory`` (where received data sets are written while they arrive)."""

    def __init__(self, *args: Any, spool_directory: Path | None = None, **kwargs: Any) -> None:
        self.spool_directory = spool_directory
        kwargs.setdefault("request_handler", PromptRequestHandler)
        super().__init__(*args, **kwargs)

    def shutdown(self) -> None:
        """Stop accepting, then close; pynetdicom's version also unregisters the server from
        the AE's list of servers ``AE.start_server`` keeps, which ``make_server`` never added it to."""
        super(AssociationServer, self).shutdown()  # socketserver's: stop serve_forever
        self.server_close()


class SharedSocketServer(PromptServer):
    """A server that accepts on a listening socket its supervisor bound and shares with other processes.

    pynetdicom binds its own socket; ``AE.make_server(server_class=..., shared_socket=...)``
    (public API: extra keywords go to the class) lets us hand it one instead. The socket is
    non-blocking: when another listener process takes a connection first, ``accept`` fails
    at once with EAGAIN (socketserver ignores that OSError) instead of blocking this
    process's accept loop, and its shutdown, for the network time-out.

    Each process gives the others a head start of a few milliseconds per association it
    already serves (:meth:`get_request`), so that associations opened at once spread over
    the processes instead of piling onto whichever woke first.
    """

    def __init__(self, *args: Any, shared_socket: socket.socket, sharing_processes: int = 2, **kwargs: Any) -> None:
        self._shared_socket = shared_socket
        self._sharing_processes = sharing_processes
        self._connections: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection, after waiting a little per association this process serves.

        Why: every listener process polls the shared socket and the first to call accept()
        wins. When a PACS opens four associations at once, the process that woke first
        often took two or three of them while another took none, and one process serves
        its associations on one core (one GIL). Measured with ``python -m tests.bench.ingest
        --scenarios four`` (2 listener processes): 373 instances/s before, 415 after.
        A connection is never refused for this: when every process is busy, the least busy
        one takes it within :data:`MAX_ACCEPT_YIELD_S`. The only listener process waits for
        nobody. (A sender opening one association per instance pays the wait on each while
        this process serves others: 3 ms per association served, on top of the association's
        own negotiation and release.)
        """
        if self._sharing_processes > 1:
            time.sleep(accept_yield_s(self.serving()))
        request, address = super().get_request()  # OSError (EAGAIN) when another process took it
        self._connections.add(request)
        return request, address

    def serving(self) -> int:
        """Associations this process serves now: connections it accepted and nobody closed yet.

        Counted from the sockets, not from pynetdicom's association threads, because a
        connection accepted a moment ago has no thread yet. Weak references: pynetdicom
        drops a socket whose shutdown failed without closing it, and the garbage collector
        closes it then; a strong reference here would keep it open and counted.
        """
        return sum(1 for sock in list(self._connections) if sock.fileno() != -1)

    def server_bind(self) -> None:
        self.socket.close()  # the unbound one TCPServer made for us
        self.socket = self._shared_socket
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Already listening: the supervisor called listen()."""

    def server_close(self) -> None:
        """Close our descriptor only. pynetdicom also calls ``shutdown(SHUT_RDWR)``, which on
        a shared listening socket would stop every listener process, not just this one."""
        self.socket.close()


def accept_yield_s(serving: int) -> float:
    """How long a listener process serving ``serving`` associations waits before accepting."""
    return min(serving * YIELD_PER_ASSOCIATION_S, MAX_ACCEPT_YIELD_S)


def _peer(assoc: Association) -> dict[str, Any]:
    return {
        "calling_ae_title": assoc.requestor.ae_title,
        "peer_address": assoc.requestor.address,
    }


class StorageSCP:
    """Our application entity as Storage SCP and Verification SCP."""

    def __init__(
        self,
        settings: NodeSettings | Callable[[], NodeSettings],
        store: InstanceStore,
        catalog: Catalog,
        committer: GroupCommitter[ReceivedInstance, RecordResult],
        ssl_context: ssl.SSLContext | None = None,
        metrics: Metrics | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        # A callable gives the running settings (a reload changes the allowed callers):
        # each A-ASSOCIATE-RQ is judged by the list of that moment; open associations are untouched.
        self._settings = settings if callable(settings) else lambda: settings
        self.metrics = metrics
        self.audit = audit
        self.store = store
        self.catalog = catalog
        self.committer = committer
        self.ssl_context = ssl_context
        self._counts: dict[int, Counter[str]] = {}
        self._studies: dict[int, Counter[str]] = {}  # instances stored per study, per association
        self._counts_lock = threading.Lock()

    @property
    def settings(self) -> NodeSettings:
        """The node's settings now: those given, or the running ones after a reload."""
        return self._settings()

    def application_entity(self) -> AE:
        """An AE offering exactly the contexts in :mod:`dicom_node.dicom.contexts`."""
        ae = AE(ae_title=self.settings.ae_title)
        ae.maximum_associations = self.settings.max_associations
        ae.acse_timeout = self.settings.acse_timeout_s
        ae.dimse_timeout = self.settings.dimse_timeout_s
        ae.network_timeout = self.settings.network_timeout_s
        ae.maximum_pdu_size = self.settings.max_pdu_size
        ae.require_called_aet = self.settings.require_called_ae_title
        for uid in storage_class_uids():
            ae.add_supported_context(uid, list(ACCEPTED_TRANSFER_SYNTAXES))
        ae.add_supported_context(VERIFICATION_CLASS, list(VERIFICATION_TRANSFER_SYNTAXES))
        return ae

    def handlers(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_RELEASED, self.on_closed),
            (evt.EVT_ABORTED, self.on_closed),
        ]

    def start(self, listen_socket: socket.socket | None = None) -> ThreadedAssociationServer:
        """Start listening in background threads; returns the server to shut down later.

        With ``listen_socket`` (a listener process of ``dicom-node run``), accept on that
        socket, shared with the other listener processes, instead of binding the port.
        """
        # Stream each incoming data set to a file instead of holding it in memory,
        # so a large multi-frame instance costs disk, not RAM.
        _config.STORE_RECV_CHUNKED_DATASET = True
        ae = self.application_entity()
        address = (self.settings.bind_address, self.settings.port)
        if listen_socket is None:
            server = ae.make_server(
                address,
                evt_handlers=self.handlers(),
                ssl_context=self.ssl_context,
                server_class=PromptServer,
                spool_directory=self.store.incoming,
            )
        else:
            server = ae.make_server(
                address,
                evt_handlers=self.handlers(),
                ssl_context=self.ssl_context,
                server_class=SharedSocketServer,
                shared_socket=listen_socket,
                sharing_processes=self.settings.listener_processes,
                spool_directory=self.store.incoming,
            )
        threading.Thread(target=server.serve_forever, name="acceptor", daemon=True).start()
        logger.info(
            "listening",
            extra={"called_ae_title": self.settings.ae_title, "listen_address": f"{self.settings.bind_address}:{self.settings.port}"},
        )
        return server

    def on_requested(self, event: evt.Event) -> None:
        """Reject callers that are not on the allowed list, or that call another AE, before negotiation.

        pynetdicom would reject a wrong called AE title too, but silently; a mistyped AE title
        is the commonest PACS misconfiguration, so it is logged, counted and audited here.
        """
        assoc = event.assoc
        # The requestor's AE titles are filled in only during negotiation: read the request.
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        called = str(assoc.requestor.primitive.called_ae_title).strip()
        if not self.settings.admits(calling, assoc.requestor.address):
            self._reject(assoc, REJECT_CALLING_AE, calling, "calling AE title or host not allowed")
        elif self.settings.require_called_ae_title and called != self.settings.ae_title:
            self._reject(assoc, REJECT_CALLED_AE, calling, f"called AE title {called!r} is not ours")

    def _reject(self, assoc: Association, reason: tuple[int, int, int], calling: str, why: str) -> None:
        assoc.acse.send_reject(*reason)
        # As pynetdicom does for its own rejections: stop the DUL once the
        # A-ASSOCIATE-RJ is out, before the server closes the socket.
        assoc.kill()
        # Then the record, whose audit row may wait for a slow database: the caller and its
        # association slot are released first.
        self._record_rejection(assoc, calling, why)

    def on_rejected(self, event: evt.Event) -> None:
        """pynetdicom's own rejections, which come after ours: in practice the association limit."""
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        why = f"association limit reached (node.max_associations = {self.settings.max_associations})"
        self._record_rejection(assoc, calling, why)

    def _record_rejection(self, assoc: Association, calling: str, why: str) -> None:
        logger.warning(
            f"association rejected: {why}",
            extra={"calling_ae_title": calling, "peer_address": assoc.requestor.address},
        )
        if self.metrics is not None:
            self.metrics.associations.labels("rejected").inc()
        if self.audit is not None:
            self.audit.record("rejected", calling_ae_title=calling, peer_address=assoc.requestor.address, detail=why)

    def on_accepted(self, event: evt.Event) -> None:
        with self._counts_lock:
            self._counts[id(event.assoc)] = Counter()
        if self.metrics is not None:
            self.metrics.associations.labels("accepted").inc()
        logger.info("association accepted", extra=_peer(event.assoc))

    def on_closed(self, event: evt.Event) -> None:
        with self._counts_lock:
            counts = self._counts.pop(id(event.assoc), Counter())
            studies = self._studies.pop(id(event.assoc), Counter())
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        if self.audit is not None:
            for study_uid, count in studies.items():
                self.audit.record(
                    "received", study_instance_uid=study_uid, count=count, detail=f"association {how}", **_peer(event.assoc)
                )
        logger.info(
            f"association {how}: {', '.join(f'{n} {outcome}' for outcome, n in sorted(counts.items())) or 'no instances'}",
            extra={**_peer(event.assoc), "count": counts.total()},
        )

    def on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def _count(self, assoc: Association, outcome: str, size_bytes: int = 0, study_uid: str | None = None) -> None:
        with self._counts_lock:
            self._counts.setdefault(id(assoc), Counter())[outcome] += 1
            if study_uid is not None:
                self._studies.setdefault(id(assoc), Counter())[study_uid] += 1
        if self.metrics is not None:
            self.metrics.instances.labels(outcome).inc()
            if size_bytes:
                self.metrics.received_bytes.inc(size_bytes)

    def on_store(self, event: evt.Event) -> int | Dataset:
        """Check, store durably, record, and only then answer success."""
        request = event.request
        assoc = event.assoc
        source = Path(event.dataset_path)
        context = {**_peer(assoc), "sop_instance_uid": str(request.AffectedSOPInstanceUID)}
        try:
            spool_error = spool_failure(request)
            if spool_error is not None:
                raise storage_error(spool_error, "receiving")
            item = read_received(
                source,
                command_sop_class_uid=str(request.AffectedSOPClassUID),
                command_sop_instance_uid=str(request.AffectedSOPInstanceUID),
                calling_ae_title=assoc.requestor.ae_title,
            )
            context.update(
                study_instance_uid=item.study_instance_uid,
                series_instance_uid=item.series_instance_uid,
            )
            result = self._store(source, item)
            if result is None:
                self._count(assoc, RecordOutcome.DUPLICATE)
                logger.info("duplicate instance ignored (keep_first)", extra=context)
                return SUCCESS
        except DicomNodeError as exc:
            status = status_for(exc)
            self._count(assoc, f"failed 0x{status:04X}")
            if self.metrics is not None:
                self.metrics.failures.labels("receive", type(exc).__name__).inc()
            logger.warning(
                f"instance refused: {exc}", extra={**context, "status": f"0x{status:04X}"}
            )
            return failure(status, str(exc))
        except Exception:
            source.unlink(missing_ok=True)  # pynetdicom removes the spool file only after a handler that returned
            raise
        self._count(assoc, result.outcome, result.size_bytes, item.study_instance_uid)
        if result.reopened:
            logger.info(
                "study reopened by an instance received after completion",
                extra={**context, "generation": result.generation},
            )
        return SUCCESS

    def _store(self, source: Path, item: ReceivedInstance) -> RecordResult | None:
        """Publish the file, then commit its row; None for a duplicate kept out by policy."""
        relative = instance_path(item.study_instance_uid, item.series_instance_uid, item.sop_instance_uid)
        self.store.check_free_space(source.stat().st_size)
        if self.catalog.policy == "keep_first":
            stored = self.store.publish_new(source, relative)
            if stored is None:
                if self.catalog.is_stored(item.sop_instance_uid):
                    return None
                # A file nobody recorded: left by a crash before its commit (or a resend's,
                # not committed yet: whichever row lands, the file is the instance). Ours replaces it.
                stored = self.store.publish(source, relative)
        else:
            stored = self.store.publish(source, relative)
        try:
            result = self.committer.submit(
                replace(item, path=str(relative), size_bytes=stored.size),
                timeout_s=self.settings.dimse_timeout_s,
            )
        except TimeoutError as exc:
            # The commit may still land after we gave up waiting: keep the file, so a row
            # can never point at nothing. The sender sees a failure and resends (duplicate).
            raise DatabaseUnavailableError("database too slow: commit not confirmed in time") from exc
        except (DatabaseUnavailableError, SeriesConflictError):
            if self.catalog.policy == "keep_first":
                # The commit failed for good and no row references the file we just wrote
                # (unless a resend has replaced it since: then it is not ours to remove).
                self.store.remove_if_same(relative, stored)
            raise
        if result.previous_path is not None and result.previous_path != str(relative):
            # The SOP Instance UID was recorded under another study or series path: keep one
            # file only, the one the row points at (ours for overwrite, the first for keep_first).
            if result.outcome == RecordOutcome.DUPLICATE:
                self.store.remove_if_same(relative, stored)
            else:
                self.store.remove(result.previous_path)
        return None if result.outcome == RecordOutcome.DUPLICATE else result
