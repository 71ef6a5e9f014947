"""A stand-in for Google Drive's download protocol on 127.0.0.1, for gdown's real code path.

gdown talks HTTPS to drive.google.com and drive.usercontent.google.com. Here an HTTPS proxy on loopback (reached
through the standard HTTPS_PROXY variable) terminates TLS with a certificate for those hosts, signed by a CA made
for the test (trusted through REQUESTS_CA_BUNDLE), and answers as Drive does today:
- `/uc?id=ID` on drive.google.com: the "can't scan this file for viruses" page with its download form, or, for a
  file over quota, the "Too many users have viewed or downloaded this file recently" page;
- `/download?id=ID&confirm=t...` on drive.usercontent.google.com: the file, with its Content-Disposition.
"""

from __future__ import annotations

import html
import http.server
import socketserver
import ssl
import subprocess
import threading
import urllib.parse
from pathlib import Path

from factory import DRIVE_QUOTA_PAGE

HOSTS = ("drive.google.com", "drive.usercontent.google.com")

# Drive serves its pages minified: the form is on one line, and gdown reads it line by line.
SCAN_WARNING_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<div class="uc-main"><div id="uc-text"><p class="uc-warning-caption">Google Drive can't scan this file for viruses.
</p><p class="uc-warning-subcaption"><span class="uc-name-size"><a href="/open?id={id}">{name}</a> ({size})</span>
is too large for Google to scan for viruses. Would you still like to download this file?</p>
<form id="download-form" action="https://drive.usercontent.google.com/download" method="get"><input type="submit" id="uc-download-link" class="goog-inline-block jfk-button jfk-button-action" value="Download anyway"/><input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download"><input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="3f1c2b9e-0000-4000-8000-000000000000"></form></div></div></body></html>"""


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for HOSTS, made with the openssl command."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    extensions = folder / "san.cnf"
    extensions.write_text("subjectAltName=" + ",".join(f"DNS:{host}" for host in HOSTS) + "\n")

    def openssl(*args):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
            "-subj", "/CN=synmirror test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={HOSTS[0]}")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
            "-extfile", extensions)
    return ca, cert, key


class DriveStandIn:
    """`files`: {drive id: (file name, bytes)}; `over_quota`: drive ids answered with the quota page."""

    def __init__(self, folder: Path, files: dict[str, tuple[str, bytes]], over_quota=()):
        self.files, self.over_quota, self.requests = files, set(over_quota), []
        self.ca, cert, key = make_certificates(folder)
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert, key)
        stand_in = self

        class Proxy(socketserver.StreamRequestHandler):
            def handle(self):
                request_line = self.rfile.readline().decode()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                method, target, _ = request_line.split(" ", 2)
                if method != "CONNECT" or target.rsplit(":", 1)[0] not in HOSTS:
                    self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    return
                self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self.wfile.flush()
                with stand_in.tls.wrap_socket(self.connection, server_side=True) as tls:
                    Drive(tls, self.client_address, self.server)

        class Drive(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                host = self.headers["Host"].split(":")[0]
                stand_in.requests.append((host, url.path, query))
                file_id = query.get("id")
                if host == HOSTS[0] and url.path == "/uc" and file_id in stand_in.over_quota:
                    self.reply(200, "text/html; charset=utf-8", DRIVE_QUOTA_PAGE)
                elif host == HOSTS[0] and url.path == "/uc" and file_id in stand_in.files:
                    name, data = stand_in.files[file_id]
                    page = SCAN_WARNING_PAGE.format(id=file_id, name=html.escape(name), size=f"{len(data)}B")
                    self.reply(200, "text/html; charset=utf-8", page.encode())
                elif host == HOSTS[1] and url.path == "/download" and query.get("confirm") == "t" \
                        and file_id in stand_in.files:
                    name, data = stand_in.files[file_id]
                    self.reply(200, "application/octet-stream", data,
                               {"Content-Disposition": f'attachment; filename="{name}"'})
                else:
                    self.reply(404, "text/html", b"<html><body>Not Found</body></html>")

            def reply(self, status, content_type, body, headers=None):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Proxy)
        self.server.daemon_threads = True
        self.proxy_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def environment(self) -> dict[str, str]:
        """What sends a requests-based client (gdown) here: the proxy, and trust in the test CA."""
        return {"HTTPS_PROXY": self.proxy_url, "https_proxy": self.proxy_url, "REQUESTS_CA_BUNDLE": str(self.ca),
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

    def close(self):
        self.server.shutdown()
        self.server.server_close()
