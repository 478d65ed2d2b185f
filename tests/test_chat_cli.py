"""`quill chat` and `quill generate`: commands, history kept inside the context, piped stdin, real CLI."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

from quill.apps.chat import ChatSession
from quill.apps.generate_cli import run_generate
from quill.decoding.engine import Engine

GEN = {"temperature": 0.7, "top_p": 0.95, "repetition_penalty": 1.1, "max_new_tokens": 6, "seed": 0}


def engine(fixture, context_length=512):
    model, tokenizer, template = fixture
    return Engine(model, tokenizer, template, name="tiny", context_length=context_length, generation=GEN, fast=False)


def test_chat_commands_with_piped_stdin(tiny_llama, tmp_path, monkeypatch):
    saved = tmp_path / "chat.json"
    lines = ["Write a poem about the sea", "/set temperature 0.9", "/set temperature 9", "/set colour blue",
             "/set top_k 40", "Another one", f"/save {saved}", "/reset", "/settings", "/help", "/bogus", "/quit"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    out = io.StringIO()
    session = ChatSession(engine(tiny_llama), out=out)
    assert session.loop() == 0
    text = out.getvalue()
    assert text.count("poet> ") == 2
    assert "(temperature = 0.9)" in text and "(top_k = 40)" in text
    assert "not changed: temperature" in text and "not changed: colour" in text
    assert "(conversation cleared)" in text and "/save FILE" in text and "unknown command /bogus" in text
    data = json.loads(saved.read_text())
    assert [m["role"] for m in data["messages"]] == ["user", "assistant", "user", "assistant"]
    assert data["messages"][0]["content"] == "Write a poem about the sea"
    assert session.messages == [] and session.params.temperature == 0.9 and session.params.seed is None


def test_eof_and_ctrl_c_at_the_prompt_leave_cleanly(tiny_llama, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))  # then EOF
    assert ChatSession(engine(tiny_llama), out=io.StringIO()).loop() == 0

    def interrupt(_prompt=""):
        raise KeyboardInterrupt
    monkeypatch.setattr("builtins.input", interrupt)
    assert ChatSession(engine(tiny_llama), out=io.StringIO()).loop() == 0


def test_history_is_trimmed_to_the_context_but_keeps_the_system_message(tiny_llama):
    session = ChatSession(engine(tiny_llama, context_length=120), out=io.StringIO(), max_new_tokens=10)
    session.command("/system You are a poet.")
    for i in range(12):
        session.reply(f"Poem number {i} about the sea and the sky, please")
        assert len(session.fit()) <= 120 - 10
    conv = session.conversation()
    assert conv[0] == {"role": "system", "content": "You are a poet."}
    assert conv[1]["role"] == "user" and "number 0 " not in conv[1]["content"]  # oldest turns dropped
    assert conv[-1]["role"] == "assistant" and len(session.messages) < 24


def test_generate_and_continue(capsys):
    assert run_generate("tiny-llama", "Write a poem", max_new_tokens=5, seed=1) == 0
    out, err = capsys.readouterr()
    assert "tokens/s" in err and "finish:" in err
    assert run_generate("tiny-llama", "The sea is blue, the sky is red", raw=True, max_new_tokens=5) == 0
    assert capsys.readouterr().out.startswith("The sea is blue, the sky is red")


def test_real_cli_chat_with_piped_stdin():
    env = {**os.environ, "QUILL_GEN_COMPILE": "0"}
    proc = subprocess.run([sys.executable, "-m", "quill.cli", "chat", "tiny-llama", "--max-new-tokens", "4"],
                          input="Write a poem\n/set temperature 1.5\n/reset\n/quit\n", capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "poet> " in proc.stdout and "(temperature = 1.5)" in proc.stdout and "(conversation cleared)" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "quill.cli", "generate", "tiny-llama", "x", "--temperature", "9"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "temperature" in bad.stderr and "Traceback" not in bad.stderr


def test_set_form_settings_and_bad_values_print_one_line_naming_them(tiny_llama):
    out = io.StringIO()
    session = ChatSession(engine(tiny_llama), out=out)
    good = ["/set form sonnet", "/set rhyme ABAB", "/set lines 8", "/set meter iambic pentameter", "/set best_of 3",
            "/set retries 2"]
    bad = {"/set form ode": "form", "/set lines many": "lines", "/set lines 0": "lines", "/set rhyme AB1": "rhyme",
           "/set meter sapphic verse": "meter", "/set best-of 99": "best_of", "/set temperature hot": "temperature"}
    for line in good + list(bad):
        assert session.command(line)
    p = session.params
    assert (p.form, p.rhyme, p.lines, p.meter, p.best_of, p.retries) == ("sonnet", "ABAB", 8, "iambic pentameter", 3, 2)
    said = out.getvalue().splitlines()
    assert "(form = sonnet)" in said and "(meter = iambic pentameter)" in said and "(best_of = 3)" in said
    errors = [s for s in said if s.startswith("(not changed: ")]
    assert [e.removeprefix("(not changed: ").split(":")[0] for e in errors] == list(bad.values())
    assert len(said) == len(good) + len(bad)  # one line each
    session.command("/set form off")
    assert session.params.form is None and session.params.rhyme == "ABAB"
    session.command("/help")
    shown = out.getvalue()
    assert all(k in shown for k in ("form (sonnet, haiku", "rhyme ABAB", "lines N", "meter iambic", "best_of N"))
