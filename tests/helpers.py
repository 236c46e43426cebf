"""Plain helpers shared by the tests (fixtures live in conftest.py): imported as
``from helpers import ...``, which works because pytest puts tests/ on sys.path (rootdir
import mode "prepend", tests/ is not a package). Its own checks are in test_helpers.py.

- Tiny random-weight Hugging Face checkpoints of every supported family, saved with a small
  offline word-level tokenizer (`build_hf`, `FAMILIES`, `VOCAB_WORDS`), and the encoder-decoder
  ones (`build_seq2seq`, `SEQ2SEQ_FAMILIES`): conftest.py's `hf_checkpoints` and
  `seq2seq_checkpoints` fixtures build them once per session.
- `word_prompts`: random prompts from that vocabulary.
- `padded_ids`: random token ids (optionally right-padded, with their mask); `tl_bridge`:
  TransformerLens's TransformerBridge on one of those checkpoints (the reference);
  `processed_model` / `tl_processed_bridge`: ours and theirs with TransformerLens's default
  weight processing (fold_ln, center_writing_weights, center_unembed, fold_value_biases);
  `tl_raw_bridge`: the bridge in compatibility mode on raw weights; `hooks_left`: hook points
  still holding a hook (none after a temporary run).
- Small real runs for the dashboard tests (`record_coref_run`, `record_plain_run`,
  `corrupt_copy`), recorded from the shipped toy-coref model with every analysis the
  dashboard shows saved next to them.
- `run_cli`: `probe ...` in a subprocess (`python -m probe.cli ...`, or with `env_code` run
  before `main`); `cli_command` is its argv, for a caller that needs a `Popen`.
- `figure_dict`: a plotly figure as the browser receives it (the dashboard tests).
- `assert_saved`: a saved CSV holds a given table.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

VOCAB_WORDS = (
    "the animal didn't cross street because it was tired wide a cat dog sat on mat and ran "
    "to house big small red blue green old new man woman said that he she they we you i"
).split()


def make_tokenizer(kind: str):
    """A word-level tokenizer built offline. ``kind``: "bert" adds [CLS]/[SEP] like
    BERT's; "gpt2" adds nothing (BOS is prepended by the model, as for GPT-2); "llama"
    adds <s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + VOCAB_WORDS + [".", ",", "'"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]")
    if kind == "seq2seq":  # sources and targets end in </s>, as Marian's and T5's do
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    if kind == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   bos_token="<s>", eos_token="</s>")


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere, norms included, so nothing is trivially 0 or 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name.lower() or "ln" in name.lower()) and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


V = 64  # vocab size of the tiny models (>= the tokenizer's vocabulary)


def hf_configs():
    from transformers import BertConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig, Qwen2Config

    common_dec = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=64)
    return {
        "gpt2": ("gpt2", GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                    bos_token_id=4, eos_token_id=5)),
        "bert": ("bert", BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=48, max_position_embeddings=64, type_vocab_size=2)),
        "llama": ("llama", LlamaConfig(**common_dec, num_key_value_heads=2, rope_theta=500.0,
                                       bos_token_id=4, eos_token_id=5, pad_token_id=0)),
        "qwen2": ("llama", Qwen2Config(**common_dec, num_key_value_heads=1, bos_token_id=4, eos_token_id=5,
                                       tie_word_embeddings=True)),
        "mistral": ("llama", MistralConfig(**common_dec, num_key_value_heads=2, sliding_window=None,
                                           bos_token_id=4, eos_token_id=5)),
        "neox": ("gpt2", GPTNeoXConfig(**common_dec, rotary_pct=0.5, use_parallel_residual=True,
                                       bos_token_id=4, eos_token_id=5)),
        "neox_seq": ("gpt2", GPTNeoXConfig(**common_dec, rotary_pct=0.25, use_parallel_residual=False,
                                           bos_token_id=4, eos_token_id=5)),
    }


FAMILIES = list(hf_configs())


