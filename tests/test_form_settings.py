"""The sampling settings, form settings included, defined once (``GenerationConfig``) and reaching the engine
from every front-end: ``quill generate`` / ``chat`` / ``serve`` flags, ``/set``, the OpenAI API's extra fields,
the web page's picker and the saved generation_config.json. The engine is watched, not judged: these tests
check which settings and request words reach ``Engine.stream``, never the poems."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from quill.apps import openai_schema as oa
from quill.config import FORM_CHOICES, MAX_LINES, METER_FEET, METER_MEASURES, GenerationConfig
from quill.decoding.engine import Engine
from quill.decoding.sampling import SAMPLING_KEYS, SamplingError, SamplingParams, parse_setting

WEB = Path(__file__).resolve().parents[1] / "src" / "quill" / "apps" / "web"
PLAIN = dict(form=None, lines=None, rhyme=None, meter=None, best_of=1)

# every setting: values GenerationConfig accepts, then values it rejects (bounds and types)
CASES = {
    "temperature": ([0, 0.0, 1.5, 2.0], [-0.1, 2.01, 5.0, 6, True]),
    "top_p": ([0.01, 0.5, 1.0, 1], [0, 0.0, -1, 1.01]),
    "top_k": ([0, 1, 40, 10_000, 40.0], [-1, 1.5, True]),
    "repetition_penalty": ([0.5, 1, 1.1, 10], [0, -1.0, 10.01, 100]),
    "max_new_tokens": ([1, 160, 1 << 20], [0, -5, (1 << 20) + 1, 2.5]),
    "seed": ([0, 7, 2 ** 63 - 1, 1.0], [-1, 2 ** 63, 1.5, False]),  # SamplingParams' None: a fresh seed
    "form": ([None, *FORM_CHOICES], ["ode", "Sonnet", "", "off", 1]),
    "lines": ([None, 1, 14, MAX_LINES, 3.0], [0, -2, MAX_LINES + 1, 3.5, True]),
    "rhyme": ([None, "ABAB", "abab", "AABBA", "AB AB", "couplets", "A" * MAX_LINES],
              ["", "AB1", "A-B", "A" * (MAX_LINES + 1), "AB!", 4]),
    "meter": ([None, "iambic pentameter", "trochaic", "pentameter iambic", "dactylic-trimeter"],
              ["", "pentameter", "iambic foo", "iambic pentameter now", "sapphic"]),
    "retries": ([1, 4, 16], [0, 17, 2.5]),
    "best_of": ([1, 3, 16], [0, 17, -1]),
}


def accepts_config(key, value) -> bool:
    try:
        GenerationConfig(**{key: value})
        return True
    except ValidationError:
        return False


def accepts_params(key, value) -> bool:
    try:
        SamplingParams(**{key: value})
        return True
    except SamplingError as err:
        assert err.param == key, (key, value, err)
        return False


def test_every_setting_has_cases():
    assert set(CASES) == set(GenerationConfig.model_fields) == set(SAMPLING_KEYS)
    assert all(GenerationConfig.model_fields[k].description for k in SAMPLING_KEYS)


@pytest.mark.parametrize("key", list(CASES))
def test_generation_config_and_sampling_params_agree_on_bounds(key):
    good, bad = CASES[key]
    for value in good:
        assert accepts_config(key, value) and accepts_params(key, value), (key, value)
    for value in bad:
        assert not accepts_config(key, value) and not accepts_params(key, value), (key, value)


@pytest.mark.parametrize("key", ["temperature", "top_p", "top_k", "repetition_penalty", "seed", "lines",
                                 "retries", "best_of", "max_new_tokens"])
def test_the_openai_schema_has_the_same_bounds(key):
    field = "max_tokens" if key == "max_new_tokens" else key
    good, bad = CASES[key]
    msgs = [{"role": "user", "content": "x"}]
    for value in good:
        oa.ChatRequest(model="m", messages=msgs, **{field: value})
    for value in bad:
        if isinstance(value, bool):
            continue  # JSON true for a number passes the schema; SamplingParams refuses it (a 400 all the same)
        with pytest.raises(ValidationError) as err:
            oa.ChatRequest(model="m", messages=msgs, **{field: value})
        assert err.value.errors()[0]["loc"] == (field,)


def test_defaults_are_generation_configs_and_the_form_vocabulary_matches_verse():
    from quill.verse import forms
    from quill.verse.form import METERS
    d, p = GenerationConfig(), SamplingParams()
    assert all(getattr(p, k) == getattr(d, k) for k in SAMPLING_KEYS if k != "seed")
    assert (d.seed, p.seed) == (0, None)  # a run's default seed vs "fresh each time"
    assert not accepts_config("seed", None) and accepts_params("seed", None)
    assert (d.form, d.lines, d.rhyme, d.meter, d.retries, d.best_of) == (None, None, None, None, 4, 1)
    assert FORM_CHOICES == forms.FORM_CHOICES and MAX_LINES == forms.MAX_LINES
    assert METER_FEET == tuple(METERS) and METER_MEASURES == tuple(forms.FEET)


def test_typed_values_and_switching_off():
    assert parse_setting("lines", "8") == 8 and parse_setting("best_of", "3") == 3
    assert parse_setting("form", "Sonnet") == "sonnet" and parse_setting("form", "off") is None
    assert parse_setting("meter", "iambic pentameter") == "iambic pentameter"
    assert parse_setting("rhyme", "none") is None and parse_setting("seed", "random") is None
    with pytest.raises(SamplingError, match="lines: not an integer"):
        parse_setting("lines", "many")
    run = SamplingParams.from_settings({"form": "auto", "lines": 8})
    assert run.form == "auto"
    off = SamplingParams.from_settings(run.to_dict(), form="off", lines="none", rhyme=None)
    assert (off.form, off.lines) == (None, None)
    with pytest.raises(SamplingError) as err:
        SamplingParams.from_settings({}, retries="off")  # never None: "off" is just a bad value
    assert err.value.param == "retries"


def test_saved_generation_config_carries_the_form_settings(tiny_llama, tmp_path):
    from quill.models.saving import hf_generation_config, read_generation
    _, tokenizer, template = tiny_llama
    cfg = GenerationConfig(form="sonnet", rhyme="ABAB", lines=8, meter="iambic pentameter", best_of=2)
    hf_generation_config(cfg, tokenizer, template).save_pretrained(tmp_path)
    saved = read_generation(tmp_path)
    assert {k: saved[k] for k in ("form", "rhyme", "lines", "meter", "retries", "best_of")} == \
        {"form": "sonnet", "rhyme": "ABAB", "lines": 8, "meter": "iambic pentameter", "retries": 4, "best_of": 2}
    p = SamplingParams.from_settings(saved)
    assert (p.form, p.lines) == ("sonnet", 8)


# --------------------------------------------------------------------------- the settings reach the engine
def watched_engine(tiny_llama) -> tuple[Engine, list]:
    """A tiny engine whose ``stream`` records (params, prompt_text) and then decodes plainly."""
    model, tokenizer, template = tiny_llama
    engine = Engine(model, tokenizer, template, name="tiny", context_length=512, fast=False,
                    generation={"temperature": 0.7, "max_new_tokens": 4, "seed": 0})
    seen: list = []
    real = engine.stream

    def stream(ids, params=None, cancel=None, prompt_text=None):
        seen.append((params, prompt_text))
        return real(ids, (params or engine.defaults).with_(**PLAIN), cancel=cancel)
    engine.stream = stream
    return engine, seen


FLAGS = ["--form", "sonnet", "--rhyme", "ABAB", "--lines", "8", "--meter", "iambic pentameter", "--retries", "3",
         "--best-of", "2"]
ASKED = {"form": "sonnet", "rhyme": "ABAB", "lines": 8, "meter": "iambic pentameter", "retries": 3, "best_of": 2}


def asked(params: SamplingParams) -> dict:
    return {k: getattr(params, k) for k in ASKED}


def test_generate_flags_reach_sampling_params(tiny_llama, monkeypatch, capsys):
    from quill.cli import main
    engine, seen = watched_engine(tiny_llama)
    monkeypatch.setattr(Engine, "load", lambda *a, **k: engine)
    assert main(["generate", "tiny", "Write a poem about the sea", *FLAGS, "--temperature", "0.5"]) == 0
    (params, text), = seen
    assert asked(params) == ASKED and params.temperature == 0.5 and text == "Write a poem about the sea"
    with pytest.raises(SystemExit, match="2"):
        main(["generate", "tiny", "x", "--form", "ode"])  # not a choice: argparse's usage error
    monkeypatch.setattr(Engine, "load", lambda *a, **k: pytest.fail("a bad flag should fail before loading"))
    assert main(["generate", "tiny", "x", "--rhyme", "AB1"]) == 2
    assert "rhyme:" in capsys.readouterr().err


def test_chat_flags_are_the_initial_settings_and_set_changes_them(tiny_llama, monkeypatch):
    from quill.cli import main
    engine, seen = watched_engine(tiny_llama)
    monkeypatch.setattr(Engine, "load", lambda *a, **k: engine)
    typed = ["Write a poem about the sea", "/set form haiku", "/set best-of 3", "Another, in rhyming couplets",
             "/set form off", "Plain now", "/quit"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(typed) + "\n"))
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["chat", "tiny", *FLAGS]) == 0
    assert [t for _, t in seen] == ["Write a poem about the sea", "Another, in rhyming couplets", "Plain now"]
    assert asked(seen[0][0]) == ASKED and seen[0][0].seed is None
    assert (seen[1][0].form, seen[1][0].best_of, seen[1][0].rhyme) == ("haiku", 3, "ABAB")
    assert seen[2][0].form is None and "(form = None)" in out.getvalue()


def test_serve_flags_become_the_server_defaults(tiny_llama, monkeypatch, tmp_path):
    import uvicorn
    from quill.cli import main
    engine, _ = watched_engine(tiny_llama)
    monkeypatch.setattr(Engine, "load", lambda *a, **k: engine)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "tiny", "--form", "auto", "--best-of", "2"]) == 0
    assert (engine.defaults.form, engine.defaults.best_of, engine.defaults.temperature) == ("auto", 2, 0.7)
    assert main(["serve", "tiny", "--lines", "0"]) == 2  # a bad default fails before serving


def test_api_form_fields_reach_the_engine_and_bad_ones_are_400s(tiny_llama):
    import openai
    from quill.apps.live import serve_in_thread
    from quill.apps.server import create_app
    engine, seen = watched_engine(tiny_llama)
    engine.defaults = engine.params(form="auto")  # as `quill serve --form auto`
    with serve_in_thread(create_app({"poet": engine})) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        msgs = [{"role": "system", "content": "You are a poet."}, {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi"}, {"role": "user", "content": "A sonnet about the sea"}]
        chunks = list(client.chat.completions.create(model="poet", messages=msgs, max_tokens=4, stream=True,
                                                     extra_body=dict(ASKED)))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")  # streaming keeps streaming
        assert asked(seen[-1][0]) == ASKED and seen[-1][1] == "A sonnet about the sea"
        client.completions.create(model="poet", prompt="The sea is blue,", max_tokens=4,
                                  extra_body={"lines": 4, "rhyme": "couplets"})
        assert (seen[-1][0].form, seen[-1][0].lines, seen[-1][0].rhyme) == ("auto", 4, "couplets")
        assert seen[-1][1] == "The sea is blue,"
        client.chat.completions.create(model="poet", messages=msgs[-1:], max_tokens=4, extra_body={"form": "off"})
        assert seen[-1][0].form is None  # "off" over the server's default
        n = len(seen)
        for path, field, value in [("/v1/chat/completions", "form", "ode"), ("/v1/chat/completions", "lines", 0),
                                   ("/v1/chat/completions", "best_of", 17), ("/v1/chat/completions", "retries", 0),
                                   ("/v1/chat/completions", "rhyme", "AB1"), ("/v1/completions", "meter", "sapphic"),
                                   ("/v1/completions", "temperature", 2.5), ("/v1/completions", "lines", "many")]:
            body = {"model": "poet", "max_tokens": 2, field: value}
            body.update({"prompt": "x"} if path == "/v1/completions" else {"messages": msgs[-1:]})
            r = httpx.post(url + path, json=body, timeout=30)
            assert r.status_code == 400, (field, r.text)
            err = r.json()["error"]
            assert err["param"] == field and field in err["message"] and err["code"] == "invalid_value"
        assert len(seen) == n  # refused before any work


def test_web_page_has_the_form_picker_and_sends_form():
    html, js = (WEB / "index.html").read_text(), (WEB / "app.js").read_text()
    picker = html[html.index('<select id="chat-form-select">'):]
    picker = picker[:picker.index("</select>")]
    assert html.index('id="chat-input"') < html.index('id="chat-form-select"') < html.index('id="chat-send"')
    for label in ("none", "auto", "sonnet", "haiku", "limerick", "quatrain", "couplets"):
        assert f">{label}</option>" in picker
    values = [v.split('"')[0] for v in picker.split('value="')[1:]]
    assert all(oa.ChatRequest(model="m", messages=[{"role": "user", "content": "x"}], form=v) for v in values)
    assert 'body.form = $("#chat-form-select").value' in js
