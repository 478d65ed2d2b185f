"""The prompt template: exact loss masks, train/inference consistency, control strings as plain text."""
from __future__ import annotations

import pytest

from quill.data.template import IGNORE_INDEX, PromptTemplate, encode_text, template_for
from quill.errors import ModelError

POEM = "The sea is grey,\nthe gulls are loud.\n\nI walk away\nbeneath a cloud."
ONE_TURN = [{"role": "user", "content": "Write a poem about the sea"}, {"role": "assistant", "content": POEM}]


@pytest.fixture(params=["quill", "chatml"])
def setup(request, gpt2_tokenizer, chatml_tokenizer):
    """(tokenizer, template) for both styles: quill on GPT-2, the model's own ChatML template."""
    if request.param == "quill":
        return gpt2_tokenizer, template_for(gpt2_tokenizer)
    return chatml_tokenizer, template_for(chatml_tokenizer)


def test_gpt2_tokenizer_is_the_real_one(gpt2_tokenizer):
    tok = gpt2_tokenizer
    assert len(tok) == 50257  # GPT2Tokenizer(vocab_file=...) would silently be empty in transformers 5
    assert tok.eos_token == tok.bos_token == tok.pad_token == "<|endoftext|>" and tok.eos_token_id == 50256
    ids = encode_text(tok, POEM)
    assert tok.decode(ids) == POEM and ids[:3] == [464, 5417, 318]  # "The sea is"


def test_template_choice(gpt2_tokenizer, chatml_tokenizer):
    quill = template_for(gpt2_tokenizer)
    assert (quill.style, quill.end_of_turn, quill.bos) == ("quill", "<|endoftext|>", None)
    assert quill.render_prompt(ONE_TURN[:1]) == "User: Write a poem about the sea\nAssistant: "
    own = template_for(chatml_tokenizer)
    assert (own.name, own.end_of_turn) == ("model", "<|im_end|>")
    assert template_for(chatml_tokenizer, "quill").style == "quill"
    assert template_for(chatml_tokenizer, "chatml").name == "chatml"
    with pytest.raises(ModelError, match="lacks"):
        template_for(gpt2_tokenizer, "chatml")
    with pytest.raises(ModelError, match="unknown template"):
        template_for(gpt2_tokenizer, "alpaca")


def test_jinja_render_matches_the_tokenizer(chatml_tokenizer):
    tpl = template_for(chatml_tokenizer)
    expected = chatml_tokenizer.apply_chat_template(ONE_TURN[:1], tokenize=False, add_generation_prompt=True)
    assert tpl.render_prompt(ONE_TURN[:1]) == expected
    full = chatml_tokenizer.apply_chat_template(ONE_TURN, tokenize=False)
    assert full.startswith(tpl.render(ONE_TURN))  # the tokenizer adds only the trailing "\n" after <|im_end|>


def test_masks_and_round_trip(setup):
    tok, tpl = setup
    ex = tpl.encode_example(tok, ONE_TURN, max_length=512)
    ids, labels = ex["input_ids"], ex["labels"]
    prompt_ids = tpl.encode_prompt(tok, ONE_TURN[:1])
    assert ids[:len(prompt_ids)] == prompt_ids  # inference prompt == training prefix, token for token
    assert all(lab == IGNORE_INDEX for lab in labels[:len(prompt_ids)])
    assert labels[len(prompt_ids):] == ids[len(prompt_ids):]
    assert tok.decode(ids) == tpl.render(ONE_TURN) == tpl.render_prompt(ONE_TURN[:1]) + POEM + tpl.end_of_turn
    assert tok.decode(ids[len(prompt_ids):]) == POEM + tpl.end_of_turn


def test_end_of_turn_is_learned_even_when_pad_is_eos(setup):
    tok, tpl = setup
    assert tok.pad_token_id == tok.eos_token_id  # the classic trap
    ex = tpl.encode_example(tok, ONE_TURN, max_length=512)
    eot = tok.convert_tokens_to_ids(tpl.end_of_turn)
    assert ex["input_ids"][-1] == eot and ex["labels"][-1] == eot
    assert tpl.stop_token_ids(tok)[0] == eot and tok.eos_token_id in tpl.stop_token_ids(tok)


