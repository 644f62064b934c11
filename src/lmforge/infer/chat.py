"""The terminal chat loop behind ``lmforge chat``: multi-turn history through the chat template.

Each turn renders the whole history (optional system message, then alternating user/assistant
messages) with the tokenizer's chat template and streams the reply as complete text. When the
history no longer fits the context, the oldest turns are dropped (the system message is kept).

Commands: ``/reset`` clears the history, ``/exit`` (or ``/quit``, Ctrl-D) leaves, ``/help``.
Ctrl-C while the model is answering stops that answer; the partial reply stays in the history.

Interactive terminals get ``you>`` prompts and readline editing; with piped stdin (scripts,
tests) every input line is one user turn and each reply is printed on its own line::

    printf 'hello\\n/reset\\n你好\\n' | lmforge chat runs/demo --seed 0

From Python::

    run_chat(engine, SamplingConfig(temperature=0.7), system="You are helpful.")
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable, TextIO

from lmforge.infer.sampling import SamplingConfig

if TYPE_CHECKING:
    from lmforge.infer.engine import Engine

HELP = "commands: /reset clears the conversation, /exit (or Ctrl-D) quits, /help shows this"


def fit_history(engine: Engine, messages: list[dict[str, str]], sampling: SamplingConfig) -> tuple[list[int], int]:
    """Prompt ids for ``messages``, dropping the oldest turns until the reply fits the context.

    Returns the ids and how many messages were dropped (the caller drops them from its history
    too, so later turns do not pay to re-render them). The system message and the last user
    message are never dropped; if those alone are too long the engine keeps the prompt's tail.
    """
    has_system = bool(messages) and messages[0]["role"] == "system"
    head, turns = messages[: int(has_system)], messages[int(has_system) :]
    budget = engine.max_context - sampling.max_new_tokens
    dropped = 0
    ids = engine.encode_chat(head + turns)
    while len(ids) > budget and len(turns) > 1:
        # Drop a whole exchange (user + assistant) so the history still alternates roles.
        cut = 2 if len(turns) > 2 and turns[1]["role"] == "assistant" else 1
        turns, dropped = turns[cut:], dropped + cut
        ids = engine.encode_chat(head + turns)
    return ids, dropped


def _line_reader(stdin: TextIO, interactive: bool) -> Callable[[str], str]:
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        return input

    def read(_prompt: str) -> str:
        line = stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    return read


def run_chat(
    engine: Engine,
    sampling: SamplingConfig,
    system: str | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    interactive: bool | None = None,
) -> int:
    """Run the loop until /exit or end of input; returns the number of replies produced."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    if interactive is None:
        interactive = stdin.isatty() and stdout.isatty()
    read = _line_reader(stdin, interactive)
    base = [{"role": "system", "content": system}] if system else []
    messages = list(base)
    replies = 0
    if interactive:
        stdout.write(f"{HELP}\n")
    while True:
        try:
            line = read("you> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            if interactive:
                stdout.write("\n")
            break
        text = line.strip()
        if not text:
            continue
        # A lone "/word" is a command; anything longer ("/usr/bin is ...") is a message.
        command = text.lower() if text.startswith("/") and text[1:].isalpha() else None
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            messages = list(base)
            stdout.write("(conversation cleared)\n")
            continue
        if command is not None:
            stdout.write(("" if command == "/help" else f"unknown command {text}; ") + f"{HELP}\n")
            continue
        messages.append({"role": "user", "content": line})
        ids, dropped = fit_history(engine, messages, sampling)
        if dropped:
            messages = messages[: len(base)] + messages[len(base) + dropped :]
            if interactive:
                stdout.write(f"(dropped the {dropped} oldest messages to fit the context)\n")
        if interactive:
            stdout.write("assistant> ")
        stdout.flush()
        reply = []
        stream = engine.stream_text(ids, sampling)
        try:
            for piece in stream:
                reply.append(piece)
                stdout.write(piece)
                stdout.flush()
        except KeyboardInterrupt:
            stream.close()  # stops decoding now; the partial reply is kept
            stdout.write(" [interrupted]")
        stdout.write("\n")
        stdout.flush()
        messages.append({"role": "assistant", "content": "".join(reply)})
        replies += 1
    return replies
