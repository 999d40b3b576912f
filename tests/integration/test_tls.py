"""DICOM TLS on the listener, with and without client-certificate checks."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.conftest import start_node
from tests.support.node import NODE_AE, NodeConfig, cli
from tests.support.tls import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_section(pki: Pki, require_client_certificate: bool) -> str:
    return f"""
[tls]
enabled = true
certificate = "{pki.server[0]}"
private_key = "{pki.server[1]}"
ca_bundle = "{pki.ca}"
require_client_certificate = {"true" if require_client_certificate else "false"}
"""


def _client_context(pki: Pki, client: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if client is not None:
        context.load_cert_chain(str(client[0]), str(client[1]))
    return context


def _echo(port: int, context: ssl.SSLContext | None) -> bool:
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    tls_args = (context, "localhost") if context is not None else None
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE, tls_args=tls_args)
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0
    assoc.release()
    return ok


def test_tls_listener_accepts_a_verified_client(tmp_path: Path, pki: Pki) -> None:
    running, stop = start_node(NodeConfig(workdir=tmp_path, extra=_tls_section(pki, False)))
    try:
        assert _echo(running.port, _client_context(pki, None))
        assert not _echo(running.port, None), "a plain-TCP client must not get through"
    finally:
        stop()  # type: ignore[operator]


def test_mutual_tls_refuses_missing_and_foreign_client_certificates(tmp_path: Path, pki: Pki) -> None:
    running, stop = start_node(NodeConfig(workdir=tmp_path, extra=_tls_section(pki, True)))
    try:
        assert _echo(running.port, _client_context(pki, pki.client))
        assert not _echo(running.port, _client_context(pki, None)), "no client certificate"
        assert not _echo(running.port, _client_context(pki, pki.rogue_client)), "client from another CA"
        assert _echo(running.port, _client_context(pki, pki.client)), "the node still serves after refusals"
    finally:
        stop()  # type: ignore[operator]


def test_sender_speaks_mutual_tls_to_a_destination(tmp_path: Path, pki: Pki) -> None:
    from pynetdicom import evt
    from pynetdicom.sop_class import CTImageStorage

    from dicom_node.config import TLSSettings
    from dicom_node.dicom.tls import client_context
    from dicom_node.send.scu import Peer, SendItem, send
    from tests.support.node import free_port
    from tests.support.synthetic_ct import SeriesSpec, write_series

    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(str(pki.server[0]), str(pki.server[1]))
    server_context.load_verify_locations(cafile=str(pki.ca))
    server_context.verify_mode = ssl.CERT_REQUIRED
    ae = AE("DEST")
    ae.add_supported_context(CTImageStorage)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, ssl_context=server_context, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0)]
    )
    [path] = write_series(SeriesSpec(n_slices=1, rows=32, columns=32), tmp_path / "s")
    try:
        ours = client_context(TLSSettings(certificate=pki.client[0], private_key=pki.client[1], ca_bundle=pki.ca))
        peer = Peer("dest", "DEST", "localhost", port, "DICOMNODE", 5, ours)
        [result] = send(peer, [SendItem(1, path)])
        assert (result.stored, result.status) == (True, 0)
        anonymous = client_context(TLSSettings(ca_bundle=pki.ca))  # no client certificate
        [refused] = send(Peer("dest", "DEST", "localhost", port, "DICOMNODE", 5, anonymous), [SendItem(1, path)])
        assert not refused.stored
    finally:
        server.shutdown()


def test_echo_reaches_a_tls_destination_by_its_name(tmp_path: Path, pki: Pki) -> None:
    """`dicom-node echo NAME` checks a destination the way the sender will reach it: over TLS."""
    running, stop = start_node(NodeConfig(workdir=tmp_path / "node", extra=_tls_section(pki, False)))
    try:
        destination = f'[[destinations]]\nname = "secure"\nae_title = "{NODE_AE}"\nhost = "localhost"\nport = {running.port}\n'
        with_tls = NodeConfig(workdir=tmp_path / "a", extra=_tls_section(pki, False) + destination + "tls = true\n").write()
        ok = cli("echo", "secure", "--calling-ae", "TESTSCU", "--config", str(with_tls))
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.strip() == f"C-ECHO to {NODE_AE}@localhost:{running.port}: success"
        plain = NodeConfig(workdir=tmp_path / "b", extra=destination).write()
        refused = cli("echo", "secure", "--calling-ae", "TESTSCU", "--timeout", "5", "--config", str(plain))
        assert refused.returncode == 1 and f"{NODE_AE}@localhost:{running.port}" in refused.stderr, refused.stderr
    finally:
        stop()  # type: ignore[operator]
