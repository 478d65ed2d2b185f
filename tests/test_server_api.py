"""The OpenAI-compatible server through real HTTP on loopback: the openai client, SSE format, errors,
concurrency, disconnects, API keys and the arena. Tiny random models: the text is gibberish, the plumbing real."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import httpx
import pytest

from quill.data.arena import results as arena_results
from quill.apps.live import serve_in_thread
from quill.apps.server import create_app, parse_specs
from quill.decoding.engine import Engine
from tests_support import run_async

GEN = {"temperature": 0.7, "top_p": 0.95, "repetition_penalty": 1.1, "max_new_tokens": 16, "seed": 0}


def tiny_engine(fixture, name: str, delay: float = 0.0) -> Engine:
    model, tokenizer, template = fixture
    engine = Engine(model, tokenizer, template, name=name, context_length=512, generation=GEN, fast=False)
    if delay:  # a slow model, so a test can act while a generation is still running
        step = engine.decoder.step
        engine.decoder.step = lambda token: (time.sleep(delay), step(token))[1]
    return engine


@pytest.fixture(scope="module")
def server(tiny_llama, tiny_gpt2, tmp_path_factory):
    engines = {"poet": tiny_engine(tiny_llama, "poet"), "base": tiny_engine(tiny_gpt2, "base"),
               "slow": tiny_engine(tiny_llama, "slow", delay=0.01)}
    db = tmp_path_factory.mktemp("arena") / "arena.sqlite"
    app = create_app(engines, arena_db=db)
    with serve_in_thread(app) as url:
        yield {"url": url, "app": app, "db": db}


def post(server, path, body, **kw):
    return httpx.post(server["url"] + path, json=body, timeout=60, **kw)


def test_openai_client_streams_chat_and_completions(server):
    import openai
    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key="unused")
    assert {m.id for m in client.models.list()} == {"poet", "base", "slow"}
    chunks = list(client.chat.completions.create(model="poet", stream=True, max_tokens=12,
                                                 messages=[{"role": "user", "content": "A poem about the sea"}]))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(chunks) >= 3 and text.strip()
    done = client.chat.completions.create(model="base", max_tokens=8, seed=1,
                                          messages=[{"role": "user", "content": "Hello"}])
    assert done.choices[0].message.role == "assistant" and done.usage.completion_tokens <= 8
    comp = client.completions.create(model="poet", prompt="The sea is blue, the sky is red", max_tokens=6, seed=2)
    assert comp.choices[0].finish_reason in ("stop", "length") and comp.usage.prompt_tokens > 0
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="poet", prompt="The sea is blue, the sky is red", max_tokens=6, seed=2, stream=True))
    assert streamed == comp.choices[0].text  # same seed, same text, streamed or not


def test_stop_strings_end_the_answer(server):
    import openai
    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key="unused")
    ask = dict(model="poet", prompt="The sea is blue, the sky is red", max_tokens=16, temperature=0)
    full = client.completions.create(**ask).choices[0].text
    stop = full[8:12]
    cut = client.completions.create(**ask, stop=[stop, "never"]).choices[0]
    assert cut.text == full[:full.index(stop)] and cut.finish_reason == "stop"
    streamed = list(client.completions.create(**ask, stop=stop, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in streamed[:-1]) == cut.text
    assert streamed[-2].choices[0].finish_reason == "stop"
    assert streamed[-1].choices == [] and streamed[-1].usage.completion_tokens > 0


def test_sse_wire_format(server):
    body = {"model": "poet", "stream": True, "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}],
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server["url"] + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert all(p["object"] == "chat.completion.chunk" and p["id"] == payloads[0]["id"] for p in payloads)
    assert payloads[-1]["usage"]["completion_tokens"] <= 5 and payloads[-1]["choices"] == []
    assert payloads[-2]["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("body, status, param", [
    ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
    ({"model": "poet", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "poet", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}, 400, "max_tokens"),
    ({"model": "poet", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, 400, "temperature"),
    ({"model": "poet", "messages": [{"role": "user", "content": "x"}], "top_p": 0}, 400, "top_p"),
    ({"model": "poet", "messages": [{"role": "user", "content": "word " * 600}]}, 400, "messages"),
    ({"model": "poet", "messages": []}, 400, "messages"),
    ({"model": "poet"}, 400, "messages"),
    ({"model": "poet", "messages": [{"role": "wizard", "content": "x"}]}, 400, None),
    ({"model": "poet", "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": "poet", "messages": [{"role": "user", "content": "x"}], "stop": [""]}, 400, "stop"),
    ({"model": "poet", "messages": [{"role": "user", "content": "x"}], "form": "ode"}, 400, "form"),
    ({"model": "poet", "messages": [{"role": "user", "content": "x"}], "lines": 0}, 400, "lines"),
    ({"model": "poet", "messages": [{"role": "user", "content": "x"}], "rhyme": "AB1"}, 400, "rhyme"),
    ({"model": "poet", "messages": [{"role": "user", "content": "x"}], "meter": "sapphic"}, 400, "meter"),
    ({"model": "poet", "messages": [{"role": "user", "content": "x"}], "best_of": 0}, 400, "best_of"),
])
def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_serving(server, body, status, param):
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param:
        assert err["param"].startswith(param)
    assert "Traceback" not in r.text
    ok = post(server, "/v1/chat/completions", {"model": "poet", "max_tokens": 2,
                                                "messages": [{"role": "user", "content": "x"}]})
    assert ok.status_code == 200


def test_malformed_json_and_unknown_paths(server):
    r = httpx.post(server["url"] + "/v1/chat/completions", content=b'{"model": "poet", "messages": [',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(server["url"] + "/v1/completions", json={"model": "poet", "prompt": "word " * 600})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert httpx.get(server["url"] + "/v1/nothing").status_code == 404
    assert "error" in httpx.get(server["url"] + "/v1/nothing").json()


def test_twenty_concurrent_streams_all_complete(server):
    async def one(client, i):
        body = {"model": ["poet", "base"][i % 2], "stream": True, "max_tokens": 8, "seed": i,
                "messages": [{"role": "user", "content": f"Poem number {i}"}]}
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            return (await r.aread()).decode()

    async def main():
        async with httpx.AsyncClient(base_url=server["url"], timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(20)))

    bodies = run_async(main, 120)
    assert len(bodies) == 20 and all(b.endswith("data: [DONE]\n\n") for b in bodies)
    assert httpx.get(server["url"] + "/v1/models").status_code == 200


def test_client_disconnect_stops_generation(server):
    worker = server["app"].state.workers["slow"]
    before = len(worker.history)
    body = {"model": "slow", "stream": True, "max_tokens": 400, "temperature": 0,
            "messages": [{"role": "user", "content": "A long poem"}]}
    with httpx.stream("POST", server["url"] + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
    # the client is gone after 2-3 tokens; at 10 ms a token the full answer would take 4 s
    deadline = time.monotonic() + 10
    while len(worker.history) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    last = worker.history[-1]
    assert last["finish_reason"] == "cancelled" and last["completion_tokens"] < 200, last
    assert worker.pending == 0


def test_queue_limit_answers_429(tiny_llama):
    app = create_app({"slow": tiny_engine(tiny_llama, "slow", delay=0.01)}, max_queue=2)

    async def main(url):
        body = {"model": "slow", "max_tokens": 30, "messages": [{"role": "user", "content": "x"}]}
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(5)))

    with serve_in_thread(app) as url:
        codes = sorted(r.status_code for r in run_async(lambda: main(url), 60))
        assert codes.count(200) >= 2 and 429 in codes and set(codes) <= {200, 429}
        r = httpx.post(url + "/v1/chat/completions", json={"model": "slow", "max_tokens": 2,
                                                          "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200


def test_api_key(tiny_llama):
    import openai
    app = create_app({"poet": tiny_engine(tiny_llama, "poet")}, api_key="s3cret")
    with serve_in_thread(app) as url:
        r = httpx.get(url + "/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url + "/").status_code == 200  # the page itself is public; it asks for the key
        client = openai.OpenAI(base_url=url + "/v1", api_key="s3cret")
        assert [m.id for m in client.models.list()] == ["poet"]


def test_arena_battle_vote_results(server):
    r = post(server, "/arena/battle", {"prompt": "The sea at night", "max_tokens": 6})
    assert r.status_code == 200, r.text
    battle = r.json()
    assert set(battle) == {"id", "prompt", "output_a", "output_b"}  # no model names before the vote
    v = post(server, "/arena/vote", {"id": battle["id"], "vote": "a"})
    assert v.status_code == 200 and v.json()["model_a"] != v.json()["model_b"]
    again = post(server, "/arena/vote", {"id": battle["id"], "vote": "b"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_voted"
    assert post(server, "/arena/vote", {"id": "missing", "vote": "a"}).status_code == 404
    assert post(server, "/arena/vote", {"id": battle["id"], "vote": "maybe"}).status_code == 400
    assert post(server, "/arena/battle", {"prompt": "x", "model_a": "poet", "model_b": "poet"}).status_code == 400
    assert post(server, "/arena/battle", {"prompt": "x", "model_a": "zzz"}).status_code == 404
    rows = httpx.get(server["url"] + "/arena/results").json()["rows"]
    assert rows == arena_results(server["db"])
    assert sum(row["battles"] for row in rows) >= 1
    with sqlite3.connect(server["db"]) as con:
        stored = con.execute("SELECT prompt, vote, model_a, sampling FROM battles WHERE id = ?",
                             (battle["id"],)).fetchone()
    assert stored[:3] == ("The sea at night", "a", v.json()["model_a"])
    assert json.loads(stored[3])["max_new_tokens"] == 6


def test_arena_with_one_model_says_it_needs_two(tiny_llama, tmp_path):
    app = create_app({"poet": tiny_engine(tiny_llama, "poet")}, arena_db=tmp_path / "a.sqlite")
    with serve_in_thread(app) as url:
        info = httpx.get(url + "/arena/info").json()
        assert info["ready"] is False and "two models" in info["message"]
        r = httpx.post(url + "/arena/battle", json={"prompt": "x"})
        assert r.status_code == 400 and "two models" in r.json()["error"]["message"]


def test_parse_specs(tmp_path):
    (tmp_path / "demo").mkdir()
    specs = parse_specs([str(tmp_path / "demo"), "tiny-llama", "poet=" + str(tmp_path / "demo"), "tiny-llama"])
    assert specs == [("demo", str(tmp_path / "demo")), ("tiny-llama", "tiny-llama"),
                     ("poet", str(tmp_path / "demo")), ("tiny-llama-2", "tiny-llama")]
