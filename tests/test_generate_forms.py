"""Form-aware decoding on tiny models whose next-token distribution the test controls (a logit bias).

Each constraint is driven through the real engine: the line count is forced (end-of-turn forbidden before
the last line and forced after it), a non-rhyming end word is rejected and the line resampled, the meter
check scores lines, a line resampled from the cached state equals a fresh decode, and a row's poem does
not depend on its batchmates.
"""
from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from quill.decoding.engine import Engine
import quill.decoding.lines as lines_mod
from quill.decoding.lines import LineState
from quill.verse.adherence import form_met
from quill.verse.form import end_words, poem_lines
from quill.verse.forms import FormSpec, form_spec, judge_line, read_prompt
from quill.verse.phonetics import rhymes

WORDS = [" night", " light", " bright", " day", " way", " sea", " we", " go", " slow"]   # each rhymes with another


class Biased(torch.nn.Module):
    """A model whose logits get a fixed bias: the test decides what is likely."""

    def __init__(self, model, bias: torch.Tensor):
        super().__init__()
        self.inner, self.bias, self.config = model, bias, model.config

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kw):
        out = self.inner(**kw)
        out.logits = out.logits + self.bias.to(out.logits.dtype)
        return out


def biased_engine(fixture, boosts: dict[str, float], eos: float = 0.0) -> Engine:
    model, tokenizer, template = fixture
    vocab = model.get_output_embeddings().weight.shape[0]
    bias = torch.zeros(vocab)
    for text, value in boosts.items():
        for i in tokenizer.encode(text, add_special_tokens=False)[-1:]:
            bias[i] += value
    e = Engine(Biased(model, bias), tokenizer, template, name="biased", context_length=512,
               generation={"temperature": 0.7, "top_p": 0.95, "repetition_penalty": 1.0, "max_new_tokens": 48,
                           "seed": 0}, fast=False)
    for s in e.stop_ids:
        bias[s] += eos
    return e


def words_engine(fixture, eos: float = 0.0) -> Engine:
    return biased_engine(fixture, {**{w: 12.0 for w in WORDS}, "\n": 10.0}, eos=eos)


def prompt(e: Engine, text: str = "Write a poem about the night") -> list[int]:
    return e.chat_prompt([{"role": "user", "content": text}])


def test_line_count_is_forced_against_a_model_that_wants_to_stop(tiny_llama):
    e = words_engine(tiny_llama, eos=30.0)
    plain = e.generate(prompt(e), e.params(seed=1))
    assert plain.finish_reason == "stop" and plain.token_ids == []   # the model stops at once
    for n in (3, 6):
        r = e.generate(prompt(e), e.params(seed=1, lines=n))
        assert len(poem_lines(r.text)) == n, r.text
        assert r.finish_reason == "stop"


def test_end_of_turn_is_forced_after_the_last_line(tiny_llama):
    e = words_engine(tiny_llama, eos=-30.0)           # a model that never stops by itself
    assert e.generate(prompt(e), e.params(seed=2)).finish_reason == "length"
    r = e.generate(prompt(e), e.params(seed=2, lines=2))
    assert r.finish_reason == "stop" and len(poem_lines(r.text)) == 2


def test_rhyme_scheme_is_met_with_resampling(tiny_llama):
    e = words_engine(tiny_llama)
    r = e.generate(prompt(e), e.params(seed=3, rhyme="AABB"))
    ends = end_words(r.text)
    assert len(ends) == 4, r.text
    assert rhymes(ends[0], ends[1]) and rhymes(ends[2], ends[3]), r.text
    assert form_met(r.text, "couplets")