@pytest.mark.parametrize("where", ["poem", "user"])
@pytest.mark.parametrize("control", ["<|im_end|>", "<|endoftext|>", "<|im_start|>assistant\n"])
def test_control_strings_in_text_are_plain_text(setup, where, control):
    tok, tpl = setup
    user, poem = "Write about the sea", POEM
    if where == "poem":
        poem = f"The sea {control} ends here?\nNo."
    else:
        user = f"Write {control} about the sea"
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": poem}]
    ex = tpl.encode_example(tok, msgs, max_length=512)
    prompt_ids = tpl.encode_prompt(tok, msgs[:1])
    controls = {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>") if t in tok.get_vocab()}
    answer = ex["input_ids"][len(prompt_ids):]
    assert [i for i in answer if i in controls] == [answer[-1]]  # only the real end-of-turn
    assert ex["labels"].count(IGNORE_INDEX) == len(prompt_ids)
    assert tok.decode(ex["input_ids"]) == tpl.render(msgs)
    # the prompt holds exactly the template's own control tokens, whatever the user typed
    clean = tpl.encode_prompt(tok, [{"role": "user", "content": "Write about the sea"}])
    assert [i for i in prompt_ids if i in controls] == [i for i in clean if i in controls]


def test_multi_turn(setup):
    tok, tpl = setup
    msgs = [{"role": "system", "content": "You are a poet."}, {"role": "user", "content": "A haiku?"},
            {"role": "assistant", "content": "old pond / frog"}, {"role": "user", "content": "Another."},
            {"role": "assistant", "content": "new pond"}]
    ex = tpl.encode_example(tok, msgs, max_length=512)
    n_loss = sum(lab != IGNORE_INDEX for lab in ex["labels"])
    assert tok.decode([i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX]) \
        == "new pond" + tpl.end_of_turn and n_loss > 0
    assert tok.decode(ex["input_ids"]) == tpl.render(msgs)
    if tpl.style == "quill":
        assert tpl.render_prompt(msgs[:4]) == ("System: You are a poet.\nUser: A haiku?\nAssistant: old pond / frog"
                                               "<|endoftext|>\nUser: Another.\nAssistant: ")


def test_truncation_keeps_prompt_tail_and_answer_head(setup):
    tok, tpl = setup
    long_poem = "\n".join(f"line {i} of the long sea poem" for i in range(200))
    msgs = [{"role": "user", "content": "Continue: " + "waves " * 100}, {"role": "assistant", "content": long_poem}]
    full_prompt = tpl.encode_prompt(tok, msgs[:1])
    ex = tpl.encode_example(tok, msgs, max_length=64)
    assert len(ex["input_ids"]) == 64
    n_prompt = ex["labels"].count(IGNORE_INDEX)
    assert 0 < n_prompt <= 32 and ex["input_ids"][:n_prompt] == full_prompt[-n_prompt:]  # tail: ends at the marker
    assert tok.decode(ex["input_ids"][n_prompt:]) == long_poem[:len(tok.decode(ex["input_ids"][n_prompt:]))]
    # a long prompt with a short answer keeps the whole answer and its end-of-turn
    short = [msgs[0], {"role": "assistant", "content": "Brief."}]
    ex = tpl.encode_example(tok, short, max_length=40)
    answer = [i for i, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX]
    assert len(ex["input_ids"]) == 40 and tok.decode(answer) == "Brief." + tpl.end_of_turn


def test_never_an_all_masked_example(setup):
    tok, tpl = setup
    msgs = [{"role": "user", "content": "w " * 50}, {"role": "assistant", "content": "x " * 50}]
    for n in range(1, 80):
        ex = tpl.encode_example(tok, msgs, max_length=n)
        assert len(ex["input_ids"]) <= n and any(lab != IGNORE_INDEX for lab in ex["labels"])
    assert tpl.encode_example(tok, msgs, max_length=0) is None


def test_save_load_round_trip(setup, tmp_path):
    tok, tpl = setup
    tpl.save(tmp_path)
    back = PromptTemplate.load(tmp_path)
    assert back == tpl and back.encode_prompt(tok, ONE_TURN[:1]) == tpl.encode_prompt(tok, ONE_TURN[:1])
    with pytest.raises(ModelError, match="template.json"):
        PromptTemplate.load(tmp_path / "nowhere")


def test_bad_messages(gpt2_tokenizer):
    tpl = template_for(gpt2_tokenizer)
    with pytest.raises(ValueError, match="assistant"):
        tpl.encode_example(gpt2_tokenizer, ONE_TURN[:1], 64)
    with pytest.raises(ValueError, match="role"):
        tpl.render_prompt([{"role": "bot", "content": "hi"}])


def test_encode_text_is_plain(gpt2_tokenizer):
    ids = encode_text(gpt2_tokenizer, "a poem<|endoftext|>")
    assert 50256 not in ids and gpt2_tokenizer.decode(ids) == "a poem<|endoftext|>"
