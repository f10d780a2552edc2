"""Agents: what proposes a child's change to the train file.

    make_agent("mutate", seed=1)                  offline: perturb one or two UPPER_CASE constants
    make_agent("claude")                          Claude Code, headless (needs `claude` on PATH)
    make_agent("codex")                           OpenAI Codex CLI, `codex exec` (needs `codex`)
    make_agent("command:aider --yes --message-file {prompt_file}")   any CLI agent
    make_agent("openai:gpt-4.1", base_url=...)    built-in agent over a chat-completions API

Every agent's `propose(worktree, prompt, timeout=...)` edits files in the worktree (never commits)
and returns a Proposal. Problems with the spec itself (unknown kind, missing program, missing key)
raise AgentSpecError at make_agent time, so a run fails before it starts.
"""
from __future__ import annotations

from population.agents.base import Agent, AgentSpecError, Proposal

VALID_SPECS = ("mutate", "claude", "codex", "command:TEMPLATE", "openai:MODEL")
# Options the driver may pass to any agent; each agent takes the ones that apply to it.
_OPTIONS_BY_KIND = {
    "mutate": {"seed", "train_file"},
    "claude": {"model", "key_env", "base_url"},
    "codex": {"model", "key_env", "base_url"},
    "command": {"key_env"},
    "openai": {"base_url", "api_key", "train_file", "seed"},
}
_COMMON_OPTIONS = {"max_transcript_chars"}
KNOWN_OPTIONS = frozenset(set().union(*_OPTIONS_BY_KIND.values()) | _COMMON_OPTIONS)

__all__ = ["Agent", "AgentSpecError", "Proposal", "VALID_SPECS", "make_agent"]


def make_agent(spec: str, **options) -> Agent:
    """Build the agent a spec names. Options that do not apply to this kind of agent are ignored
    (the driver may pass one option set to a mixed population); unknown option names are errors."""
    unknown = sorted(set(options) - KNOWN_OPTIONS)
    if unknown:
        raise AgentSpecError(f"unknown agent option(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_OPTIONS))}")
    spec = (spec or "").strip()
    kind, _, argument = spec.partition(":")
    if kind not in _OPTIONS_BY_KIND or (kind in ("command", "openai")) != bool(argument.strip()):
        raise AgentSpecError(f"unknown agent spec {spec!r}; valid specs: {', '.join(VALID_SPECS)}")
    accepted = _OPTIONS_BY_KIND[kind] | _COMMON_OPTIONS
    kwargs = {name: value for name, value in options.items() if name in accepted and value is not None}
    if kind == "mutate":
        from population.agents.mutate import MutateAgent
        return MutateAgent(**kwargs)
    if kind == "openai":
        from population.agents.openai_agent import OpenAIAgent
        return OpenAIAgent(argument.strip(), **kwargs)
    from population.agents import cli_agents
    if kind == "claude":
        return cli_agents.ClaudeAgent(**kwargs)
    if kind == "codex":
        return cli_agents.CodexAgent(**kwargs)
    return cli_agents.CommandAgent(argument.strip(), **kwargs)