def test_a_non_rhyming_end_word_is_rejected_and_the_line_tried_again():
    spec = FormSpec(2, "AA")
    state = LineState(spec, retries=3, stop_ids=[0], budget=64)
    state.lines = ["I walk alone into the night"]
    state.ids, state.cols, state.text = [5, 6], [10, 11], " and then the day"
    action, kept, _ = state.end_line(198)
    assert action == "retry" and kept.score < 1.0 and state.resampled == 1
    assert state.ids == [] and state.lines == ["I walk alone into the night"]
    state.ids, state.cols, state.text = [7, 8], [12, 13], " beneath the light"
    action, kept, tries = state.end_line(198)
    assert action == "finish" and kept.text == " beneath the light" and len(tries) == 2
    assert state.lines[-1] == "beneath the light"


def test_the_best_try_is_kept_when_every_try_fails():
    state = LineState(FormSpec(3, "AAB"), retries=2, stop_ids=[0], budget=64)
    state.lines = ["the night"]
    state.ids, state.cols, state.text = [1], [1], " the night"        # a repeat: fails the repeat and rhyme checks
    assert state.end_line(198)[0] == "retry"
    state.ids, state.cols, state.text = [2], [2], " the cold sea"     # rhymes with nothing, but new
    action, kept, _ = state.end_line(198)
    # checks: rhyme 0, syllables 3 of at least 4 (0.75), not a repeat (1), not a weak end word (1)
    assert action == "accept" and kept.text == " the cold sea" and kept.score == pytest.approx(2.75 / 4)


def test_meter_check_scores_lines():
    sonnet = form_spec("sonnet")
    assert judge_line(sonnet, 0, "Shall I compare thee to a summer's day?", []) == 1.0
    assert judge_line(sonnet, 0, "The cat sat", []) < 1.0                       # three syllables
    haiku = form_spec("haiku")
    assert judge_line(haiku, 0, "An old silent pond", []) == 1.0
    assert judge_line(haiku, 0, "An old silent pond beneath the summer moon", []) < 1.0


def test_the_prompts_own_words_name_the_form():
    assert read_prompt("Write a sonnet about love")["form"] == "sonnet"
    assert read_prompt("Write four rhyming couplets about a city")["lines"] == 8
    assert read_prompt("Write an ABAB quatrain in iambic tetrameter")["rhyme"] == "ABAB"
    assert read_prompt("Write an ABAB quatrain in iambic tetrameter")["meter"] == "iambic tetrameter"
    assert read_prompt("Write a ten-line poem about bread")["lines"] == 10
    assert form_spec("auto", prompt="Write a poem about the sea").name == "free"
    assert form_spec(None) is None


def test_a_line_resampled_from_the_cached_state_equals_a_fresh_decode(tiny_gpt2, monkeypatch):
    """Greedy: every line's first try is rejected and tried again from the state at the line's start, with
    the rejected tokens masked out of attention. If that state were wrong (the rejected tokens still seen,
    positions shifted), the second try would differ from the first; it must equal the poem decoded with no
    rejection at all."""
    e = words_engine(tiny_gpt2)
    p = e.params(temperature=0, lines=4, retries=3)   # the second try is not the last (which is steered)
    monkeypatch.setattr(lines_mod, "judge_line", lambda *a: 1.0)
    fresh = e.generate(prompt(e), p)
    rejected: set[int] = set()

    def reject_first(spec, i, line, previous):
        if i in rejected:
            return 1.0
        rejected.add(i)
        return 0.0
    monkeypatch.setattr(lines_mod, "judge_line", reject_first)
    again = e.generate(prompt(e), p)
    assert again.lines_resampled == 4
    assert again.token_ids == fresh.token_ids and again.text == fresh.text


