"""The generation engine against transformers' own generate, plus its streaming, stopping and cancel rules."""
from __future__ import annotations

import threading

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from quill.decoding.engine import Engine, PromptTooLong
from quill.decoding.sampling import SamplingError, SamplingParams, apply_repetition_penalty, sample_next
from quill.decoding.text import Detokenizer

MSG = [{"role": "user", "content": "Write a poem about the sea and the sky"}]


def make_engine(fixture, **kw) -> Engine:
    model, tokenizer, template = fixture
    return Engine(model, tokenizer, template, name="tiny", context_length=kw.pop("context_length", 512),
                  generation={"temperature": 0.7, "top_p": 0.95, "repetition_penalty": 1.1, "max_new_tokens": 16,
                              "seed": 0}, fast=False, **kw)


@pytest.fixture(scope="module")
def engine(tiny_llama):
    return make_engine(tiny_llama)


class AnswerPenalty(LogitsProcessor):
    """transformers' repetition penalty over the generated tokens only (from ``prompt_len`` on), with the
    ``free`` tokens' logits put back as they were: quill's rule, built from transformers' processor."""

    def __init__(self, penalty: float, prompt_len: int, free):
        self.rule, self.prompt_len = RepetitionPenaltyLogitsProcessor(penalty), prompt_len
        self.free = torch.tensor(sorted(free), dtype=torch.long)

    def __call__(self, input_ids, scores):
        kept = scores[:, self.free].clone()
        scores = self.rule(input_ids[:, self.prompt_len:], scores)
        scores[:, self.free] = kept
        return scores


def hf_greedy(engine: Engine, ids: list[int], n: int, penalty: float = 1.0, free=()) -> list[int]:
    """transformers' greedy decode; with a penalty, it counts the generated tokens only and leaves ``free`` alone."""
    rule = dict(logits_processor=LogitsProcessorList([AnswerPenalty(penalty, len(ids), free)])) \
        if penalty != 1.0 else {}
    out = engine.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                pad_token_id=engine.pad_id, **rule)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_matches_transformers_generate(engine, penalty):
    ids = engine.chat_prompt(MSG)
    ours = engine.generate(ids, engine.params(temperature=0, repetition_penalty=penalty, max_new_tokens=12))
    theirs = hf_greedy(engine, ids, 12, penalty, free=engine.stop_ids)
    stop = next((i for i, t in enumerate(theirs) if t in engine.stop_ids), len(theirs))
    assert ours.token_ids == theirs[:stop]


def test_batch_rows_match_single_generation(tiny_llama, tiny_gpt2):
    """Left padding with position ids from each row's first real token: greedy rows equal batch-1 runs."""
    for fixture in (tiny_llama, tiny_gpt2):
        e = make_engine(fixture)
        prompts = [e.chat_prompt(MSG), e.text_prompt("The sea is blue, the sky is red"), e.text_prompt("Night")]
        p = e.params(temperature=0, max_new_tokens=8)
        batch = e.generate_batch(prompts, p)
        for prompt, row in zip(prompts, batch):
            single = e.generate(prompt, p)
            assert row.token_ids == single.token_ids
            assert row.text == single.text and row.finish_reason == single.finish_reason
            assert row.prompt_tokens == len(prompt)


def test_continuous_batching_rows_match_single_generation(tiny_llama, tiny_gpt2):
    """Fewer slots than prompts: a row that ends hands its slot (and cache row) to the next prompt, and every
    row still equals its batch-1 run; progress hears of each row once, with its token count."""
    for fixture in (tiny_llama, tiny_gpt2):
        e = make_engine(fixture)
        prompts = [e.chat_prompt(MSG), e.text_prompt("Night"), e.text_prompt("The sea is blue, the sky is red"),
                   e.text_prompt("A"), e.chat_prompt([{"role": "user", "content": "Sing"}])]
        params = [e.params(temperature=0, max_new_tokens=m) for m in (3, 9, 5, 12, 2)]
        counts: list[int] = []
        batch = e.generate_batch(prompts, params, slots=2, progress=counts.append)
        for prompt, p, row in zip(prompts, params, batch):
            assert row.token_ids == e.generate(prompt, p).token_ids
        assert sorted(counts) == sorted(len(r.token_ids) for r in batch)


