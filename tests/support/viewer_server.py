"""One small HTTP server on loopback that serves the built OHIF viewer and proxies DICOMweb to Orthanc.

OHIF is a static web application: ``dist/`` plus an ``app-config.js`` that
names its data source. Serving both from one origin with the DICOMweb routes
proxied behind it avoids CORS altogether, and the headers a browser needs for
OHIF's shared-memory web workers (``SharedArrayBuffer``) are added here:
``Cross-Origin-Opener-Policy: same-origin`` and
``Cross-Origin-Embedder-Policy: require-corp``.

* ``/app-config.js`` is generated (:func:`app_config`), not read from dist;
* ``/dicom-web/...`` and ``/wado...`` go to Orthanc's HTTP port with the
  browser's ``Host`` header passed through, because Orthanc writes bulk-data
  URLs with the host it was asked under (they must point back here);
* any other path is a file of ``dist/``, or ``index.html`` for the app's own
  routes (``/viewer?StudyInstanceUIDs=...``).

The standard library's threading server is enough for one browser on loopback.
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.node import free_port

PROXIED_PREFIXES = ("/dicom-web/", "/wado")
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
#: Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade"}
PROXY_TIMEOUT_S = 120.0


def app_config(dicomweb_root: str = "/dicom-web") -> str:
    """OHIF's ``window.config``: one DICOMweb source at this origin, no study-list detours, no dialog.

    ``investigationalUseDialog: never`` hides OHIF's own "investigational use"
    modal; our objects carry their research-use statements themselves.
    """
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "Orthanc on loopback (dicom-node viewer check)",
            "name": "orthanc",
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "wadoUriRoot": "/wado",
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": "dicomweb",
        "investigationalUseDialog": {"option": "never"},
        "dataSources": [source],
    }
    return "window.config = " + json.dumps(config, indent=2) + ";\n"


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Quiet: a page load is hundreds of requests."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith(PROXIED_PREFIXES):
            self._proxy()
        elif path == "/app-config.js":
            self._send(200, self.server.config_js.encode(), "application/javascript")
        else:
            self._static(path)

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**ISOLATION_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _static(self, path: str) -> None:
        root = self.server.dist
        candidate = (root / path.lstrip("/")).resolve()
        if not candidate.is_relative_to(root) or not candidate.is_file():
            candidate = root / "index.html"  # an app route
        content_type = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
        if candidate.suffix == ".wasm":
            content_type = "application/wasm"
        self._send(200, candidate.read_bytes(), content_type)

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_port, timeout=PROXY_TIMEOUT_S)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
        except OSError as exc:
            self._send(502, f"Orthanc did not answer: {exc}".encode(), "text/plain")
            return
        finally:
            upstream.close()
        passed = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP | {"content-length"}}
        content_type = passed.pop("Content-Type", "application/octet-stream")
        self._send(response.status, payload, content_type, passed)


class ViewerServer(ThreadingHTTPServer):
    """Serves ``dist`` and proxies DICOMweb to Orthanc's HTTP port, on 127.0.0.1; a context manager."""

    daemon_threads = True

    def __init__(self, dist: Path, orthanc_port: int, port: int | None = None) -> None:
        self.dist = dist.resolve()
        self.orthanc_port = orthanc_port
        self.config_js = app_config()
        super().__init__(("127.0.0.1", port or free_port()), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> ViewerServer:
        self._thread = threading.Thread(target=self.serve_forever, name="ohif-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


def main() -> None:
    """Serve a built OHIF in front of an Orthanc already running on loopback, until Ctrl-C (README demo)."""
    import argparse

    parser = argparse.ArgumentParser(description="Serve OHIF's dist/ and proxy DICOMweb to Orthanc, on 127.0.0.1.")
    parser.add_argument("--dist", type=Path, required=True, help="the built viewer: package/dist of @ohif/app")
    parser.add_argument("--orthanc-port", type=int, default=8042, help="Orthanc's HTTP port (default 8042)")
    parser.add_argument("--port", type=int, default=3000, help="port to serve the viewer on (default 3000)")
    arguments = parser.parse_args()
    if not (arguments.dist / "index.html").is_file():
        raise SystemExit(f"{arguments.dist} has no index.html: give the dist/ folder of @ohif/app")
    with ViewerServer(arguments.dist, arguments.orthanc_port, arguments.port) as server:
        print(f"OHIF on {server.base_url}/ (Orthanc on 127.0.0.1:{arguments.orthanc_port}); Ctrl-C stops", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
