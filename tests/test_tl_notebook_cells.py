"""Notebook cells in the idiom of TransformerLens's demos (Main_Demo, Exploratory_Analysis_Demo: the
IOI logit difference, the logit lens, direct logit attribution by layer and by head, activation
patching sweeps, induction heads, OV copying scores, hooks, loss and generation), written for this
project, run unchanged twice: on our `HookedTransformer.from_pretrained` with `models.utils` and
`analyses.activation_patching`, and on TransformerLens 4.3's TransformerBridge (compatibility mode,
its weight processing) with its own `utilities` and `patching`. Only the names bound in the first
cell differ between the runs. Every tensor or number the cells leave behind must agree within 1e-4.

(Measured on TransformerLens's own Main_Demo with only the import and load lines changed: all of
its 52 cells that need no hub checkpoint or TransformerLens toy class run; see the README.)"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from helpers import processed_model, tl_processed_bridge

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4

CELLS = [
    # --- the IOI set-up: prompts, answers, a clean run with its cache
    '''
prompts = ["the cat and the dog ran to the house . the dog said that", "the dog and the cat ran to the house . the cat said that"]
answers = [(" cat", " dog"), (" dog", " cat")]
answer_tokens = torch.tensor([[model.to_single_token(a), model.to_single_token(b)] for a, b in answers])
tokens = model.to_tokens(prompts)
original_logits, cache = model.run_with_cache(tokens)
original_loss = model(tokens, return_type="loss")
''',
    '''
def logits_to_ave_logit_diff(logits, answer_tokens, per_prompt=False):
    final_logits = logits[:, -1, :]
    answer_logits = final_logits.gather(dim=-1, index=answer_tokens)
    answer_logit_diff = answer_logits[:, 0] - answer_logits[:, 1]
    return answer_logit_diff if per_prompt else answer_logit_diff.mean()

per_prompt_diff = logits_to_ave_logit_diff(original_logits, answer_tokens, per_prompt=True)
original_average_logit_diff = logits_to_ave_logit_diff(original_logits, answer_tokens)
''',
    # --- direct logit attribution through the residual stream
    '''
answer_residual_directions = model.tokens_to_residual_directions(answer_tokens)
logit_diff_directions = answer_residual_directions[:, 0] - answer_residual_directions[:, 1]
final_residual_stream = cache["resid_post", -1]
final_token_residual_stream = final_residual_stream[:, -1, :]
scaled_final_token_residual_stream = cache.apply_ln_to_stack(final_token_residual_stream, layer=-1, pos_slice=-1)
average_logit_diff = einops.einsum(scaled_final_token_residual_stream, logit_diff_directions,
                                   "batch d_model, batch d_model ->") / len(prompts)
''',
    '''
def residual_stack_to_logit_diff(residual_stack, cache):
    scaled_residual_stack = cache.apply_ln_to_stack(residual_stack, layer=-1, pos_slice=-1)
    return einops.einsum(scaled_residual_stack, logit_diff_directions,
                         "... batch d_model, batch d_model -> ...") / len(prompts)

accumulated_residual, labels = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1, return_labels=True)
logit_lens_logit_diffs = residual_stack_to_logit_diff(accumulated_residual, cache)
per_layer_residual, layer_labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
per_layer_logit_diffs = residual_stack_to_logit_diff(per_layer_residual, cache)
per_head_residual, head_labels = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
per_head_logit_diffs = einops.rearrange(residual_stack_to_logit_diff(per_head_residual, cache),
                                        "(layer head_index) -> layer head_index", layer=model.cfg.n_layers)
''',
    # --- attention patterns of the top heads
    '''
top_head = per_head_logit_diffs.abs().flatten().argmax().item()
top_layer, top_head_index = divmod(top_head, model.cfg.n_heads)
top_pattern = cache["pattern", top_layer][:, top_head_index]
str_tokens = model.to_str_tokens(prompts[0])
''',
    # --- activation patching between the prompt and its name-swapped twin
    '''
corrupted_tokens = model.to_tokens(prompts[::-1])
corrupted_logits, corrupted_cache = model.run_with_cache(corrupted_tokens)
corrupted_average_logit_diff = logits_to_ave_logit_diff(corrupted_logits, answer_tokens)

def ioi_metric(logits, answer_tokens=answer_tokens):
    return (logits_to_ave_logit_diff(logits, answer_tokens) - corrupted_average_logit_diff) / (
        original_average_logit_diff - corrupted_average_logit_diff)

resid_pre_act_patch_results = patching.get_act_patch_resid_pre(model, corrupted_tokens, cache, ioi_metric)
attn_head_out_all_pos_act_patch_results = patching.get_act_patch_attn_head_out_all_pos(
    model, corrupted_tokens, cache, ioi_metric)
every_block_result = patching.get_act_patch_block_every(model, corrupted_tokens, cache, ioi_metric)
''',
    # --- hooks: ablate a head, keep patterns with a filter function
    '''
def head_ablation_hook(value, hook, head_index_to_ablate=0):
    value[:, :, head_index_to_ablate, :] = 0.0
    return value

ablated_loss = model.run_with_hooks(tokens, return_type="loss",
                                    fwd_hooks=[(utils.get_act_name("v", 1), head_ablation_hook)])
pattern_norms = {}
model.run_with_hooks(tokens, return_type=None, fwd_hooks=[(
    lambda name: name.endswith("pattern"), lambda pattern, hook: pattern_norms.update({hook.name: pattern.norm()}))])
pattern_norm_list = torch.stack([pattern_norms[k] for k in sorted(pattern_norms)])
''',
    # --- induction heads on repeated random tokens, losses per token
    '''
torch.manual_seed(0)
seq_len = 8
random_tokens = torch.randint(6, model.cfg.d_vocab, (2, seq_len))
repeated_tokens = torch.cat([random_tokens, random_tokens], dim=1)
repeated_logits, rep_cache = model.run_with_cache(repeated_tokens)
correct_log_probs = model.loss_fn(repeated_logits, repeated_tokens, per_token=True)
loss_by_position = utils.lm_cross_entropy_loss(repeated_logits, repeated_tokens, per_token=True).mean(0)
induction_scores = torch.stack([
    rep_cache["pattern", layer].diagonal(offset=1 - seq_len, dim1=-2, dim2=-1).mean((0, -1))
    for layer in range(model.cfg.n_layers)])
''',
    # --- the OV circuit as a factored matrix
    '''
OV_circuit_all_heads = model.OV
OV_circuit_all_heads_eigenvalues = OV_circuit_all_heads.eigenvalues
OV_copying_score = OV_circuit_all_heads_eigenvalues.sum(dim=-1).real / OV_circuit_all_heads_eigenvalues.abs().sum(dim=-1)
full_OV_circuit = model.W_E @ OV_circuit_all_heads @ model.W_U
full_OV_trace = full_OV_circuit.eigenvalues.sum(-1).real
OV_norms = OV_circuit_all_heads.norm()
QK_first_singular_values = model.QK[0].S[..., 0]
weight_shapes = [tuple(model.W_Q.shape), tuple(model.W_O.shape), tuple(model.W_in.shape), tuple(model.W_U.shape)]
''',
    # --- greedy generation and the numpy bridge
    '''
generated = model.generate("the cat", max_new_tokens=4, do_sample=False, verbose=False, use_past_kv_cache=False)
numpy_logits = utils.to_numpy(original_logits[0, -1])
''',
]


def run_cells(env: dict) -> dict:
    """Run every cell in one namespace, as a notebook kernel would, and return it."""
    import einops

    env = {"torch": torch, "einops": einops, **env}
    for i, cell in enumerate(CELLS):
        try:
            exec(compile(cell, f"<cell {i}>", "exec"), env)
        except Exception as err:  # the failing cell's number in the message, the cause chained
            raise AssertionError(f"cell {i} failed: {type(err).__name__}: {err}") from err
    return env


@pytest.fixture(scope="module")
def namespaces(hf_checkpoints):
    import transformer_lens.patching as tl_patching
    import transformer_lens.utilities as tl_utils

    import models
    from analyses import activation_patching

    path = hf_checkpoints["gpt2"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = run_cells({"model": processed_model(path).eval(), "utils": models.utils, "patching": activation_patching})
        theirs = run_cells({"model": tl_processed_bridge(path).eval(), "utils": tl_utils, "patching": tl_patching})
    return ours, theirs


def comparable(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value))
    return value


RESULTS = [
    "answer_tokens", "tokens", "original_logits", "original_loss", "per_prompt_diff", "original_average_logit_diff",
    "answer_residual_directions", "scaled_final_token_residual_stream", "average_logit_diff", "accumulated_residual",
    "logit_lens_logit_diffs", "per_layer_residual", "per_layer_logit_diffs", "per_head_residual",
    "per_head_logit_diffs", "top_head", "top_pattern", "corrupted_average_logit_diff", "resid_pre_act_patch_results",
    "attn_head_out_all_pos_act_patch_results", "every_block_result", "ablated_loss", "pattern_norm_list",
    "correct_log_probs", "loss_by_position", "induction_scores", "OV_copying_score", "full_OV_trace", "OV_norms",
    "QK_first_singular_values", "numpy_logits",
]


@pytest.mark.parametrize("name", RESULTS)
def test_cell_values_equal_transformerlens(namespaces, name):
    ours, theirs = (comparable(ns[name]) for ns in namespaces)
    assert isinstance(ours, torch.Tensor), name
    assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
    assert ours.dtype.is_floating_point == theirs.dtype.is_floating_point, name
    scale = max(1.0, float(theirs.abs().max()))  # e.g. full-OV traces of size ~1e2
    assert (ours.double() - theirs.double()).abs().max() <= TOL * scale, name


def test_labels_strings_and_shapes_equal_transformerlens(namespaces):
    ours, theirs = namespaces
    for name in ("labels", "layer_labels", "head_labels", "str_tokens", "weight_shapes", "generated"):
        assert ours[name] == theirs[name], name
    # Generation is compared without the KV cache: TransformerLens 4.3's bridge, on these random
    # checkpoints, generates greedily with its cache other tokens than without it (ours are the same
    # both ways, and equal to transformers' generate: tests/test_generation.py).
    model = ours["model"]
    assert model.generate("the cat", max_new_tokens=4, do_sample=False, verbose=False) == ours["generated"]
    # DLA adds up: the layers' terms are the final logit difference, as the demo checks
    assert abs(float(ours["per_layer_logit_diffs"].detach().sum()) - float(ours["original_average_logit_diff"].detach())) < TOL