def test_a_cache_whose_rows_cannot_change_hands_decodes_all_rows_at_once(tiny_llama, monkeypatch):
    import quill.decoding.batch as batch_mod
    monkeypatch.setattr(batch_mod, "can_place", lambda cache: False)

    def place(*a):
        raise AssertionError("a row was placed into a cache that cannot take one")
    monkeypatch.setattr(batch_mod, "place", place)
    e = make_engine(tiny_llama)
    prompts = [e.text_prompt("Night"), e.text_prompt("A"), e.chat_prompt(MSG)]
    p = e.params(temperature=0, max_new_tokens=4)
    assert [r.token_ids for r in e.generate_batch(prompts, p, slots=1)] == [e.generate(x, p).token_ids
                                                                           for x in prompts]


def test_stream_deltas_add_up_to_the_text(engine):
    stream = engine.stream(engine.chat_prompt(MSG), engine.params(max_new_tokens=24, seed=3))
    deltas = list(stream)
    r = stream.result
    assert "".join(deltas) == r.text == engine.tokenizer.decode(r.token_ids, skip_special_tokens=True)
    assert r.completion_tokens == len(r.token_ids) <= 24 and r.finish_reason in ("stop", "length")
    assert r.time_to_first_token is not None and r.seconds >= r.time_to_first_token


def test_seed_makes_sampling_reproducible(engine):
    ids = engine.chat_prompt(MSG)
    a = engine.generate(ids, engine.params(seed=7, temperature=1.5, top_p=1.0, max_new_tokens=12))
    b = engine.generate(ids, engine.params(seed=7, temperature=1.5, top_p=1.0, max_new_tokens=12))
    c = engine.generate(ids, engine.params(seed=8, temperature=1.5, top_p=1.0, max_new_tokens=12))
    assert a.token_ids == b.token_ids != c.token_ids


def test_detokenizer_never_breaks_multibyte_characters(gpt2_tokenizer):
    text = "Sea 🌊 and sky — ça, 海と空 ✨ end"
    ids = gpt2_tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = Detokenizer(gpt2_tokenizer)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)
    assert len([d for d in deltas if d]) > 5  # it streamed, not one chunk at the end


def test_stop_token_ends_with_finish_reason_stop(tiny_llama):
    e = make_engine(tiny_llama)
    ids = e.chat_prompt(MSG)
    p = e.params(temperature=0, max_new_tokens=10, repetition_penalty=1.0)
    first = e.generate(ids, p).token_ids
    e.stop_ids = {first[3]}  # pretend the 4th greedy token is the end-of-turn
    r = e.generate(ids, p)
    assert r.finish_reason == "stop" and r.token_ids == first[:first.index(first[3])]
    e.stop_ids = set()
    assert e.generate(ids, p).finish_reason == "length"


def test_stop_strings_cut_the_answer_before_them_even_across_tokens(tiny_llama):
    e = make_engine(tiny_llama)
    e.stop_ids = set()
    ids = e.chat_prompt(MSG)
    p = e.params(temperature=0, max_new_tokens=30, repetition_penalty=1.0)
    full = e.generate(ids, p).text
    assert len(full) > 20
    stop = full[10:16]  # likely spans a token boundary; the answer ends before its first occurrence
    for stops in ([stop], ["never appears", stop]):
        stream = e.stream(ids, p.with_(stop=stops))
        deltas = list(stream)
        r = stream.result
        assert r.text == "".join(deltas) == full[:full.index(stop)]
        assert r.finish_reason == "stop" and stop not in "".join(deltas)
    r = e.generate(ids, p.with_(stop="never appears"))
    assert r.text == full and r.finish_reason == "length"  # held-back text is released at the end
    with pytest.raises(SamplingError, match="stop"):
        e.params(stop=["a", "b", "c", "d", "e"])
    with pytest.raises(SamplingError, match="stop"):
        e.params(stop=[""])


