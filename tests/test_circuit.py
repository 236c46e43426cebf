"""The circuit interventions (analyses/circuit.py) against references the tests write by hand:

- head patching equals `analyses.attribution.exact_patching` of whole heads (itself checked
  against TransformerLens's sweeps);
- path patching equals a one-sender-at-a-time implementation with plain hooks (freeze every other
  head, record the receivers' inputs, put them back), for query, key and value receivers; on a
  grouped-query rotary model the value and key paths of one head equal the head's output
  recomputed with the new values or keys (its key/value head shared with others changed for it
  alone);
- mean ablation keeps the model when nothing is ablated, and with every head ablated equals
  hooks that write the group means computed by hand;
- the checks: the circuit of every head is perfectly faithful and complete.
"""

from __future__ import annotations

import pytest
import torch

from analyses.attribution import exact_patching
from analyses.circuit import (
    CircuitTask,
    Receiver,
    TaskBatch,
    ablated_metric,
    all_heads,
    circuit_checks,
    clean_metric,
    group_means,
    head_patching,
    logit_diff_at,
    path_patching,
)
from models import HookedTransformer, TransformerConfig, act_name

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-4


def model_of(n_kv_heads: int | None = None, positional: str = "learned", seed: int = 0) -> HookedTransformer:
    cfg = TransformerConfig(d_model=24, n_layers=3, n_heads=4, n_kv_heads=n_kv_heads, d_vocab=40, n_ctx=16, d_mlp=48,
                            positional=positional, norm="rmsnorm" if positional == "rotary" else "layernorm")
    torch.manual_seed(seed)
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def task_of(b: int = 4, p: int = 7, groups: tuple[int, ...] = (0, 0, 1, 1), seed: int = 3) -> CircuitTask:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 40, (b, p), generator=g)
    corrupt = clean.clone()
    corrupt[:, 1:3] = torch.randint(0, 40, (b, 2), generator=g)
    positions = {"END": torch.full((b,), p - 1), "A": torch.randint(0, p - 1, (b,), generator=g)}
    batch = TaskBatch(clean, corrupt, positions, torch.randint(0, 40, (b,), generator=g),
                      torch.randint(0, 40, (b,), generator=g), torch.tensor(groups))
    return CircuitTask("test", (batch,), logit_diff_at("END"), "logit diff")


@pytest.fixture(scope="module")
def mha():
    return model_of()


@pytest.fixture(scope="module")
def gqa():
    return model_of(n_kv_heads=2, positional="rotary", seed=1)


def test_head_patching_equals_exact_patching_of_whole_heads(mha, gqa):
    for model in (mha, gqa):
        task = task_of()
        batch = task.batches[0]

        def metric(logits, batch=batch, task=task):
            return task.metric(logits, batch).mean()

        exact = exact_patching(model, batch.clean, batch.corrupt, metric, node="z", per_position=False)
        heads = [(2, 1), (0, 3), (1, 0), (0, 0)]
        ours = head_patching(model, task, heads)
        for row in ours.itertuples():
            assert row.effect == pytest.approx(float(exact.values[row.layer, row.head]), abs=TOL)


@torch.no_grad()
def reference_path(model, batch: TaskBatch, sender, receivers, metric):
    """One sender, plain hooks: freeze every head but the sender (corrupted), record the
    receivers' inputs, then put them back at their positions in a clean run."""
    L = model.cfg.n_layers
    zs = [act_name("z", layer) for layer in range(L)]
    _, clean = model.run_with_cache(batch.clean, names_filter=zs)
    _, corrupt = model.run_with_cache(batch.corrupt, names_filter=zs)
    recorded = {}

    def freeze(z, hook):
        z = clean[hook.name].clone()
        if hook.name == zs[sender[0]]:
            z[:, :, sender[1]] = corrupt[hook.name][:, :, sender[1]]
        return z

    def record(x, hook):
        recorded[hook.name] = x.clone()
        return x

    names = sorted({act_name(r.kind, r.layer) for r in receivers})
    model.run_with_hooks(batch.clean, fwd_hooks=[(n, freeze) for n in zs] + [(n, record) for n in names])
    hooks = []
    for r in receivers:
        name = act_name(r.kind, r.layer)
        rows = torch.arange(len(batch.clean))
        pos = batch.positions[r.position] if r.position else None

        def put(x, hook, r=r, name=name, pos=pos, rows=rows):
            x = x.clone()
            if pos is None:
                x[:, :, r.head] = recorded[name][:, :, r.head]
            else:
                x[rows, pos, r.head] = recorded[name][rows, pos, r.head]
            return x

        hooks.append((name, put))
    return metric(model.run_with_hooks(batch.clean, fwd_hooks=hooks), batch).mean() - metric(model(batch.clean), batch).mean()