def seq2seq_configs():
    """Tiny encoder-decoder configs: BART (learned positions, post-norm, embedding LayerNorm),
    Marian (sinusoidal, scaled embeddings, SiLU, a deeper decoder), T5 v1.0 (ReLU, tied, scaled
    logits) and v1.1 (gated GELU). Ids as make_tokenizer("seq2seq"): [PAD] 0, </s> 5."""
    from transformers import BartConfig, MarianConfig, T5Config

    sizes = dict(vocab_size=V, d_model=32, encoder_attention_heads=4, decoder_attention_heads=4,
                 encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=40, pad_token_id=0, eos_token_id=5)
    t5 = dict(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
              relative_attention_max_distance=16, pad_token_id=0, eos_token_id=5, decoder_start_token_id=0)
    return {
        "bart": BartConfig(**sizes, encoder_layers=2, decoder_layers=2, bos_token_id=4, decoder_start_token_id=5,
                           forced_eos_token_id=None),
        "marian": MarianConfig(**sizes, encoder_layers=2, decoder_layers=3, decoder_start_token_id=0),
        "t5": T5Config(**t5, feed_forward_proj="relu"),
        "t5_v1_1": T5Config(**t5, feed_forward_proj="gated-gelu", num_decoder_layers=3, tie_word_embeddings=False),
    }


SEQ2SEQ_FAMILIES = list(seq2seq_configs())


def build_seq2seq(family: str, path, eos_boost: float = 0.5) -> torch.nn.Module:
    """A random tiny encoder-decoder of ``family`` saved to ``path`` with the seq2seq tokenizer.
    BART and Marian get ``eos_boost`` on the EOS logit, so decoded hypotheses end at different
    lengths (random models rarely end otherwise)."""
    from transformers import AutoModelForSeq2SeqLM

    cfg = seq2seq_configs()[family]
    model = AutoModelForSeq2SeqLM.from_config(cfg, attn_implementation="eager")
    randomize(model, seed=sum(family.encode()))  # a seed stable across processes (str hashes are not)
    if hasattr(model, "final_logits_bias"):
        with torch.no_grad():
            model.final_logits_bias.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
            model.final_logits_bias[0, cfg.eos_token_id] += eos_boost
    model.save_pretrained(path)
    make_tokenizer("seq2seq").save_pretrained(path)
    # the reference is what transformers reads back (Marian recomputes its sinusoidal table,
    # which randomize overwrote in memory and save_pretrained leaves out)
    return AutoModelForSeq2SeqLM.from_pretrained(path, attn_implementation="eager").eval()


def build_hf(family: str, path) -> torch.nn.Module:
    from transformers import AutoModel, AutoModelForCausalLM

    tok_kind, cfg = hf_configs()[family]
    cfg._attn_implementation = "eager"
    auto = AutoModel if family == "bert" else AutoModelForCausalLM
    model = auto.from_config(cfg, attn_implementation="eager")
    randomize(model, seed=hash(family) % 1000)
    model.eval()
    model.save_pretrained(path)
    make_tokenizer(tok_kind).save_pretrained(path)
    return model


def word_prompts(n: int, seed: int = 0, lo: int = 2, hi: int = 12) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(VOCAB_WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def cli_command(*args, env_code: str = "") -> list[str]:
    """The argv that runs `probe ARGS` in a fresh interpreter: ``python -m probe.cli ARGS``, or,
    with ``env_code`` (Python run first, e.g. to inject a fault or set a resource limit),
    ``python -c "import sys; <env_code>; from probe.cli import main; sys.exit(main(...))" ARGS``."""
    args = [str(a) for a in args]
    if not env_code:
        return [sys.executable, "-m", "probe.cli", *args]
    code = f"import sys\n{env_code}\nfrom probe.cli import main\nsys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *args]


def run_cli(*args, timeout: float = 300, env_code: str = "") -> subprocess.CompletedProcess:
    """`probe ARGS` in a subprocess (see `cli_command`), its output captured as text."""
    return subprocess.run(cli_command(*args, env_code=env_code), capture_output=True, text=True, timeout=timeout)


def assert_saved(path, table: pd.DataFrame) -> None:
    """The CSV at ``path`` holds ``table`` (float32 columns read back as float64)."""
    pd.testing.assert_frame_equal(pd.read_csv(path), table, check_dtype=False)


# ------------------------------------------------------------ runs for the dashboard tests
NAMES = ["blocks.*.attn.hook_pattern", "blocks.*.hook_resid_post", "blocks.*.attn.hook_q", "blocks.*.attn.hook_k"]


def record_coref_run(out: Path, n: int = 24, analyses: bool = True) -> Path:
    """toy-coref on ``n`` prompts (the tired/wide-style twins come in consecutive pairs), with
    head metrics, the coreference study, a probe, a head-ablation sweep and patching saved
    in RUN/analyses as the analyses write them."""
    import models
    import probe
    from analyses.ablation import head_ablation_sweep, next_token_loss
    from analyses.coref import write_report
    from analyses.head_metrics import head_metrics
    from analyses.results import save_result
    from probe.cli import main

    torch.set_num_threads(1)
    model = models.load("toy-coref")
    prompts = [p for p in probe.load_prompts("toy-coref-test") if len(p.text.split()) == 14][:n]
    run = probe.record(model, prompts, out, names=NAMES, progress=False)
    if analyses:
        save_result(run.path, "head_metrics", head_metrics(run))
        write_report(run)
        assert main(["probes", str(out), "--label", "answer"]) == 0
        tokens = torch.tensor(np.stack([run.tokens(i) for i in range(run.n_prompts)]).astype(np.int64))
        save_result(run.path, "ablation_coref", head_ablation_sweep(model, tokens, next_token_loss(), method="mean",
                                                                    reference=tokens))
        assert main(["patch", "-o", str(out / "analyses")]) == 0
    return Path(out)


def record_plain_run(out: Path) -> Path:
    """minilm on the seed pair with patterns only: no analyses, no Q/K, no residual."""
    import models
    import probe

    torch.set_num_threads(1)
    probe.record(models.load("minilm"), "seed", out, names=["blocks.*.attn.hook_pattern"], progress=False)
    return Path(out)


def corrupt_copy(src: Path, out: Path, how: str) -> Path:
    """A copy of a run's manifest and prompts that is broken in one way: "json" (truncated
    run.json), "schema" (a newer schema version), "shard" (a listed shard that is garbage)."""
    import shutil

    shutil.copytree(src, out)
    manifest = out / "run.json"
    if how == "json":
        manifest.write_text(manifest.read_text()[:40])
    elif how == "schema":
        m = json.loads(manifest.read_text())
        m["schema_version"] = 99
        manifest.write_text(json.dumps(m))
    elif how == "shard":
        for f in (out / "shards").glob("*.h5"):
            f.write_bytes(b"not an hdf5 file")
    return out


def figure_dict(fig) -> dict:
    """The figure as the browser receives it (JSON), numeric arrays decoded from plotly's
    base64 typed arrays."""
    return decode(json.loads(fig.to_json()))


def decode(obj):
    if isinstance(obj, dict):
        if "bdata" in obj and "dtype" in obj:
            a = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=obj["dtype"])
            return a.reshape([int(n) for n in str(obj["shape"]).split(",")]) if "shape" in obj else a
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