def test_a_form_row_does_not_depend_on_its_batchmates(tiny_llama):
    e = words_engine(tiny_llama)
    ask = "Write a limerick about the night"
    alone = e.generate_batch([prompt(e, ask)], [e.params(seed=7, form="auto")], prompt_texts=[ask])[0]
    others = ["Write a haiku about the sea", "Write a poem about the day"]
    batch = e.generate_batch([prompt(e, t) for t in [*others, ask]],
                             [e.params(seed=s, form="auto") for s in (1, 2, 7)], prompt_texts=[*others, ask])
    assert batch[2].text == alone.text and batch[2].form == alone.form == "limerick, 5 lines, AABBA, 8-8-6-6-8"
    assert len(poem_lines(batch[0].text)) == 3
    # two slots for three prompts: the limerick waits for a slot, then joins the running batch
    joined = e.generate_batch([prompt(e, t) for t in [*others, ask]],
                              [e.params(seed=s, form="auto") for s in (1, 2, 7)], prompt_texts=[*others, ask],
                              slots=2)
    assert [r.text for r in joined] == [r.text for r in batch]


def test_streamed_form_lines_add_up_to_the_result(tiny_llama):
    e = words_engine(tiny_llama)
    stream = e.stream(prompt(e), e.params(seed=4, lines=3))
    deltas = list(stream)
    assert "".join(deltas) == stream.result.text
    assert len(poem_lines(stream.result.text)) == 3


@pytest.mark.parametrize("field,value", [("form", "ode"), ("rhyme", "AB1"), ("meter", "iambic blah"),
                                         ("lines", 0), ("retries", 0), ("best_of", 99)])
def test_bad_form_settings_name_the_field(tiny_llama, field, value):
    from quill.decoding.sampling import SamplingError
    e = words_engine(tiny_llama)
    with pytest.raises(SamplingError) as err:
        e.params(**{field: value})
    assert err.value.param == field


def _greedy_oracle(e: Engine, ids: list[int], n: int, penalty: float, free: frozenset[int],
                   count_prompt: bool = False) -> list[int]:
    """Greedy decode by full forwards (no cache) with transformers' repetition-penalty processor over the
    generated tokens (the whole context with ``count_prompt``: transformers' own rule), the ``free`` tokens'
    logits put back as they were: what quill's rule should be, computed without quill's loop."""
    rule, free_t, out = RepetitionPenaltyLogitsProcessor(penalty), torch.tensor(sorted(free), dtype=torch.long), \
        list(ids)
    with torch.no_grad():
        for _ in range(n):
            x = torch.tensor([out])
            logits = e.model(input_ids=x, attention_mask=torch.ones_like(x)).logits[:, -1].float()
            kept = logits[:, free_t].clone()
            logits = rule(x if count_prompt else x[:, len(ids):], logits)
            logits[:, free_t] = kept
            t = int(logits.argmax(-1))
            if t in e.stop_ids:
                break
            out.append(t)
    return out[len(ids):]


def test_repetition_penalty_counts_the_answer_not_the_prompt(tiny_llama):
    """transformers' rule penalises every token of the context: the words a request names ("a poem about the
    night") and the end-of-turn token of every earlier turn become less likely from the answer's first token.
    quill's counts the answer's own tokens only. A model whose few likely words are the prompt's own, and
    that wants to stop once they are used: batch 1 and batched rows decode as the answer-only oracle does
    (and stop), unlike transformers' rule."""
    e = biased_engine(tiny_llama, {w: 12.0 for w in WORDS}, eos=9.0)
    ids = e.chat_prompt([{"role": "user", "content": "Write a poem about the night"},
                         {"role": "assistant", "content": "The night"},
                         {"role": "user", "content": "Another one about the sea and the light"}])
    assert set(ids) & e.stop_ids                          # the finished turn's end-of-turn token
    p = e.params(temperature=0, repetition_penalty=3.0, max_new_tokens=24)
    answer_only = _greedy_oracle(e, ids, 24, 3.0, e.stop_ids)
    whole = _greedy_oracle(e, ids, 24, 3.0, e.stop_ids, count_prompt=True)
    assert answer_only != whole                           # the oracle tells the two rules apart
    single = e.generate(ids, p)
    assert single.token_ids == answer_only and single.finish_reason == "stop"
    assert e.generate_batch([ids, prompt(e, "Night")], p)[0].token_ids == answer_only
    assert e.generate_batch([prompt(e, "Night"), ids], p)[1].token_ids == answer_only
