"""Scripted model APIs on loopback for the real agent CLIs (tests/test_real_agents.py); no tests here.

`AnthropicServer` answers the Messages API the way Claude Code uses it (POST /v1/messages, streamed
as server-sent events); `ResponsesServer` answers OpenAI's Responses API the way the Codex CLI uses
it (POST /v1/responses, streamed). Each plays a script, one step per request of the agent's main
conversation (requests that carry its tools); other requests (a title, a quota probe) get a short
text. Steps:

    Tool(name, make_input)    call a tool: Claude Code's Read/Edit/Write with make_input(cwd) -> dict,
                              or Codex's `exec` with make_input(cwd) -> JavaScript (tools.apply_patch)
    Final(text)               the final answer (end of turn)
    Fail(status)              an HTTP error with an API error body, for this and every later request
    Cut()                     start the stream, then close the connection mid-way
    Hang(seconds)             answer nothing for that long

Usage figures are fixed per answer (INPUT_TOKENS, OUTPUT_TOKENS), so a test knows what the CLI's
own JSON must report. Every request is kept (`requests`) with its Authorization/x-api-key header.
"""
from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INPUT_TOKENS, OUTPUT_TOKENS = 1000, 50


@dataclass(frozen=True)
class Tool:
    name: str
    make_input: Callable[[str], object]


@dataclass(frozen=True)
class Final:
    text: str


@dataclass(frozen=True)
class Fail:
    status: int


@dataclass(frozen=True)
class Cut:
    pass


@dataclass(frozen=True)
class Hang:
    seconds: float


class _Server:
    """A threaded HTTP server on 127.0.0.1 playing `script`; subclasses speak one API."""

    cwd_pattern = re.compile(r"working directory:\s*(/[^\s\\\"<]+)", re.IGNORECASE)

    def __init__(self, script: list):
        self.script, self.step, self.requests, self.failing = list(script), 0, [], None
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                server.requests.append({"path": self.path, "body": body,
                                        "auth": self.headers.get("authorization") or self.headers.get("x-api-key")})
                server.answer(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def next_step(self, main: bool):
        with self.lock:
            if self.failing is not None:
                return self.failing
            if not main:
                return Final("ok")
            step = self.script[self.step] if self.step < len(self.script) else Final("DESCRIPTION: script exhausted")
            self.step += 1
            if isinstance(step, Fail):
                self.failing = step
            return step

    def cwd_of(self, body: dict) -> str:
        match = self.cwd_pattern.search(json.dumps(body))
        return match.group(1) if match else ""

    @staticmethod
    def error(handler, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        if status == 429:
            handler.send_header("retry-after", "0")
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def start_stream(handler) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("cache-control", "no-cache")
        handler.end_headers()
        handler.close_connection = True

    @staticmethod
    def event(handler, name: str, data: dict) -> None:
        handler.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        handler.wfile.flush()


class AnthropicServer(_Server):
    """The Messages API, streamed, as Claude Code calls it."""

    def answer(self, handler, body: dict) -> None:
        main = any(tool.get("name") == "Edit" for tool in body.get("tools") or [])
        step = self.next_step(main)
        if isinstance(step, Hang):
            time.sleep(step.seconds)
            step = Final("too late")
        if isinstance(step, Fail):
            kind = "rate_limit_error" if step.status == 429 else "api_error"
            self.error(handler, step.status, {"type": "error", "error": {"type": kind,
                                                                       "message": f"scripted HTTP {step.status}"}})
            return
        self.start_stream(handler)
        self.event(handler, "message_start", {"type": "message_start", "message": {
            "id": f"msg_{len(self.requests)}", "type": "message", "role": "assistant", "model": body.get("model"),
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1}}})
        if isinstance(step, Cut):
            self.event(handler, "content_block_start", {"type": "content_block_start", "index": 0,
                                                        "content_block": {"type": "text", "text": ""}})
            handler.wfile.write(b"event: content_block_delta\ndata: {\"type\": \"content_blo")
            handler.wfile.flush()
            return                                      # the connection closes mid-event
        if isinstance(step, Tool):
            block = {"type": "tool_use", "id": f"toolu_{len(self.requests)}", "name": step.name, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(step.make_input(self.cwd_of(body)))}
            stop = "tool_use"
        else:
            block, delta, stop = {"type": "text", "text": ""}, {"type": "text_delta", "text": step.text}, "end_turn"
        self.event(handler, "content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
        self.event(handler, "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        self.event(handler, "content_block_stop", {"type": "content_block_stop", "index": 0})
        self.event(handler, "message_delta", {"type": "message_delta", "delta": {"stop_reason": stop,
                                                                                 "stop_sequence": None},
                                              "usage": {"output_tokens": OUTPUT_TOKENS}})
        self.event(handler, "message_stop", {"type": "message_stop"})


class ResponsesServer(_Server):
    """The Responses API, streamed, as the Codex CLI calls it (its tools ride in `input`)."""

    cwd_pattern = re.compile(r"<cwd>([^<]+)</cwd>")

    def answer(self, handler, body: dict) -> None:
        step = self.next_step(main=bool(body.get("input")))
        if isinstance(step, Hang):
            time.sleep(step.seconds)
            step = Final("too late")
        if isinstance(step, Fail):
            self.error(handler, step.status, {"error": {"message": f"scripted HTTP {step.status}",
                                                        "type": "server_error" if step.status >= 500 else "rate_limit"}})
            return
        response = {"id": f"resp_{len(self.requests)}", "object": "response", "status": "in_progress", "output": [],
                    "model": body.get("model")}
        self.start_stream(handler)
        self.event(handler, "response.created", {"type": "response.created", "response": response})
        if isinstance(step, Cut):
            handler.wfile.write(b"event: response.output_item.added\ndata: {\"type\": \"response.out")
            handler.wfile.flush()
            return
        if isinstance(step, Tool):
            item = {"type": "custom_tool_call", "id": f"ctc_{len(self.requests)}", "call_id": f"call_{len(self.requests)}",
                    "name": step.name, "input": step.make_input(self.cwd_of(body)), "status": "completed"}
        else:
            item = {"type": "message", "id": f"msg_{len(self.requests)}", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": step.text, "annotations": []}]}
        self.event(handler, "response.output_item.added", {"type": "response.output_item.added", "output_index": 0,
                                                          "item": item})
        self.event(handler, "response.output_item.done", {"type": "response.output_item.done", "output_index": 0,
                                                         "item": item})
        usage = {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS,
                 "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens_details": {"reasoning_tokens": 0}}
        self.event(handler, "response.completed", {"type": "response.completed", "response": {
            **response, "status": "completed", "output": [item], "usage": usage}})


def codex_patch(patch: str) -> Callable[[str], str]:
    """Codex's edit: its `exec` tool runs JavaScript that calls the nested apply_patch tool."""
    return lambda cwd: f"const result = await tools.apply_patch({json.dumps(patch)});\ntext(JSON.stringify(result));\n"
