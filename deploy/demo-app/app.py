#!/usr/bin/env python3
"""A "legacy app" with no session code, for sessionward's deployment demos.

A visit counter with login, logout and a flash message (the PHP app of
docs/protocol.md section 8, in Python with the standard library only, so it
runs in the stock python image with nothing installed). Every request must
carry sessionward's X-Session token; the app changes the session only with
response headers (X-Session-Action, X-Session-Update).

    SESSIONWARD_SECRET=... python3 app.py          # listens on 127.0.0.1:8000
    APP_HOST=0.0.0.0 APP_PORT=8000 python3 app.py   # e.g. in its own container

A real app should verify the token with a JWT library (PyJWT, firebase/php-jwt,
...: docs/protocol.md section 7). This demo checks it by hand to need nothing
installed: HS256 only, constant-time signature comparison, exp with 5 s of
leeway, and iss.
"""

import base64
import hashlib
import hmac
import html
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SECRET = os.environ.get("SESSIONWARD_SECRET", "").encode()
LEEWAY = 5


class BadToken(Exception):
    pass


def b64url(part):
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify(token):
    """The verified claims of a sessionward token, or raises BadToken."""
    try:
        header_b64, payload_b64, sig_b64 = token.split(".")
        header = json.loads(b64url(header_b64))
        if header.get("alg") != "HS256":  # never let the token pick the algorithm
            raise BadToken("alg is not HS256")
        expected = hmac.new(SECRET, f"{header_b64}.{payload_b64}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, b64url(sig_b64)):
            raise BadToken("bad signature")
        claims = json.loads(b64url(payload_b64))
    except (ValueError, AttributeError) as e:
        raise BadToken(f"malformed token: {e}") from None
    if not isinstance(claims, dict) or claims.get("iss") != "sessionward":
        raise BadToken("wrong issuer")
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool) or time.time() >= exp + LEEWAY:
        raise BadToken("expired")
    if not isinstance(claims.get("data"), dict):
        raise BadToken("data is not an object")
    return claims


PAGE = """<!doctype html>
<meta charset="utf-8"><title>sessionward demo</title>
<h1>Legacy app behind sessionward</h1>
{flash}<p>{greeting}; visit number {visits}</p>
{form}
<p><small>Session id (sid): {sid}. This app has no session code: it reads the
signed X-Session header and answers with X-Session-* headers.</small></p>
"""

LOGIN_FORM = """<form method="post" action="/login">
<input name="user" placeholder="any name" required> <button>Log in</button></form>"""

LOGOUT_FORM = """<form method="post" action="/logout"><button>Log out</button></form>"""


class App(BaseHTTPRequestHandler):
    server_version = "demo-app"
    protocol_version = "HTTP/1.1"
    timeout = 10  # idle keep-alive connections from sessionward end after this

    def claims_or_400(self):
        try:
            return verify(self.headers.get("X-Session", ""))
        except BadToken as e:
            # Not through sessionward, or tampered with: never "no session".
            self.log_message("rejected session token: %s", e)
            self.reply(400, "bad session token\n")
            return None

    def reply(self, status, body, content_type="text/plain; charset=utf-8", headers=()):
        data = body.encode()
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def form(self):
        length = int(self.headers.get("Content-Length") or 0)
        return parse_qs(self.rfile.read(length).decode("utf-8", "replace"))

    def do_GET(self):
        claims = self.claims_or_400()
        if claims is None:
            return
        path = urlsplit(self.path).path
        if path != "/":
            self.reply(404, "not found\n")
            return
        session = claims["data"]
        visits = int(session.get("visits", 0)) + 1
        updates = [{"visits": visits}]
        flash = ""
        if "flash" in session:
            flash = f"<p><b>{html.escape(str(session['flash']))}</b></p>\n"
            updates.append({"flash": None})  # show a flash message once
        user = session.get("user")
        page = PAGE.format(
            flash=flash,
            greeting="Hello, stranger" if user is None else f"Hello, {html.escape(str(user))}",
            visits=visits,
            form=LOGIN_FORM if user is None else LOGOUT_FORM,
            sid=html.escape(str(claims.get("sid"))),
        )
        # One X-Session-Update header per merge patch, applied in order.
        headers = [("X-Session-Update", json.dumps(u, separators=(",", ":"))) for u in updates]
        self.reply(200, page, "text/html; charset=utf-8", headers)

    do_HEAD = do_GET

    def do_POST(self):
        claims = self.claims_or_400()
        if claims is None:
            return
        path = urlsplit(self.path).path
        if path == "/login":  # a real app checks a password here
            user = (self.form().get("user") or [""])[0].strip()
            if not user:
                self.reply(400, "POST user=NAME\n")
                return
            headers = [
                ("X-Session-Action", "cycle"),  # new key at login: no session fixation
                ("X-Session-Update", json.dumps({"user": user}, separators=(",", ":"))),
                ("Location", "/"),
            ]
            self.reply(303, "logged in\n", headers=headers)
        elif path == "/logout":
            self.form()
            headers = [
                ("X-Session-Action", "flush"),  # forget everything, the counter included
                ("X-Session-Update", '{"flash":"You have been logged out."}'),
                ("Location", "/"),
            ]
            self.reply(303, "logged out\n", headers=headers)
        else:
            self.reply(404, "not found\n")


class Server(ThreadingHTTPServer):
    # On SIGTERM, requests in flight finish before the process exits (as
    # sessionward drains its own), so a rolling update drops nothing.
    daemon_threads = False
    block_on_close = True


def main():
    if len(SECRET) < 32 or SECRET.startswith(b"CHANGE-ME"):
        sys.exit("app.py: set SESSIONWARD_SECRET (the same value as sessionward's signing.secret)")
    host = os.environ.get("APP_HOST", "127.0.0.1")
    port = int(os.environ.get("APP_PORT", "8000"))
    server = Server((host, port), App)

    def stop(signum, _frame):
        print(f"demo app: signal {signum}, draining", file=sys.stderr, flush=True)
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"demo app listening on {host}:{port}", file=sys.stderr, flush=True)
    server.serve_forever()
    server.server_close()  # joins the request threads
    print("demo app: stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
