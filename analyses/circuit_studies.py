"""`probe circuit TASK --model MODEL -o RUN`: record the task's prompts into a new run, find the
task's circuit in the model, and save it next to the run (tables for the dashboard, a summary
and a report). Tasks: ``ioi`` (`analyses.ioi_circuit`, any causal model whose tokenizer has enough
single-token names) and ``induction`` (`analyses.induction_circuit`, the shipped toy's task).

The model is loaded as TransformerLens's ``from_pretrained`` loads it (norms folded, writing
weights centred), so direct logit attributions add up; attention patterns, and so the run the
dashboard shows, are those of the unprocessed model up to float rounding.
"""

from __future__ import annotations

from pathlib import Path

from probe.errors import InputError

TASKS = ("ioi", "induction")
# what the dashboard shows of the prompts (patterns; the stream's norms): a run of every hook of SmolLM2
# on 64 prompts would be 1.3 GB for nothing the circuit view reads
RECORDED = ("blocks.*.attn.hook_pattern", "blocks.*.hook_resid_post")
MAX_IOI_PROMPTS = 256


def default_run(task: str, model_name: str) -> Path:
    """Where a study goes when no run is named: runs/circuit-TASK-MODEL (a checkpoint directory's
    own name)."""
    return Path("runs") / f"circuit-{task}-{Path(model_name).name}"


def circuit_study(task: str, model_name: str, out: str | Path, n_prompts: int | None = None, n_candidates: int = 40,
                  n_controls: int = 10, seed: int = 0, overwrite: bool = False, command: str | None = None,
                  progress=None) -> Path:
    """Run the study and return the report's path (RUN/circuit/report.md)."""
    from models import HookedTransformer
    from probe.recorder import record
    from probe.store import check_run_target

    if task not in TASKS:
        raise InputError(f"no circuit task {task!r}; the tasks are {', '.join(TASKS)}")
    for name, value, low in (("prompts", n_prompts, 1), ("candidates", n_candidates, 1), ("controls", n_controls, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise InputError(f"--{name} must be a whole number of at least {low}, got {value!r}")
    if task == "ioi" and n_prompts is not None and n_prompts > MAX_IOI_PROMPTS:
        raise InputError(f"--prompts: at most {MAX_IOI_PROMPTS} IOI prompts (the bundled set's size), got {n_prompts}")
    check_run_target(out, resume=False, overwrite=overwrite)  # before the model is loaded
    say = progress or (lambda line: None)
    say(f"loading {model_name} (weights processed as TransformerLens's from_pretrained)")
    model = HookedTransformer.from_pretrained(model_name).eval()
    if task == "ioi":
        from probe.ioi_prompts import ioi_prompts

        from .circuit_report import save_ioi_circuit
        from .ioi_circuit import ioi_circuit

        if not model.cfg.causal:
            raise InputError(f"{model_name} is not a causal language model; IOI asks for the next token")
        from .ioi_circuit import ioi_task

        prompts = ioi_prompts(n_prompts or 64, tokenizer=model.tokenizer)
        ioi_task(model, prompts)  # every prompt checked (names one token each, aligned versions) before a file is written
        say(f"recording the {len(prompts)} prompts into {out}")
        record(model, prompts, out, names=RECORDED, overwrite=overwrite, progress=False)
        circuit = ioi_circuit(model, prompts, n_candidates=n_candidates, n_controls=n_controls, seed=seed,
                              progress=say, model_name=model_name)
        return save_ioi_circuit(circuit, out, command)
    from .induction_circuit import induction_circuit, save_induction_circuit

    study = induction_circuit(model, n=n_prompts or 32, seed=seed, progress=say, model_name=model_name)
    say(f"recording {min(8, len(study.tokens))} of the sequences into {out}")
    record(model, [model.to_string(t) for t in study.tokens[:8]], out, names=RECORDED, overwrite=overwrite,
           progress=False)
    return save_induction_circuit(study, out, command)
