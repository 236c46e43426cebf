"""Plain helpers shared by the tests (fixtures live in conftest.py): imported as
``from helpers import ...``, which works because pytest puts tests/ on sys.path (rootdir
import mode "prepend", tests/ is not a package). Its own checks are in test_helpers.py.

- Tiny random-weight Hugging Face checkpoints of every supported family, saved with a small
  offline word-level tokenizer (`build_hf`, `FAMILIES`, `VOCAB_WORDS`): conftest.py's
  `hf_checkpoints` fixture builds them once per session.
- `word_prompts`: random prompts from that vocabulary.
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
import random
import subprocess
import sys
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
