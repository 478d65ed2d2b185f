"""Taking the poet to other tools: checkpoints carry quill's template as ``chat_template``; ``quill export``
writes a GGUF (template + end-of-turn embedded), an Ollama Modelfile whose Go ``TEMPLATE`` renders what quill
renders (checked with Go's own text/template where ``go`` is installed), and a Hugging Face folder."""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils.chat_template_utils import render_jinja_template

from quill import cli
from quill.apps.ollama import TemplateNotTranslatable, go_template, modelfile
from quill.data.template import CHATML, PromptTemplate, template_for
from quill.errors import ModelError
from quill.models import save_model, write_gguf
from quill.models.saving import save_tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "Write a poem about the sea."}],
    [{"role": "system", "content": "You are a poet of the moors."},
     {"role": "user", "content": "A haiku, please: \"snow\" {{ .Role }} <|im_end|>"}],
    [{"role": "user", "content": "A couplet on rain."},
     {"role": "assistant", "content": "The rain comes down on every roof,\nand leaves the morning as its proof."},
     {"role": "user", "content": "Now one on snow, with ünïcode ❄"}],
    [{"role": "system", "content": "Short answers."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello\n\nthere"}, {"role": "user", "content": "A limerick"}],
]


def _chatml_gpt2(gpt2_tokenizer):
    tok = gpt2_tokenizer.__class__.from_pretrained(gpt2_tokenizer.name_or_path)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tok


@pytest.fixture(params=["quill", "model-chatml-default-system", "chatml"])
def styled(request, gpt2_tokenizer, chatml_tokenizer):
    """(tokenizer, template) for quill's style, a model's own ChatML with a default system message, and
    ``template: chatml`` forced on a tokenizer without a chat template."""
    if request.param == "quill":
        return gpt2_tokenizer, template_for(gpt2_tokenizer, "quill")
    if request.param == "chatml":
        tok = _chatml_gpt2(gpt2_tokenizer)
        return tok, template_for(tok, "chatml")
    return chatml_tokenizer, template_for(chatml_tokenizer, "auto")


def _ids(encoded) -> list[int]:
    return list(encoded["input_ids"] if not isinstance(encoded, list) else encoded)


# ----------------------------------------------------------------------------- chat_template in checkpoints
def test_saved_tokenizer_renders_quills_prompt_ids(tmp_path, styled):
    tokenizer, template = styled
    save_tokenizer(tmp_path, tokenizer, template)
    other = AutoTokenizer.from_pretrained(tmp_path)
    for conv in CONVERSATIONS:
        text = other.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        assert text == template.render_prompt(conv)
        ids = _ids(other.apply_chat_template(conv, add_generation_prompt=True, tokenize=True))
        if "<|im_end|>" in conv[-1]["content"] or any("<|im_end|>" in m["content"] for m in conv):
            continue  # quill encodes control strings in contents as plain text; other tools cannot
        assert ids == template.encode_prompt(tokenizer, conv), conv


def test_quill_style_with_bos_keeps_it(gpt2_tokenizer):
    template = PromptTemplate(style="quill", end_of_turn="<|endoftext|>", bos="<|endoftext|>")
    for conv in CONVERSATIONS:
        rendered = render_jinja_template([conv], chat_template=template.jinja_source(), add_generation_prompt=True)
        assert rendered[0][0] == template.render_prompt(conv)
        assert rendered[0][0].startswith("<|endoftext|>User: ") or rendered[0][0].startswith("<|endoftext|>System: ")


def test_save_model_writes_chat_template_and_leaves_the_tokenizer_alone(tmp_path, tiny_gpt2):
    model, tokenizer, template = tiny_gpt2
    before = tokenizer.chat_template
    save_model(tmp_path / "m", model, tokenizer, template)
    assert tokenizer.chat_template == before
    saved = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    chat = saved.get("chat_template") or (tmp_path / "m" / "chat_template.jinja").read_text()
    assert chat == template.jinja_source()


# ----------------------------------------------------------------------------- GGUF
def _resized(model, tokenizer):
    model = copy.deepcopy(model)
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return model


def _gguf_fields(path) -> dict:
    from gguf import GGUFReader
    reader = GGUFReader(str(path))
    out = {}
    for key in ("tokenizer.chat_template", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
        field = reader.fields.get(key)
        if field is not None:
            value = field.parts[field.data[0]]
            out[key] = bytes(value).decode() if key.endswith("template") else int(value[0])
    return out


def test_gguf_embeds_the_template_and_the_end_of_turn(tmp_path, tiny_gpt2, styled):
    tokenizer, template = styled
    model = _resized(tiny_gpt2[0], tokenizer)
    path = write_gguf(model, tokenizer, tmp_path / "m.gguf", "f16", template=template)
    fields = _gguf_fields(path)
    eot = template.end_of_turn_id(tokenizer)
    assert fields["tokenizer.ggml.eos_token_id"] == eot and fields["tokenizer.ggml.eot_token_id"] == eot
    for conv in CONVERSATIONS:
        rendered = render_jinja_template([conv], chat_template=fields["tokenizer.chat_template"],
                                         add_generation_prompt=True)[0][0]
        assert rendered == template.render_prompt(conv)


# ----------------------------------------------------------------------------- Ollama
GO_RENDER = """package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	src, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	var convs [][]Message
	if err := json.NewDecoder(os.Stdin).Decode(&convs); err != nil {
		panic(err)
	}
	t := template.Must(template.New("modelfile").Parse(string(src)))
	out := []string{}
	for _, c := range convs {
		var b strings.Builder
		if err := t.Execute(&b, map[string]any{"Messages": c}); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


def _modelfile_template(text: str) -> str:
    match = re.search(r'^TEMPLATE """(.*?)"""$', text, flags=re.S | re.M)
    assert match, text
    return match.group(1)


def go_render(tmp_path, template_text: str, convs: list[list[dict]]) -> list[str]:
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (Debian: golang-go); Ollama's TEMPLATE is Go's text/template")
    (tmp_path / "render.go").write_text(GO_RENDER)
    (tmp_path / "template.txt").write_text(template_text)
    env = {"GOCACHE": str(tmp_path / "gocache"), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
           "GOFLAGS": "-mod=mod", "GO111MODULE": "off"}
    proc = subprocess.run([go, "run", str(tmp_path / "render.go"), str(tmp_path / "template.txt")],
                          input=json.dumps(convs), capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_modelfile_template_renders_what_quill_renders(tmp_path, styled):
    tokenizer, template = styled
    text = modelfile("m.gguf", template, tokenizer, {"temperature": 0.7, "top_p": 0.95, "top_k": 0,
                                                     "repetition_penalty": 1.1, "max_new_tokens": 160})
    rendered = go_render(tmp_path, _modelfile_template(text), CONVERSATIONS)
    assert rendered == [template.render_prompt(conv) for conv in CONVERSATIONS]


def test_modelfile_stops_and_sampling(styled):
    tokenizer, template = styled
    text = modelfile("poet-q8_0.gguf", template, tokenizer, {"temperature": 0.7, "top_p": 0.95, "top_k": 0,
                                                             "repetition_penalty": 1.1, "max_new_tokens": 160})
    assert text.splitlines()[1] == "FROM ./poet-q8_0.gguf"
    stops = re.findall(r'^PARAMETER stop "(.*)"$', text, flags=re.M)
    assert stops and stops[0] == template.end_of_turn
    assert set(stops) == {tokenizer.convert_ids_to_tokens(i) for i in template.stop_token_ids(tokenizer)}
    for line in ("PARAMETER temperature 0.7", "PARAMETER top_p 0.95", "PARAMETER top_k 0",
                 "PARAMETER repeat_penalty 1.1", "PARAMETER num_predict 160", "PARAMETER repeat_last_n -1"):
        assert line in text.splitlines()


def test_other_jinja_templates_are_refused_by_name(gpt2_tokenizer):
    odd = PromptTemplate(style="jinja", name="model", end_of_turn="<|endoftext|>",
                         chat_template="{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|endoftext|>"
                                       "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
    with pytest.raises(TemplateNotTranslatable, match="neither quill's nor ChatML"):
        go_template(odd)
    assert go_template(template_for(gpt2_tokenizer, "quill"))  # the two families do translate
    assert CHATML  # (the ChatML family is covered by the `styled` fixture)


# ----------------------------------------------------------------------------- the verb
@pytest.fixture
def checkpoint(tmp_path, tiny_gpt2):
    model, tokenizer, template = tiny_gpt2
    return save_model(tmp_path / "poet" / "model", model, tokenizer, template,
                      {"temperature": 0.8, "top_p": 0.9, "max_new_tokens": 64})


def test_export_ollama_writes_gguf_and_modelfile(tmp_path, checkpoint, capsys):
    out = tmp_path / "ollama"
    assert cli.main(["export", str(checkpoint), "--to", "ollama", "--out", str(out), "--name", "My Poet"]) == 0
    printed = capsys.readouterr().out
    gguf = out / "my-poet-q8_0.gguf"
    assert gguf.is_file() and (out / "Modelfile").is_file()
    text = (out / "Modelfile").read_text()
    assert "FROM ./my-poet-q8_0.gguf" in text and "PARAMETER temperature 0.8" in text
    assert "PARAMETER num_predict 64" in text
    assert "ollama create my-poet -f Modelfile" in printed and " MB" in printed
    assert _gguf_fields(gguf)["tokenizer.chat_template"] == PromptTemplate.load(checkpoint).jinja_source()


def test_export_hf_folder_loads_anywhere(tmp_path, checkpoint, tiny_gpt2):
    out = tmp_path / "hf"
    assert cli.main(["export", str(checkpoint), "--to", "hf", "--out", str(out), "--quant", "f16"]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.float16
    tok = AutoTokenizer.from_pretrained(out)
    template = PromptTemplate.load(checkpoint)
    conv = CONVERSATIONS[2]
    assert _ids(tok.apply_chat_template(conv, add_generation_prompt=True)) == template.encode_prompt(tok, conv)
    gen = json.loads((out / "generation_config.json").read_text())
    assert template.end_of_turn_id(tok) in (gen["eos_token_id"] if isinstance(gen["eos_token_id"], list)
                                            else [gen["eos_token_id"]])


def test_export_errors_are_one_line(tmp_path, checkpoint, capsys):
    assert cli.main(["export", str(checkpoint), "--to", "gguf", "--quant", "q3_k", "--out", str(tmp_path / "x")]) == 2
    assert "q3_k" in capsys.readouterr().err
    assert cli.main(["export", str(checkpoint), "--to", "hf", "--quant", "q8_0", "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_unsupported_architecture_is_named(tmp_path, gpt2_tokenizer):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=50257, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64))
    folder = save_model(tmp_path / "neox", model, gpt2_tokenizer, template_for(gpt2_tokenizer, "quill"))
    with pytest.raises(ModelError, match="'gpt_neox'"):
        from quill.apps.export import export
        export(str(folder), "gguf", out=str(tmp_path / "out"))
    assert not list((tmp_path / "out").glob("*.gguf"))


# ----------------------------------------------------------------------------- in llama.cpp itself
def test_gguf_chats_in_llama_cpp_like_quill(tmp_path, checkpoint):
    """The exported GGUF in llama.cpp: its embedded template renders quill's prompt text (llama-cpp-python's own
    jinja formatter), for a quill-style checkpoint."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the 'llama' extra)")
    from quill.apps.export import export
    [gguf], _ = export(str(checkpoint), "gguf", quant="f16", out=str(tmp_path / "g"))
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=256, n_threads=2, verbose=False)
    template = PromptTemplate.load(checkpoint)
    assert llm.metadata["tokenizer.chat_template"] == template.jinja_source()
    formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"], eos_token="", bos_token="")
    for conv in CONVERSATIONS:
        assert formatter(messages=conv).prompt == template.render_prompt(conv)


