"""`openai:MODEL`: a minimal built-in agent over any OpenAI-compatible chat-completions API.

One request: program.md + context + the current train file go in; search/replace edit blocks and
a DESCRIPTION line come back. The edits are applied strictly: every SEARCH must match exactly once
(whole lines), and the result must still parse, else nothing is written and the error is recorded.
Works with OpenAI, vLLM, llama.cpp, Ollama, OpenRouter... (base URL + optional key).
"""
from __future__ import annotations

import ast
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from population.agents.base import AgentSpecError, Agent, Proposal, description_from_text

DEFAULT_BASE_URL = "https://api.openai.com/v1"
KEY_VARIABLE = "OPENAI_API_KEY"
BASE_URL_VARIABLE = "OPENAI_BASE_URL"
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
_MAX_ATTEMPTS = 3
_FIRST_RETRY_PAUSE_S = 2.0   # doubled after each retry

SEARCH_MARKER, DIVIDER, REPLACE_MARKER = "<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE"

EDIT_FORMAT = f"""\
You cannot run commands or open files: the whole train file is below. Answer with your
reasoning (brief), then one or more edit blocks for `{{train_file}}` in exactly this format:

{SEARCH_MARKER}
<lines copied exactly from the current file, enough of them to be unique>
{DIVIDER}
<the lines that replace them>
{REPLACE_MARKER}

Each SEARCH part must match exactly one place in the file, whole lines, same indentation.
Blocks apply in order. End your answer with one line:
DESCRIPTION: <one line saying what you changed>
"""


class EditError(ValueError):
    """An answer whose edits cannot be applied exactly."""


@dataclass(frozen=True)
class Edit:
    search: str
    replace: str


def parse_edits(answer: str) -> list[Edit]:
    """The SEARCH/REPLACE blocks of an answer, in order."""
    edits, search, replace, state = [], [], [], "outside"
    for line in answer.splitlines():
        marker = line.strip()
        if state == "outside" and marker == SEARCH_MARKER:
            search, replace, state = [], [], "search"
        elif state == "search" and marker == DIVIDER:
            state = "replace"
        elif state == "replace" and marker == REPLACE_MARKER:
            edits.append(Edit("".join(l + "\n" for l in search), "".join(l + "\n" for l in replace)))
            state = "outside"
        elif state == "search":
            search.append(line)
        elif state == "replace":
            replace.append(line)
    if state != "outside":
        raise EditError(f"edit block {len(edits) + 1} is not closed by {REPLACE_MARKER!r}")
    if not edits:
        raise EditError(f"the answer has no edit blocks ({SEARCH_MARKER!r} ... {REPLACE_MARKER!r})")
    return edits


def apply_edits(source: str, edits: list[Edit], file_name: str) -> str:
    """Apply every edit or none: each SEARCH must match exactly one run of whole lines."""
    text = source if source.endswith("\n") else source + "\n"
    for number, edit in enumerate(edits, 1):
        if not edit.search.strip():
            raise EditError(f"edit block {number}: empty SEARCH part")
        starts = _line_matches(text, edit.search)
        if len(starts) != 1:
            where = "not found" if not starts else f"found {len(starts)} times"
            raise EditError(f"edit block {number}: SEARCH text {where} in {file_name}: "
                            f"{edit.search.strip().splitlines()[0][:80]!r}")
        start = starts[0]
        text = text[:start] + edit.replace + text[start + len(edit.search):]
    try:
        ast.parse(text)
    except SyntaxError as exc:
        raise EditError(f"the edited {file_name} does not parse: {exc.msg} (line {exc.lineno})") from None
    return text


def _line_matches(text: str, search: str) -> list[int]:
    starts, index = [], text.find(search)
    while index != -1:
        if index == 0 or text[index - 1] == "\n":
            starts.append(index)
        index = text.find(search, index + 1)
    return starts


