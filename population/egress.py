"""The only network a sandboxed agent has: its model's endpoint(s), through an allowlisting proxy.

Why: an agent must reach its model's API and nothing else. With the host's network (bwrap's
`--share-net`) it also reached every service on the host's loopback (Ray's GCS and dashboard,
another experiment's model server) and the whole internet. So an agent's sandbox has no network
of its own (an empty network namespace: not even the host's loopback is there), and exactly one
way out, a Unix socket bound into it:

    agent --TCP--> 127.0.0.1:FORWARD_PORT   the forwarder, inside the sandbox
          --Unix socket-->                  EgressProxy, outside, in the worker's process
          --TCP--> an allowed host:port only

- `EgressProxy` (outside; stdlib, a thread per connection): an HTTP proxy listening on a Unix
  socket in a 0700 directory. `CONNECT host:port` opens a tunnel (HTTPS: TLS stays end to end,
  the proxy sees no request and holds no key); an absolute-URI request (`POST http://host:port/p`,
  plain HTTP, e.g. a model server on the host's loopback) is passed on as an origin-form request
  with `Connection: close`, one request per connection. Either only when host:port is on the
  allowlist; the TCP destination is always that allowed endpoint, whatever the client sends
  afterwards. Anything else gets `403 Forbidden`, is logged (logger `population.egress`) and kept
  in `EgressProxy.refused`.
- the forwarder (this very file, run as a script by the sandbox's Python with `-I -S`, so nothing
  of the agent's worktree can shadow a module it imports): the sandbox's first process. It
  listens on 127.0.0.1:FORWARD_PORT, relays each connection to the Unix socket, and runs the
  agent's command as its child; its exit status is the agent's.
- `endpoints_from_env`: the allowlist, from the agent's own environment (its provider's base URL,
  else the provider's default API host when the provider's key is there), plus explicit entries.
- `proxy_env`: HTTPS_PROXY/HTTP_PROXY/ALL_PROXY (both cases) pointing at the forwarder, NO_PROXY
  empty so even a loopback URL goes through the proxy. A client that ignores them gets nowhere:
  there is no other route out.

Stdlib only: the forwarder runs inside the sandbox with no site-packages.
"""
from __future__ import annotations

import atexit
import collections
import logging
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

log = logging.getLogger("population.egress")

FORWARD_PORT = 3128            # inside the sandbox's own network namespace: nothing else can be there
MAX_HEAD_BYTES = 64 * 1024
CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 30.0
DEFAULT_PORTS = {"http": 80, "https": 443}
# (its base URL variable, the variables holding its credentials, its default base URL)
PROVIDERS = (("ANTHROPIC_BASE_URL", ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"),
              "https://api.anthropic.com"),
             ("OPENAI_BASE_URL", ("OPENAI_API_KEY",), "https://api.openai.com"))
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")
# Headers meant for the proxy or for this one connection, never passed on.
DROPPED_HEADERS = {"connection", "keep-alive", "proxy-connection", "proxy-authorization"}


# ---------------------------------------------------------------- the allowlist

def endpoint(value: str) -> str:
    """`host:port` of a URL or of a `host:port` (the scheme's port when none is given), the host
    lowercased, an IPv6 host in brackets. Raises ValueError."""
    url = urlsplit(value if "://" in value else f"//{value}")
    port = url.port or DEFAULT_PORTS.get(url.scheme)       # url.port raises ValueError when malformed
    if not url.hostname or port is None:
        raise ValueError(f"not an endpoint (host:port or a URL): {value!r}")
    host = url.hostname.lower()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def endpoints_from_env(env: Mapping[str, str], extra: Iterable[str] = ()) -> list[str]:
    """What an agent with environment `env` may reach: `extra`, each provider's base URL that
    `env` sets, else the provider's default API host when `env` holds its key; when that finds
    nothing at all, the default hosts of all providers."""
    found = {endpoint(value) for value in extra}
    for base_url, keys, default in PROVIDERS:
        if env.get(base_url):
            found.add(endpoint(env[base_url]))
        elif any(env.get(key) for key in keys):
            found.add(endpoint(default))
    return sorted(found) or sorted(endpoint(default) for _, _, default in PROVIDERS)


def proxy_env(port: int = FORWARD_PORT) -> dict[str, str]:
    """The variables that send an agent's HTTP(S) clients to the forwarder."""
    url = f"http://127.0.0.1:{port}"
    names = [*PROXY_VARIABLES, *(name.lower() for name in PROXY_VARIABLES)]
    return {**{name: url for name in names}, "NO_PROXY": "", "no_proxy": ""}


# ---------------------------------------------------------------- bytes both ways

def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)      # tell the other side this direction is done
        except OSError:
            pass


