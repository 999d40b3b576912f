"""DICOM TLS on the listener, with and without client-certificate checks."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.conftest import start_node
from tests.support.node import NODE_AE, NodeConfig
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