class OpenAIAgent(Agent):
    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 train_file: str | None = None, seed: int | None = None, **common):
        self.api_key = api_key or os.environ.get(KEY_VARIABLE) or None
        super().__init__(api_key=self.api_key, **common)
        self.spec = f"openai:{model}"
        self.model = model
        self.base_url = (base_url or os.environ.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL).rstrip("/")
        self.train_file = train_file
        self.seed = seed
        if self.api_key is None and self.base_url == DEFAULT_BASE_URL:
            raise AgentSpecError(f"agent {self.spec!r} needs an API key: set {KEY_VARIABLE} "
                                 "(or give --agent-base-url for a server that needs none)")

    def _propose(self, worktree: Path, prompt: str, *, timeout: float) -> Proposal:
        from population.context import train_file_in_prompt

        start = time.monotonic()
        train_file = self.train_file or train_file_in_prompt(prompt)
        if not train_file:
            return Proposal("", "", 0.0, error=f"{self.spec}: no train file given (option train_file or the prompt)")
        path = worktree / train_file
        source = path.read_text()
        messages = [
            {"role": "system", "content": EDIT_FORMAT.replace("{train_file}", train_file)},
            {"role": "user", "content": f"{prompt}\n\n## Current `{train_file}`\n\n```python\n{source}```\n"},
        ]
        response, error = self._complete(messages, timeout)
        seconds = time.monotonic() - start
        if response is None:
            return Proposal("", "", seconds, error=error)
        answer = _answer_text(response)
        tokens, cost = _usage(response)
        transcript = answer + (f"\n\n[usage] tokens={tokens} cost_usd={cost}\n" if tokens or cost else "")
        proposal = Proposal(description_from_text(answer), transcript, seconds, tokens, cost)
        try:
            path.write_text(apply_edits(source, parse_edits(answer), train_file))
        except EditError as exc:
            proposal.error = str(exc)
        return proposal

    def _complete(self, messages: list[dict], timeout: float) -> tuple[dict | None, str | None]:
        """POST the chat completion under a hard wall-clock limit (requests' own timeouts bound
        each read, not the whole call), retrying rate limits and server errors."""
        outcome: dict = {}
        worker = threading.Thread(target=self._post_with_retries, args=(messages, timeout, outcome), daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            return None, f"agent timed out after {timeout:g} s"
        return outcome.get("response"), outcome.get("error")

    def _post_with_retries(self, messages: list[dict], timeout: float, outcome: dict) -> None:
        url = f"{self.base_url}/chat/completions"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        payload = {"model": self.model, "messages": messages}
        if self.seed is not None:
            payload["seed"] = self.seed
        deadline = time.monotonic() + timeout
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                reply = requests.post(url, json=payload, headers=headers,
                                      timeout=max(deadline - time.monotonic(), 0.1))
            except requests.Timeout:
                # Each request may take only what is left of the deadline, so its timeout is the
                # agent's: the same message whichever of this thread and the join sees it first.
                outcome["error"] = f"agent timed out after {timeout:g} s"
                return
            except requests.RequestException as exc:
                outcome["error"] = f"request to {url} failed: {type(exc).__name__}: {exc}"
            else:
                if reply.ok:
                    try:
                        outcome["response"], outcome["error"] = reply.json(), None
                    except ValueError:
                        outcome["error"] = f"{url} answered with something that is not JSON: {reply.text[:200]!r}"
                    return
                outcome["error"] = f"HTTP {reply.status_code} from {url}: {reply.text[:300]}"
                if reply.status_code not in _RETRY_STATUS:
                    return
            pause = _FIRST_RETRY_PAUSE_S * 2 ** (attempt - 1)
            if attempt == _MAX_ATTEMPTS or time.monotonic() + pause >= deadline:
                return
            time.sleep(pause)


def _answer_text(response: dict) -> str:
    try:
        content = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return ""
    if isinstance(content, list):   # some servers return content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def _usage(response: dict) -> tuple[int | None, float | None]:
    usage = response.get("usage") or {}
    tokens = usage.get("total_tokens")
    if tokens is None and ("prompt_tokens" in usage or "completion_tokens" in usage):
        tokens = (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
    cost = usage.get("cost", response.get("cost"))   # OpenRouter and some proxies report dollars
    return (int(tokens) if isinstance(tokens, (int, float)) else None,
            float(cost) if isinstance(cost, (int, float)) else None)
