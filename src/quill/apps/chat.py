"""``quill chat RUN``: a multi-turn conversation with the poet in the terminal, streamed token by token.

The conversation is re-encoded by the checkpoint's template every turn (never formatted here) and kept
inside the context window by dropping the oldest user/assistant exchanges, never the system message, so a
long chat keeps working instead of failing at the 2,049th token. Ctrl-C while the poet writes stops that
answer (kept as far as it got); Ctrl-C or Ctrl-D at the prompt leaves.

Commands: /reset, /save FILE, /set KEY VALUE, /system TEXT, /settings, /help, /quit.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from quill.config import FORM_CHOICES
from quill.decoding.engine import Engine
from quill.decoding.sampling import SAMPLING_KEYS, SamplingError, SamplingParams, parse_setting

HELP = f"""commands:
  /reset              forget the conversation (the system message stays)
  /save FILE          write the conversation as JSON ({{"messages": [...]}})
  /set KEY VALUE      change a sampling setting: temperature, top_p, top_k, repetition_penalty,
                      max_new_tokens, seed (e.g. /set temperature 0.9; /set seed none)
                      or the poem's shape: form ({', '.join(FORM_CHOICES)}; off),
                      lines N, rhyme ABAB or couplets, meter iambic pentameter, retries N (tries per
                      line), best_of N (e.g. /set form sonnet; /set form off; /set rhyme none)
  /system TEXT        set the system message (/system alone removes it)
  /settings           show the sampling settings
  /help               this help
  /quit               leave (Ctrl-D works too)"""


class ChatSession:
    """The conversation state and commands, separate from the terminal so tests can drive it."""

    def __init__(self, engine: Engine, out: TextIO | None = None, **sampling: Any):
        self.engine, self.out = engine, out or sys.stdout  # sys.stdout when called, not when imported
        # A chat answers differently each time unless a seed is asked for (the run's seed is for `generate`).
        self.params = engine.params(**sampling)
        if sampling.get("seed") is None:
            self.params = self.params.with_(seed=None)
        self.system: str | None = None
        self.messages: list[dict[str, str]] = []

    def conversation(self) -> list[dict[str, str]]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.messages

    def fit(self) -> list[int]:
        """Prompt ids for the conversation, dropping the oldest exchanges until prompt + answer fit."""
        room = self.engine.context_length - min(self.params.max_new_tokens, self.engine.context_length // 2)
        while True:
            ids = self.engine.chat_prompt(self.conversation())
            if len(ids) <= room or len(self.messages) <= 1:
                return ids
            drop = 2 if len(self.messages) > 2 and self.messages[1]["role"] == "assistant" else 1
            del self.messages[:drop]

    # ------------------------------------------------------------------ commands
    def command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        name, _, arg = line[1:].strip().partition(" ")
        arg = arg.strip()
        if name in ("quit", "exit", "q"):
            return False
        if name == "reset":
            self.messages = []
            self.say("(conversation cleared)")
        elif name == "save":
            if not arg:
                self.say("usage: /save FILE")
            else:
                path = Path(arg).expanduser()
                path.write_text(json.dumps({"messages": self.conversation()}, indent=2, ensure_ascii=False) + "\n",
                                encoding="utf-8")
                self.say(f"(saved {len(self.conversation())} messages to {path})")
        elif name == "set":
            key, _, value = arg.partition(" ")
            key = key.replace("-", "_")
            try:
                if key not in SAMPLING_KEYS or not value.strip():
                    raise SamplingError(key or "?", f"usage: /set KEY VALUE with KEY one of {', '.join(SAMPLING_KEYS)}")
                self.params = self.params.with_(**{key: parse_setting(key, value.strip())})
                self.say(f"({key} = {getattr(self.params, key)})")
            except SamplingError as err:
                self.say(f"(not changed: {err})")
        elif name == "system":
            self.system = arg or None
            self.say(f"(system message {'set' if arg else 'removed'})")
        elif name == "settings":
            self.say("(" + ", ".join(f"{k}={v}" for k, v in self.params.to_dict().items()) + ")")
        elif name == "help":
            self.say(HELP)
        else:
            self.say(f"(unknown command /{name}; /help lists them)")
        return True

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # ------------------------------------------------------------------ one turn
    def reply(self, text: str) -> str:
        """Add the user's message, stream the answer to ``out``, keep it in the history."""
        self.messages.append({"role": "user", "content": text})
        ids = self.fit()
        if len(ids) >= self.engine.context_length:
            self.messages.pop()
            self.say(f"(that message is too long for the context window of {self.engine.context_length} tokens)")
            return ""
        self.out.write("poet> ")
        stream = self.engine.stream(ids, self.params, prompt_text=text)  # form: auto reads the request
        pieces: list[str] = []
        try:
            for delta in stream:
                pieces.append(delta)
                self.out.write(delta)
                self.out.flush()
        except KeyboardInterrupt:
            stream.close()
            self.out.write(" [stopped]")
        self.out.write("\n\n")
        self.out.flush()
        answer = "".join(pieces)
        self.messages.append({"role": "assistant", "content": answer})
        return answer

    def loop(self) -> int:
        self.say(f"quill chat with {self.engine.name} (context {self.engine.context_length} tokens). /help for "
                 "commands, /quit or Ctrl-D to leave.")
        while True:
            try:
                line = input("you> ")
            except (EOFError, KeyboardInterrupt):
                self.out.write("\n")
                return 0
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return 0
                continue
            self.reply(line)


def run_chat(run: str, backend: str | None = None, quantize: str | None = None, **sampling: Any) -> int:
    SamplingParams.from_settings(None, **sampling)  # a bad flag fails before the model loads
    engine = Engine.load(run, backend=backend, quantize=quantize)
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    return ChatSession(engine, **sampling).loop()