def test_cancel_stops_generation(engine):
    cancel = threading.Event()
    stream = engine.stream(engine.chat_prompt(MSG), engine.params(max_new_tokens=200, temperature=0), cancel=cancel)
    for i, _ in enumerate(stream):
        if i == 2:
            cancel.set()
    assert stream.result.finish_reason == "cancelled" and stream.result.completion_tokens < 10
    calls = []
    r = engine.generate(engine.chat_prompt(MSG), engine.params(max_new_tokens=50), cancel=lambda: calls.append(1) or True)
    assert r.finish_reason == "cancelled" and r.completion_tokens == 1 and calls == [1]


def test_context_window_is_respected(tiny_llama):
    e = make_engine(tiny_llama, context_length=40)
    ids = e.text_prompt("word " * 30)
    r = e.generate(ids, e.params(max_new_tokens=100, temperature=0))
    assert len(ids) + r.completion_tokens <= 40
    with pytest.raises(PromptTooLong, match="context window"):
        e.stream(e.text_prompt("word " * 60))
    with pytest.raises(PromptTooLong):
        e.stream([])


def test_sampling_settings_are_validated():
    with pytest.raises(SamplingError) as err:
        SamplingParams(temperature=6)
    assert err.value.param == "temperature"
    for bad in [dict(top_p=0), dict(top_k=-1), dict(max_new_tokens=0), dict(repetition_penalty=0),
                dict(seed=-1), dict(top_k=1.5)]:
        with pytest.raises(SamplingError):
            SamplingParams(**bad)
    with pytest.raises(SamplingError, match="unknown"):
        SamplingParams.from_settings({}, temprature=1.0)
    p = SamplingParams.from_settings({"temperature": 0.7, "top_p": 0.95, "unrelated": 1}, temperature=None, top_k=5)
    assert (p.temperature, p.top_p, p.top_k) == (0.7, 0.95, 5)


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor
    torch.manual_seed(0)
    logits, ids = torch.randn(2, 50), torch.randint(0, 50, (2, 12))
    seen = torch.zeros(2, 50, dtype=torch.bool).scatter_(1, ids, True)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    assert torch.allclose(apply_repetition_penalty(logits, seen, 1.3), expected)


def test_top_k_and_top_p_keep_the_same_tokens_as_transformers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper
    torch.manual_seed(0)
    logits = torch.randn(1, 1000) * 3
    g = torch.Generator().manual_seed(0)
    for params, warper in [(SamplingParams(temperature=1, top_p=0.9, top_k=0), TopPLogitsWarper(0.9)),
                           (SamplingParams(temperature=1, top_p=1.0, top_k=20), TopKLogitsWarper(20)),
                           (SamplingParams(temperature=1, top_p=0.3, top_k=0), TopPLogitsWarper(0.3))]:
        allowed = set(torch.nonzero(warper(None, logits.clone())[0] > -float("inf")).flatten().tolist())
        drawn = {int(sample_next(logits, params, g)[0]) for _ in range(300)}
        assert drawn <= allowed and len(drawn) > min(3, len(allowed) - 1)
    assert int(sample_next(logits, SamplingParams(temperature=0), g)[0]) == int(logits.argmax())


@pytest.mark.slow
def test_compiled_decoder_matches_eager(tiny_llama):
    """Static cache + torch.compile (the GPU fast path) gives the same greedy tokens as the eager loop."""
    eager = make_engine(tiny_llama)
    model, tokenizer, template = tiny_llama
    compiled = Engine(model, tokenizer, template, name="tiny", context_length=512, fast="compile")
    assert compiled.decoder.kind == "compiled" and eager.decoder.kind == "eager"
    for prompt in (eager.chat_prompt(MSG), eager.text_prompt("The sea is blue")):
        p = eager.params(temperature=0, max_new_tokens=10)
        assert compiled.generate(prompt, p).token_ids == eager.generate(prompt, p).token_ids
    long_prompt = eager.text_prompt("word " * 100)  # past the static cache: served by the eager fallback
    compiled.decoder.max_len = 64
    p = eager.params(temperature=0, max_new_tokens=5)
    assert compiled.generate(long_prompt, p).token_ids == eager.generate(long_prompt, p).token_ids


