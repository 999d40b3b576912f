"""SSL contexts for DICOM TLS (PS3.15 Annex B secure transport connection profiles)."""

from __future__ import annotations

import ssl

from dicom_node.config import TLSSettings


def server_context(settings: TLSSettings) -> ssl.SSLContext | None:
    """The listener's context, or None when TLS is off.

    TLS 1.2 is the floor (BCP195 profile); with ``require_client_certificate`` the peer
    must present a certificate that chains to ``ca_bundle`` (mutual TLS).
    """
    if not settings.enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    password = settings.private_key_password.get_secret_value() if settings.private_key_password else None
    context.load_cert_chain(
        certfile=str(settings.certificate), keyfile=str(settings.private_key), password=password
    )
    if settings.ca_bundle is not None:
        context.load_verify_locations(cafile=str(settings.ca_bundle))
    context.verify_mode = ssl.CERT_REQUIRED if settings.require_client_certificate else ssl.CERT_NONE
    return context


def client_context(settings: TLSSettings) -> ssl.SSLContext:
    """Our context as a TLS client (sender): verify the peer against ``ca_bundle``
    (or the system store) and present our certificate when we have one."""
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(settings.ca_bundle) if settings.ca_bundle else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.certificate is not None and settings.private_key is not None:
        password = settings.private_key_password.get_secret_value() if settings.private_key_password else None
        context.load_cert_chain(str(settings.certificate), str(settings.private_key), password=password)
    return context
