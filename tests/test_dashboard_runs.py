"""Small real runs for the dashboard tests (imported by test_dashboard_callbacks.py and
test_dashboard_e2e.py), recorded from the shipped toy-coref model with every analysis the
dashboard shows saved next to them; and a check that they are what those tests assume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

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


def test_coref_run_has_every_analysis(tmp_path):
    run = record_coref_run(tmp_path / "run", n=12)
    names = {p.name for p in (run / "analyses").rglob("*.csv")}
    assert names >= {"ablation_coref.csv", "coref_heads.csv", "head_metrics.csv", "patch_heads.csv",
                     "patch_resid.csv", "probes_answer.csv"}