def test_path_patching_equals_a_hand_written_one_sender_at_a_time(mha):
    task = task_of()
    receivers = [Receiver(2, 1, "q", "END"), Receiver(2, 3, "v", "A"), Receiver(1, 2, "k", None)]
    senders = [(0, 0), (0, 2), (1, 1), (1, 3), (2, 0)]
    ours = path_patching(mha, task, senders, receivers, max_copies=2)
    for row in ours.itertuples():
        if row.layer >= 2:
            assert row.effect == 0.0  # no path from the receivers' layer up
            continue
        # a sender in layer 1 reaches only the layer-2 receivers (the layer-1 key is its own layer's)
        ref = reference_path(mha, task.batches[0], (row.layer, row.head),
                             [r for r in receivers if r.layer > row.layer], task.metric)
        assert row.effect == pytest.approx(float(ref), abs=TOL)
    assert ours.effect.abs().max() > 1e-3  # the paths carry something on this random model


@pytest.mark.parametrize("kind", ["v", "k"])
@torch.no_grad()
def test_value_and_key_paths_on_grouped_query_heads_change_only_the_receiving_head(gqa, kind):
    task = task_of()
    batch = task.batches[0]
    receiver = Receiver(2, 1, kind, "A")  # key/value head 0, shared with query head 0
    sender = (0, 2)
    ours = path_patching(gqa, task, [sender], [receiver]).effect.iloc[0]
    # reference: the values (keys, after rotary) recorded under the frozen sender run are put into
    # the shared key/value head at the receiver's positions (run A, where every head of the group sees
    # them); then only the receiving head's output from run A is put into a clean run (run B)
    hook = "blocks.2.attn.hook_v" if kind == "v" else "blocks.2.attn.hook_rot_k"
    zs = [act_name("z", layer) for layer in range(3)]
    _, clean = gqa.run_with_cache(batch.clean, names_filter=zs)
    _, corrupt = gqa.run_with_cache(batch.corrupt, names_filter=zs)
    seen = {}

    def freeze(z, hook):
        z = clean[hook.name].clone()
        if hook.name == zs[0]:
            z[:, :, 2] = corrupt[hook.name][:, :, 2]
        return z

    gqa.run_with_hooks(batch.clean, fwd_hooks=[(n, freeze) for n in zs] + [(hook, lambda x, hook: seen.setdefault("x", x.clone()))])
    rows, pos = torch.arange(4), batch.positions["A"]

    def put(x, hook):
        x = x.clone()
        x[rows, pos, 0] = seen["x"][rows, pos, 0]
        return x

    with gqa.hooks(fwd_hooks=[(hook, put)]):
        _, run_a = gqa.run_with_cache(batch.clean, names_filter=zs[2])

    def put_z(z, hook):
        z = z.clone()
        z[:, :, 1] = run_a[zs[2]][:, :, 1]
        return z

    ref = (task.metric(gqa.run_with_hooks(batch.clean, fwd_hooks=[(zs[2], put_z)]), batch).mean()
           - task.metric(gqa(batch.clean), batch).mean())
    assert ours == pytest.approx(float(ref), abs=TOL)
    assert abs(ours) > 1e-4


@torch.no_grad()
def test_mean_ablation_against_hand_written_group_means(mha):
    task = task_of(groups=(0, 1, 0, 2))
    batch = task.batches[0]
    means = group_means(mha, task)
    assert ablated_metric(mha, task, all_heads(mha), means) == pytest.approx(float(clean_metric(mha, task).mean()),
                                                                           abs=TOL)
    zs = [act_name("z", layer) for layer in range(3)]
    _, corrupt = mha.run_with_cache(batch.corrupt, names_filter=zs)
    keep = {(1, 2), (2, 0)}

    def ablate(z, hook):
        layer = int(hook.name.split(".")[1])
        c = corrupt[hook.name]
        mean = torch.stack([(c[0] + c[2]) / 2, c[1], (c[0] + c[2]) / 2, c[3]])
        z = z.clone()
        for h in range(4):
            if (layer, h) not in keep:
                z[:, :, h] = mean[:, :, h]
        return z

    ref = task.metric(mha.run_with_hooks(batch.clean, fwd_hooks=[(n, ablate) for n in zs]), batch).mean()
    assert ablated_metric(mha, task, keep, means) == pytest.approx(float(ref), abs=TOL)


def test_the_circuit_of_every_head_is_faithful_and_complete(mha):
    task = task_of()
    classes = {h: ("a" if h[0] < 2 else "b") for h in all_heads(mha)}
    checks = circuit_checks(mha, task, classes, n_random_subsets=2, n_random_circuits=0)
    assert checks.faithfulness == pytest.approx(1.0, abs=TOL)
    assert checks.completeness.incompleteness.max() < TOL
    assert len(checks.minimality) == len(classes)
    # minimality of a head = what removing it costs once its class-mates are gone
    row = checks.minimality.iloc[0]
    layer, head = int(row["layer"]), int(row["head"])
    mates = [h for h in classes if classes[h] == classes[(layer, head)] and h != (layer, head)]
    means = group_means(mha, task)
    rest = [h for h in classes if h not in mates]
    expect = abs(ablated_metric(mha, task, rest, means) - ablated_metric(mha, task, [h for h in rest if h != (layer, head)],
                                                                         means))
    assert row.minimality == pytest.approx(expect, abs=TOL)