# ------------------------------------------------------------ tiny GGUF files
# A byte-level BPE vocabulary as llama.cpp stores it: three control tokens, the 256 byte
# symbols (GPT-2's bytes-to-unicode map), then the tokens of a few merges.
GGUF_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "Ġa n", "Ġan d", "e r", "Ġ 1", "1 2"]


def gguf_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of the tiny GGUF tokenizer (type 3 = control, 1 = normal)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    symbols = list(bytes_to_unicode().values())
    merged = [m.replace(" ", "") for m in GGUF_MERGES]
    tokens = specials + symbols + merged
    return tokens, [3] * len(specials) + [1] * (len(symbols) + len(merged)), list(GGUF_MERGES)


def tiny_gguf_source(arch: str, seed: int = 0) -> torch.nn.Module:
    """A random-weight Hugging Face model (llama: 4 heads, 2 key/value heads; qwen2: q/k/v
    biases, tied embeddings) whose vocabulary is `gguf_vocab`'s: the ground truth a GGUF
    written from it must load back to."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    n_vocab = len(gguf_vocab()[0])
    common = dict(vocab_size=n_vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    cfg = (LlamaConfig(**common, rope_theta=500.0, tie_word_embeddings=False) if arch == "llama"
           else Qwen2Config(**common, rope_theta=10000.0, tie_word_embeddings=True))
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    randomize(model, seed)
    return model.eval()


def _llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf `permute` of a query/key projection (written out here,
    independently of the loader's inverse)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, model: torch.nn.Module, arch: str = "llama", *, qtype: str = "F32",
               add_bos: bool = False, arch_name: str | None = None, raw_tensor: tuple[str, str] | None = None,
               pre: str = "default") -> Path:
    """Write ``model`` (a `tiny_gguf_source`) as llama.cpp would: its metadata keys, its tensor
    names, q/k rows permuted for llama, 2-D weights quantized as ``qtype`` (``F32``, ``Q8_0``...).
    ``arch_name`` overrides general.architecture (an unsupported one); ``raw_tensor`` = (name,
    type) writes that tensor as zero bytes of a type (one the dequantizer lacks)."""
    import gguf

    cfg = model.config
    tokens, types, merges = gguf_vocab()
    w = gguf.GGUFWriter(str(path), arch_name or arch)
    w.add_name("tiny")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(add_bos)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                 "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
                 "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
                 "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
                 "self_attn.v_proj.bias": "attn_v.bias", "mlp.gate_proj.weight": "ffn_gate.weight",
                 "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
    state = model.state_dict()
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    for hf, t in state.items():
        if hf.startswith("model.layers."):
            layer, rest = hf[len("model.layers."):].split(".", 1)
            name = f"blk.{layer}.{per_layer[rest]}"
        else:
            name = names[hf]
        a = t.detach().float().numpy().copy()
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = cfg.num_attention_heads if "attn_q" in name else cfg.num_key_value_heads
            a = _llama_cpp_permute(a, heads)
        if raw_tensor is not None and name == raw_tensor[0]:
            kind = gguf.GGMLQuantizationType[raw_tensor[1]]
            block, size = gguf.GGML_QUANT_SIZES[kind]
            raw = np.zeros((a.shape[0], a.shape[1] // block * size), dtype=np.uint8)
            w.add_tensor(name, raw, raw_dtype=kind)
        elif a.ndim == 2 and qtype != "F32":
            kind = gguf.GGMLQuantizationType[qtype]
            w.add_tensor(name, gguf.quants.quantize(a, kind), raw_dtype=kind)
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_gqa_model(n_heads: int = 6, n_kv: int = 2, seed: int = 7, rotary_base: float = 10000.0,
                   norm_eps: float = 1e-5):
    """A random-weight Llama-shaped HookedTransformer (RMSNorm, rotary, SwiGLU, no biases, d_head 8)
    with grouped-query attention, n_kv_heads < n_heads: the GQA record and dashboard tests' model."""
    from models import HookedTransformer, TransformerConfig

    torch.manual_seed(0)
    cfg = TransformerConfig(d_model=48, n_layers=2, n_heads=n_heads, n_kv_heads=n_kv, d_head=8, d_vocab=64,
                            n_ctx=64, d_mlp=64, norm="rmsnorm", norm_eps=norm_eps, positional="rotary",
                            rotary_base=rotary_base, act_fn="silu", gated_mlp=True, attn_qkv_bias=False,
                            attn_out_bias=False, mlp_bias=False, bos_token_id=4, eos_token_id=5, pad_token_id=0,
                            model_name="tiny-gqa", family="llama")
    model = HookedTransformer(cfg, make_tokenizer("llama")).eval()
    randomize(model, seed=seed)
    return model


