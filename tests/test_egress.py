"""The egress proxy of an agent's sandbox (population/egress.py): the allowlist it derives, and the
proxy itself on its Unix socket: CONNECT tunnels and plain-HTTP absolute-URI requests to an
allowed endpoint pass, anything else gets 403 and is recorded. Loopback servers only, no bwrap."""
from __future__ import annotations

import contextlib
import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from population import egress
from population.egress import EgressProxy, endpoint, endpoints_from_env


@contextlib.contextmanager
def serve_http(body: bytes) -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on the host's loopback answering `body` to GET and POST; yields its port and
    the request lines and headers it received (one string per request)."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            seen.append(f"{self.requestline}\n{self.headers}{self.rfile.read(length).decode()}")
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True, scope="module")
def no_proxy_left_behind():
    """The shared proxies of a module's sandboxed agents closed after it (their socket directories
    removed): the suite ends with os._exit, so the atexit hook never runs."""
    yield
    egress.close_shared()


def exchange(proxy: EgressProxy, request: bytes) -> bytes:
    """Send `request` to the proxy's socket and read until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(proxy.path)
        client.sendall(request)
        data = b""
        while chunk := client.recv(65536):
            data += chunk
        return data


# ---------------------------------------------------------------- the allowlist

def test_endpoints_are_host_and_port():
    assert endpoint("https://API.anthropic.com") == "api.anthropic.com:443"
    assert endpoint("http://127.0.0.1:8080/v1/messages") == "127.0.0.1:8080"
    assert endpoint("localhost:99") == "localhost:99" and endpoint("[::1]:8080") == "[::1]:8080"
    for bad in ("localhost", "ftp://host", "host:port", ""):
        with pytest.raises(ValueError):
            endpoint(bad)


def test_the_allowlist_comes_from_the_agents_own_environment():
    assert endpoints_from_env({"ANTHROPIC_API_KEY": "k"}) == ["api.anthropic.com:443"]
    assert endpoints_from_env({"ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": "http://127.0.0.1:9000/x"}) == \
        ["127.0.0.1:9000"]                                  # the base URL replaces the default host
    assert endpoints_from_env({"OPENAI_API_KEY": "k"}, ["gw.local:8443"]) == ["api.openai.com:443", "gw.local:8443"]
    assert endpoints_from_env({"FOO_TOKEN": "k"}, ["gw.local:8443"]) == ["gw.local:8443"]
    assert endpoints_from_env({"PATH": "/usr/bin"}) == ["api.anthropic.com:443", "api.openai.com:443"]


def test_proxy_env_sends_every_client_through_the_forwarder():
    env = egress.proxy_env(3128)
    assert env["HTTPS_PROXY"] == env["http_proxy"] == env["ALL_PROXY"] == "http://127.0.0.1:3128"
    assert env["NO_PROXY"] == env["no_proxy"] == ""


# ---------------------------------------------------------------- the proxy

@pytest.fixture
def model():
    with serve_http(b"the model answers") as (port, seen):
        yield port, seen


@pytest.fixture
def other():
    """Another service on the host's loopback (standing in for Ray's ports)."""
    with serve_http(b"ray's secrets") as (port, seen):
        yield port, seen


def test_a_plain_http_request_to_the_model_passes_as_origin_form(model):
    port, seen = model
    with EgressProxy([f"127.0.0.1:{port}"]) as proxy:
        answer = exchange(proxy, f"POST http://127.0.0.1:{port}/v1/messages?beta=1 HTTP/1.1\r\n"
                                 f"Host: 127.0.0.1:{port}\r\nProxy-Connection: keep-alive\r\n"
                                 "Content-Length: 5\r\n\r\nhello".encode())
    assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"the model answers")
    request = seen[0]
    assert request.startswith("POST /v1/messages?beta=1 HTTP/1.1\n") and request.endswith("hello")
    assert "Connection: close" in request and "Proxy-Connection" not in request


def test_a_connect_tunnel_to_the_model_carries_whatever_it_speaks(model):
    port, seen = model
    with EgressProxy([f"127.0.0.1:{port}"]) as proxy:
        answer = exchange(proxy, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
                                 "GET /inside HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200 Connection Established\r\n\r\nHTTP/1.0 200")
    assert answer.endswith(b"the model answers") and seen[0].startswith("GET /inside HTTP/1.1")


def test_anything_else_is_refused_with_403_and_recorded(model, other):
    port, _ = model
    other_port, other_seen = other
    with EgressProxy([f"127.0.0.1:{port}"]) as proxy:
        for request in (f"CONNECT 127.0.0.1:{other_port} HTTP/1.1\r\n\r\n",
                        f"GET http://127.0.0.1:{other_port}/ HTTP/1.1\r\n\r\n",
                        f"GET http://localhost:{port}/ HTTP/1.1\r\n\r\n"):        # the same server, another name
            assert exchange(proxy, request.encode()).startswith(b"HTTP/1.1 403 Forbidden")
        assert exchange(proxy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert list(proxy.refused) == [f"CONNECT 127.0.0.1:{other_port}", f"GET 127.0.0.1:{other_port}",
                                       f"GET localhost:{port}"]
    assert other_seen == []


def test_an_allowed_endpoint_that_is_down_is_a_502():
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    with EgressProxy([f"127.0.0.1:{port}"]) as proxy:
        assert exchange(proxy, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode()).startswith(b"HTTP/1.1 502")


def test_the_shared_proxy_is_one_per_allowlist():
    first = egress.shared_proxy(["example.invalid:1", "example.invalid:2"])
    assert egress.shared_proxy(["example.invalid:2", "http://example.invalid:1"]) is first
    assert egress.shared_proxy(["example.invalid:3"]) is not first


# ---------------------------------------------------------------- the forwarder

@pytest.mark.parametrize(("code", "status"), [("raise SystemExit(3)", 3),
                                              ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", 143)])
def test_the_forwarder_exits_as_its_command_did(code, status):
    forwarder = [sys.executable, "-I", "-S", egress.__file__, "forward", "/nonexistent.sock", "0", "--"]
    assert subprocess.run([*forwarder, sys.executable, "-c", code], timeout=30).returncode == status
    assert subprocess.run([*forwarder[:-1], sys.executable], capture_output=True, timeout=30).returncode == 2
