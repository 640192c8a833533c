#!/usr/bin/env python3
"""The test bed's token server for the `registry-token` registry (distribution's token auth:
https://distribution.github.io/distribution/spec/auth/token/).

    token-server.py PORT STATE_DIR

STATE_DIR holds `key.pem` (RSA), `cert.pem` (its self-signed certificate, the registry's
`rootcertbundle`), `password` (the one account, user `fastbuild`). Tokens are JWTs signed RS256
with `openssl dgst` (Python's standard library has no RSA), the certificate in the `x5c` header.

GET /token?service=…&scope=… with Basic credentials (or none: anonymous, granted nothing), and
the OAuth2 POST form (`grant_type=password` or `refresh_token`) as registries' token endpoints
accept. Scopes are granted in full to the account, nothing to anyone else; a wrong password is a
401. Every request is appended as one JSON line to STATE_DIR/requests.log — method, User-Agent,
the account or null, the scopes, what was granted — never the password: tests read it to see
who fetched tokens (fastbuild's session, or the BuildKit daemon itself).
"""

import base64
import hmac
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ISSUER = "fastbuild-testbed-token-server"
USER = "fastbuild"
LIFETIME = 300

PORT = int(sys.argv[1])
STATE = sys.argv[2]
with open(os.path.join(STATE, "password")) as f:
    PASSWORD = f.read().strip()
with open(os.path.join(STATE, "cert.pem")) as f:
    pem = f.read()
CERT_DER_B64 = "".join(
    line for line in pem.splitlines() if line and not line.startswith("-----")
)
LOG_LOCK = threading.Lock()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(signing_input: bytes) -> bytes:
    return subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", os.path.join(STATE, "key.pem")],
        input=signing_input,
        capture_output=True,
        check=True,
    ).stdout


def parse_scope(scope: str):
    # repository:name:pull,push (a name may hold ':' only before a port, which repository
    # names do not; split from the right).
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        return None
    return {"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]}


def make_token(service: str, account, scopes):
    now = int(time.time())
    access = []
    if account is not None:
        for s in scopes:
            parsed = parse_scope(s)
            if parsed:
                access.append(parsed)
    header = {"typ": "JWT", "alg": "RS256", "x5c": [CERT_DER_B64]}
    claims = {
        "iss": ISSUER,
        "sub": account or "",
        "aud": service,
        "exp": now + LIFETIME,
        "nbf": now - 10,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "access": access,
    }
    signing_input = (
        b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    ).encode()
    return signing_input.decode() + "." + b64url(sign(signing_input)), access


def password_ok(user, password) -> bool:
    return user == USER and hmac.compare_digest(
        (password or "").encode(), PASSWORD.encode()
    )


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # the request log below is the record
        pass

    def record(self, **entry):
        entry.update(
            time=time.time(),
            method=self.command,
            user_agent=self.headers.get("User-Agent", ""),
        )
        with LOG_LOCK, open(os.path.join(STATE, "requests.log"), "a") as f:
            f.write(json.dumps(entry) + "\n")

    def reply(self, code: int, body: dict, extra=()):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def grant(self, service, account, scopes, via):
        token, access = make_token(service, account, scopes)
        self.record(account=account, scopes=scopes, granted=access, via=via, status=200)
        now = int(time.time())
        body = {"token": token, "access_token": token, "expires_in": LIFETIME,
                "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
        self.reply(200, body)

    def refuse(self, scopes, via, account=None):
        self.record(account=account, scopes=scopes, granted=[], via=via, status=401)
        self.reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                   [("WWW-Authenticate", 'Basic realm="fastbuild-testbed-token"')])

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/healthz":
            return self.reply(200, {"ok": True})
        if url.path != "/token":
            return self.reply(404, {"error": "not found"})
        q = parse_qs(url.query)
        scopes = " ".join(q.get("scope", [])).split()
        service = q.get("service", [""])[0]
        auth = self.headers.get("Authorization")
        if auth is None:
            return self.grant(service, None, scopes, "get-anonymous")
        if not auth.startswith("Basic "):
            return self.refuse(scopes, "get")
        try:
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        except Exception:
            return self.refuse(scopes, "get")
        if not password_ok(user, password):
            return self.refuse(scopes, "get", account=user)
        return self.grant(service, user, scopes, "get-basic")

    def do_POST(self):
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length", "0"))
        if url.path != "/token" or length > 65536:
            return self.reply(404, {"error": "not found"})
        form = parse_qs(self.rfile.read(length).decode())
        scopes = " ".join(form.get("scope", [])).split()
        service = form.get("service", [""])[0]
        grant_type = form.get("grant_type", [""])[0]
        if grant_type == "password":
            user = form.get("username", [""])[0]
            if not password_ok(user, form.get("password", [""])[0]):
                return self.refuse(scopes, "post-password", account=user)
            return self.grant(service, user, scopes, "post-password")
        if grant_type == "refresh_token":
            # The account's refresh token is its password here (an identity token).
            if not password_ok(USER, form.get("refresh_token", [""])[0]):
                return self.refuse(scopes, "post-refresh-token")
            return self.grant(service, USER, scopes, "post-refresh-token")
        return self.refuse(scopes, "post-" + (grant_type or "none"))


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