def padded_ids(vocab: int, lengths=(9, 5, 12), seed: int = 1, with_mask: bool = False):
    """Random token ids [batch, max(lengths)] without special tokens (ids from 6). With
    ``with_mask``: rows right-padded with 0 past their length, and (ids, attention mask [batch, pos])."""
    g = torch.Generator().manual_seed(seed)
    if not with_mask:
        return torch.randint(6, vocab, (len(lengths), max(lengths)), generator=g)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(6, vocab, (n,), generator=g)
        mask[i, :n] = 1
    return ids, mask


def tl_bridge(path):
    """TransformerLens's TransformerBridge on a Hugging Face checkpoint directory (float32, CPU,
    raw weights until its ``enable_compatibility_mode``)."""
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    transformers.utils.logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerBridge.boot_transformers(str(path), device="cpu", dtype=torch.float32)


def processed_model(path, **flags):
    """`HookedTransformer.from_pretrained` on a checkpoint directory (TransformerLens's default
    processing unless ``flags`` say otherwise), without the RMSNorm "skipped" warnings."""
    from models import HookedTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HookedTransformer.from_pretrained(str(path), **flags)


def tl_processed_bridge(path):
    """`tl_bridge` with `enable_compatibility_mode()`: TransformerLens's own weight processing
    (the same defaults as `processed_model`) and HookedTransformer's hook names."""
    bridge = tl_bridge(path)
    bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge


def tl_raw_bridge(path):
    """`tl_bridge` in compatibility mode without weight processing: HookedTransformer's hook
    names and switches (`set_use_split_qkv_input`...) on the checkpoint's own weights, so its
    activations compare with `models.load`'s."""
    bridge = tl_bridge(path)
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    return bridge


def hooks_left(model) -> list[str]:
    """Hook points of ``model`` that still hold a hook of any kind: ours (forward, backward)
    or one PyTorch registered on the module. Empty after every temporary run."""
    return [name for name, hp in model.hook_dict.items()
            if hp.fwd_hooks or hp.bwd_hooks or hp._forward_hooks or hp._backward_hooks or hp._forward_pre_hooks]


def fill(disk: Path, leave: int) -> Path:
    """A filler file that leaves ``leave`` bytes free on ``disk``; removing it frees the space."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize - leave)
    finally:
        os.close(fd)
    return filler