@pytest.mark.slow
def test_gguf_greedy_continuation_matches_torch_at_f16(tmp_path):
    """SmolLM2-135M-Instruct (a real model: random tiny ones have near-tied logits that f16 flips) exported at f16:
    llama.cpp's greedy tokens after the chat prompt are torch's, and its embedded template is ChatML with the
    model's default system message, rendered as quill renders it."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the 'llama' extra)")
    from quill.apps.export import export
    from quill.config import ModelConfig
    from quill.models import load_base
    model, tokenizer, template = load_base(ModelConfig(name="smollm2-135m"), dtype="fp32")
    folder = save_model(tmp_path / "smol", model, tokenizer, template)
    [gguf], _ = export(str(folder), "gguf", quant="f16", out=str(tmp_path / "g"))
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_threads=2, verbose=False)
    formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"], eos_token="<|im_end|>", bos_token="<|im_start|>")
    conv = [{"role": "user", "content": "Write a short poem about the sea and the sky."}]
    assert formatter(messages=conv).prompt == template.render_prompt(conv)
    ids = template.encode_prompt(tokenizer, conv)
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, repetition_penalty=None,
                             pad_token_id=tokenizer.pad_token_id)[0, len(ids):].tolist()
    ours = []
    for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        ours.append(token)
        if len(ours) == len(ref) or token == template.end_of_turn_id(tokenizer):
            break
    assert ours[:8] == ref[:8], (tokenizer.decode(ours), tokenizer.decode(ref))


# ----------------------------------------------------------------------------- output a person reads
@pytest.mark.parametrize("flags,shown", [([], False), (["-v"], True)])
def test_library_progress_bars_only_with_verbose(tmp_path, flags, shown):
    import os
    import sys
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for key in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "quill.cli", *flags, "generate", "tiny-gpt2", "x",
                           "--max-new-tokens", "2", "--backend", "torch"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert ("Loading weights" in proc.stderr) == shown, proc.stderr
    assert "tokens/s" in proc.stdout + proc.stderr  # quill's own line stays