def test_int8_weights_stay_close_to_the_model(tiny_llama):
    """The opt-in int8 path: every Linear replaced, logits within a few percent, generation still works."""
    import copy

    from quill.decoding.fast import Int8Linear, quantize_int8
    model, tokenizer, template = tiny_llama
    q = copy.deepcopy(model)
    n = quantize_int8(q)
    assert n == sum(isinstance(m, Int8Linear) for m in q.modules()) > 0
    ids = torch.tensor([tokenizer("The sea is blue, the sky is red")["input_ids"]])
    with torch.inference_mode():
        ref, got = model(ids).logits, q(ids).logits
    assert (got - ref).norm() / ref.norm() < 0.05
    e = Engine(q, tokenizer, template, name="tiny8", context_length=512, fast=False)
    r = e.generate(e.chat_prompt(MSG), e.params(max_new_tokens=5))
    assert r.completion_tokens <= 5 and r.finish_reason in ("stop", "length")


def test_shared_prefix_is_the_longest_most_rows_have():
    from quill.decoding.prefill import MIN_SHARED_PREFIX as m, shared_prefix
    system = list(range(100, 100 + m + 4))
    rows = [system + [1, 2], system + [1, 3, 4], system + [5], [7] * (m + 3), [9, 9]]
    assert shared_prefix(rows) == (m + 4, [True, True, True, False, False])
    assert shared_prefix([system + [1, 2], system + [1, 2, 3]]) == (m + 5, [True, True])   # one token left own
    assert shared_prefix([system, [1] + system]) == (0, [False, False])       # no two rows share a head
    assert shared_prefix([system[:m], system[:m]]) == (0, [False, False])     # nothing would be left to run


def test_shared_prefix_and_dropped_rows_leave_every_row_as_it_is_alone(tiny_llama, tiny_gpt2, monkeypatch):
    """Chat rows share their template's opening, computed once (raw rows beside them never see it), and rows
    that end leave the batch once none is waiting; every greedy row still equals its batch-1 run."""
    import quill.decoding.batch as batch_mod
    import quill.decoding.prefill as prefill_mod
    used = {"prefix": [], "compact": 0}
    real_shared, real_compact = prefill_mod.shared_prefix, batch_mod._compact

    def shared(prompts):
        used["prefix"].append(real_shared(prompts))
        return used["prefix"][-1]

    def compact(*a):
        used["compact"] += 1
        return real_compact(*a)
    monkeypatch.setattr(prefill_mod, "shared_prefix", shared)
    monkeypatch.setattr(batch_mod, "_compact", compact)
    system = {"role": "system", "content": "You are a poet who answers every request with a short poem."}
    for fixture in (tiny_llama, tiny_gpt2):
        e = make_engine(fixture)
        asks = ["Write a poem about the sea", "Sing of night", "A haiku, please", "Rain"]
        prompts = [e.chat_prompt([system, {"role": "user", "content": a}]) for a in asks]
        prompts += [e.text_prompt("Night"), e.text_prompt("The sea is blue")]
        params = [e.params(temperature=0, max_new_tokens=m) for m in (2, 12, 3, 9, 1, 6)]
        for prompt, p, row in zip(prompts, params, e.generate_batch(prompts, params)):
            assert row.token_ids == e.generate(prompt, p).token_ids
    assert len(used["prefix"]) == 2 and all(n > 8 and has == [True] * 4 + [False] * 2 for n, has in used["prefix"])
    assert used["compact"] >= 2
