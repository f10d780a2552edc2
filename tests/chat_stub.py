"""A real chat-completions server on loopback for the agent tests: every POST is recorded
(path, Authorization header, JSON body) and answered by `respond(request) -> (status, body, delay)`."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class ChatServer:
    def __init__(self, respond: Callable[[dict], tuple[int, dict, float]]):
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                request = {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                server.requests.append(request)
                status, reply, delay = respond(request)
                time.sleep(delay)
                data = json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass   # the client gave up waiting (timeout tests)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def auth(self) -> list[str]:
        """The Authorization header of every request so far."""
        return [r["auth"] or "" for r in self.requests]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def scripted(replies: list[tuple[int, dict, float]]) -> Callable[[dict], tuple[int, dict, float]]:
    """Answers in order; the last reply repeats."""
    queue = list(replies)
    return lambda request: queue.pop(0) if len(queue) > 1 else queue[0]
