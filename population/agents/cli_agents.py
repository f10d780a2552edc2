"""Agents that are command-line programs: Claude Code, Codex, and any CLI through a template.

Each runs with the worktree as its working directory, a minimal environment holding only its own
key, and a wall-clock limit that kills its whole process group; under `--sandbox` in bubblewrap
(`Agent.use_sandbox`, see population/sandbox.py). The one-line description is read
from `.agent/description` (what program.md asks for), else from a `DESCRIPTION: ...` line of the
agent's final answer.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

from population.agents.base import (AGENT_DIR, Agent, AgentSpecError, ProcessResult, Proposal,
                                    description_from_text, run_agent_process)
from population.agents.env import minimal_env


class CliAgent(Agent):
    program: str = ""
    install_hint: str = ""
    key_names: tuple[str, ...] = ()

    def __init__(self, *, key_env: str | list[str] | tuple[str, ...] = (), **common):
        super().__init__(**common)
        # key_env: further variables the user lets this agent see (e.g. a provider's settings).
        self.key_names = tuple(dict.fromkeys(self.key_names + tuple(_names(key_env))))
        self.executable = require_program(self.program, self.spec, self.install_hint)

    def _argv(self, worktree: Path, prompt_file: Path) -> tuple[list[str], bool]:
        """The command line, and whether the prompt goes on stdin."""
        raise NotImplementedError

    def _parse(self, stdout: str) -> tuple[str, int | None, float | None, str | None]:
        """(final answer text, tokens, cost in USD, error reported by the agent)."""
        return stdout, None, None, None

    def settings_env(self) -> dict[str, str]:
        """Settings (no secrets) this agent's program needs in its environment."""
        return {}

    def _propose(self, worktree: Path, prompt: str, *, timeout: float) -> Proposal:
        prompt_file = worktree / AGENT_DIR / "prompt.md"
        prompt_file.parent.mkdir(parents=True, exist_ok=True)
        prompt_file.write_text(prompt)
        argv, prompt_on_stdin = self._argv(worktree, prompt_file)
        result = run_agent_process(argv, cwd=worktree, env={**minimal_env(self.key_names), **self.settings_env()},
                                   stdin_text=prompt if prompt_on_stdin else None, timeout=timeout,
                                   max_chars=self.max_transcript_chars, use_sandbox=self.use_sandbox,
                                   output_dir=self.output_dir)
        answer, tokens, cost, reported_error = self._parse(result.stdout)
        # the CLI's own words first (its JSON says why), unless it was killed at the limit
        error = _process_error(result, timeout) if result.timed_out else \
            reported_error or _process_error(result, timeout)
        return Proposal(description=description_from_text(answer), transcript=result.transcript(),
                        seconds=result.seconds, tokens=tokens, cost_usd=cost, error=error)


def require_program(program: str, spec: str, install_hint: str) -> str:
    path = shutil.which(program, path=os.environ.get("PATH"))
    if path is None:
        hint = f"; install it with: {install_hint}" if install_hint else ""
        raise AgentSpecError(f"agent {spec!r} needs the program {program!r}, which is not on PATH{hint}")
    return path


def _process_error(result: ProcessResult, timeout: float) -> str | None:
    if result.timed_out:
        return f"agent timed out after {timeout:g} s"
    if result.returncode != 0:
        last = next((line for line in reversed(result.stderr.splitlines()) if line.strip()), "")
        return f"agent exited with code {result.returncode}" + (f": {last.strip()[:300]}" if last else "")
    return None


class ClaudeAgent(CliAgent):
    """Claude Code headless: `claude -p --output-format json --permission-mode acceptEdits`, prompt
    on stdin. Its JSON result carries `result`, `is_error`, `total_cost_usd` and `usage`. With a
    `base_url` (--agent-base-url) it talks to that Messages API (ANTHROPIC_BASE_URL); its
    non-essential traffic (telemetry, updates) is off: under the sandbox only its model is reachable."""

    program = "claude"
    install_hint = "npm i -g @anthropic-ai/claude-code"
    key_names = ("ANTHROPIC_API_KEY",)

    def __init__(self, *, model: str | None = None, base_url: str | None = None, **common):
        self.spec = "claude"
        self.model, self.base_url = model, base_url
        super().__init__(**common)

    def settings_env(self):
        env = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
        if self.base_url:
            env["ANTHROPIC_BASE_URL"] = self.base_url
        return env

    def _argv(self, worktree, prompt_file):
        argv = [self.executable, "-p", "--output-format", "json", "--permission-mode", "acceptEdits"]
        return argv + (["--model", self.model] if self.model else []), True

    def _parse(self, stdout):
        result = _last_json_object(stdout)
        if result is None:
            return stdout, None, None, None
        usage = result.get("usage") or {}
        token_fields = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        tokens = _sum_ints(usage.get(name) for name in token_fields)
        cost = result.get("total_cost_usd")
        answer = str(result.get("result") or "")
        error = f"claude reported an error: {answer.strip()[:300]}" if result.get("is_error") else None
        return answer, tokens, float(cost) if isinstance(cost, (int, float)) else None, error