def splice(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes between `a` and `b`, both ways, until both directions are done."""
    other = threading.Thread(target=_pump, args=(a, b), daemon=True)
    other.start()
    _pump(b, a)
    other.join()


# ---------------------------------------------------------------- the proxy (outside the sandbox)

class EgressProxy:
    """An HTTP proxy on a Unix socket (`path`) that reaches only the `allowed` endpoints."""

    def __init__(self, allowed: Iterable[str], *, connect_timeout_s: float = CONNECT_TIMEOUT_S):
        self.allowed = frozenset(endpoint(value) for value in allowed)
        self.connect_timeout_s = connect_timeout_s
        self.refused: collections.deque[str] = collections.deque(maxlen=1000)
        base = None if len(tempfile.gettempdir()) < 64 else "/tmp"      # a Unix socket path is short
        self._dir = tempfile.mkdtemp(prefix="egress-", dir=base)        # 0700: only this user connects
        self.path = os.path.join(self._dir, "proxy.sock")
        self._server = socketserver.ThreadingUnixStreamServer(self.path, _ProxyHandler)
        self._server.daemon_threads = True
        self._server.proxy = self
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="egress-proxy",
                         daemon=True).start()

    def refuse(self, what: str) -> None:
        self.refused.append(what)
        log.warning("egress refused: %s (allowed: %s)", what, ", ".join(sorted(self.allowed)) or "nothing")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> EgressProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _ProxyHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        proxy: EgressProxy = self.server.proxy
        client = self.request
        try:
            head, rest = _read_head(client)
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            if method != "CONNECT" and urlsplit(target).scheme != "http":
                raise ValueError(f"not a proxy request: {lines[0][:200]}")
            where = endpoint(target)
        except (ValueError, OSError) as error:
            return _reply(client, 400, f"bad request: {error}")
        if where not in proxy.allowed:
            proxy.refuse(f"{method} {where}")
            return _reply(client, 403, f"egress to {where} is not allowed from this sandbox")
        host, port = where.rsplit(":", 1)
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=proxy.connect_timeout_s)
        except OSError as error:
            return _reply(client, 502, f"cannot reach {where}: {error}")
        with upstream:
            upstream.settimeout(None)
            if method == "CONNECT":
                client.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            else:
                upstream.sendall(_origin_form(method, target, version, lines[1:]))
            if rest:
                upstream.sendall(rest)
            splice(client, upstream)


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The request head (up to the blank line) and whatever came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD_BYTES:
            raise ValueError("request head too long")
        chunk = sock.recv(CHUNK)
        if not chunk:
            raise ValueError("connection closed before the end of the request head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _origin_form(method: str, target: str, version: str, headers: list[str]) -> bytes:
    """An absolute-URI request as its server expects it: the path only, and the connection
    closed after the response (the next request on it might be meant for another host)."""
    url = urlsplit(target)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    kept = [line for line in headers if line.split(":", 1)[0].strip().lower() not in DROPPED_HEADERS]
    return "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""]).encode("latin-1")


def _reply(client: socket.socket, status: int, text: str) -> None:
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
    body = f"{text}\n".encode()
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n" \
           "Connection: close\r\n\r\n"
    try:
        client.sendall(head.encode() + body)
    except OSError:
        pass


_shared: dict[frozenset[str], EgressProxy] = {}
_shared_lock = threading.Lock()


def shared_proxy(allowed: Iterable[str]) -> EgressProxy:
    """This process's proxy for the allowlist `allowed`: started on first use and kept for the
    agents after it (a worker runs one agent after another), closed at exit."""
    key = frozenset(endpoint(value) for value in allowed)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = EgressProxy(key)
        return _shared[key]


@atexit.register
def close_shared() -> None:
    """Close every shared proxy (at exit; a test suite that ends with os._exit calls it itself)."""
    with _shared_lock:
        for proxy in _shared.values():
            proxy.close()
        _shared.clear()


# ---------------------------------------------------------------- the forwarder (inside the sandbox)

def forward(socket_path: str, port: int, command: list[str]) -> int:
    """Relay 127.0.0.1:`port` to the proxy's Unix socket while `command` runs; its exit status."""
    listener = socket.create_server(("127.0.0.1", port))
    threading.Thread(target=_relay_forever, args=(listener, socket_path), daemon=True).start()
    try:
        child = subprocess.Popen(command)
    except OSError as error:
        print(f"egress forwarder: cannot run {command[0]}: {error}", file=sys.stderr)
        return 127
    code = child.wait()
    return code if code >= 0 else 128 - code      # killed by a signal: the shell's convention


def _relay_forever(listener: socket.socket, socket_path: str) -> None:
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_relay, args=(client, socket_path), daemon=True).start()


def _relay(client: socket.socket, socket_path: str) -> None:
    with client, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
        try:
            upstream.connect(socket_path)
        except OSError:
            return
        splice(client, upstream)


def main(argv: list[str]) -> int:
    """`egress.py forward SOCKET PORT -- COMMAND...` (how the sandbox starts an agent)."""
    if len(argv) < 5 or argv[0] != "forward" or argv[3] != "--":
        print("usage: egress.py forward SOCKET PORT -- COMMAND...", file=sys.stderr)
        return 2
    return forward(argv[1], int(argv[2]), argv[4:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