class CodexAgent(CliAgent):
    """OpenAI Codex CLI: `codex exec --json -` with the prompt on stdin. Its JSONL events carry the
    final `agent_message` and each turn's `usage` (no cost: it reports tokens only). With a
    `base_url` (--agent-base-url) it talks to that Responses API as its model provider. Its own
    sandbox (`workspace-write`) is used only without ours: it cannot nest inside bubblewrap, which
    confines it anyway (`danger-full-access` there means: no second sandbox inside ours)."""

    program = "codex"
    install_hint = "npm i -g @openai/codex"
    key_names = ("OPENAI_API_KEY",)
    PROVIDER = "autoresearch"

    def __init__(self, *, model: str | None = None, base_url: str | None = None, **common):
        self.spec = "codex"
        self.model, self.base_url = model, base_url
        super().__init__(**common)

    def _argv(self, worktree, prompt_file):
        own_sandbox = "danger-full-access" if self.use_sandbox else "workspace-write"
        argv = [self.executable, "exec", "--json", "--sandbox", own_sandbox, "--skip-git-repo-check"]
        if self.base_url:
            provider = f"model_providers.{self.PROVIDER}"
            argv += ["-c", f'model_provider="{self.PROVIDER}"', "-c", f'{provider}.name="{self.PROVIDER}"',
                     "-c", f"{provider}.base_url={json.dumps(self.base_url)}", "-c", f'{provider}.wire_api="responses"',
                     "-c", f'{provider}.env_key="OPENAI_API_KEY"']
        return argv + (["--model", self.model] if self.model else []) + ["-"], True

    def settings_env(self):
        return {"OPENAI_BASE_URL": self.base_url} if self.base_url else {}

    def _parse(self, stdout):
        answer, tokens, error = "", None, None
        for event in _json_lines(stdout):
            kind = event.get("type")
            item = event.get("item") or {}
            if kind == "item.completed" and item.get("type") in ("agent_message", "assistant_message"):
                answer = str(item.get("text") or answer)
            elif kind == "turn.completed":
                usage = event.get("usage") or {}
                turn = _sum_ints(usage.get(name) for name in ("input_tokens", "output_tokens"))
                tokens = turn if tokens is None else tokens + (turn or 0)
            elif kind in ("turn.failed", "error"):
                detail = event.get("error") or event.get("message") or event
                if isinstance(detail, dict):
                    detail = detail.get("message") or detail
                error = f"codex reported an error: {str(detail)[:300]}"
        return answer or stdout, tokens, None, error


class CommandAgent(CliAgent):
    """Any CLI agent. The template may contain {prompt_file} (else the prompt goes on stdin) and
    {workdir}; `key_env` names the environment variable(s) it may see (comma-separated or a list)."""

    def __init__(self, template: str, **common):
        try:
            self.words = shlex.split(template)
        except ValueError as exc:
            raise AgentSpecError(f"agent 'command:{template}': cannot parse the command line ({exc})") from None
        if not self.words:
            raise AgentSpecError("agent 'command:' needs a command line after the colon")
        self.spec = f"command:{template}"
        self.program = self.words[0]
        super().__init__(**common)

    def _argv(self, worktree, prompt_file):
        values = {"{prompt_file}": str(prompt_file), "{workdir}": str(worktree)}
        argv = [self.executable]
        for word in self.words[1:]:
            for placeholder, value in values.items():
                word = word.replace(placeholder, value)
            argv.append(word)
        return argv, not any("{prompt_file}" in word for word in self.words)


# ---------------------------------------------------------------- parsing helpers

def _names(value) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    return [name.strip() for name in value if name and name.strip()]


def _json_lines(text: str):
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                yield event


def _last_json_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) else None
    except json.JSONDecodeError:
        events = list(_json_lines(text))
        return events[-1] if events else None


def _sum_ints(values) -> int | None:
    numbers = [int(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(numbers) if numbers else None
