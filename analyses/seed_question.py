"""The seed question asked of a model, both twins at once: "The animal didn't cross the street
because it was tired / wide." Which heads attend from *it* to the noun the adjective makes its
referent, and, for a language model, which noun the model itself answers.

- **Attention** (as `analyses.word_attention`: to a word = the sum over its tokens, from a word =
  the mean over its tokens), per head, from the pronoun to each candidate in each twin's sentence,
  and, for a decoder, from the last token of the forcing prompt (below): the position that
  predicts the answer, which has read both the adjective and the question.
- **The model's answer** (decoders with an LM head only): the logit difference
  logit(" animal") - logit(" street") at the last position of the sentence followed by a
  continuation that asks for the referent, by default " The tired one was the" (" The wide one
  was the" for the other twin). Both answers must be one token (`HookedTransformer.to_single_token`).
  An encoder without an LM head predicts no token: it gets no answer, and says why.

A head (or the model) *follows the adjective* when it prefers the gold noun in both twins. The
baseline that could fool a one-sentence reading is a preference for the same noun in both
twins (a noun, or a position, not the adjective): the tired twin alone cannot tell the two apart.
In a causal model the pronoun comes before the adjective, so its attention is the same in both
twins and no head can follow the adjective there (`SeedQuestion.pronoun_twin_difference` says how
close to equal they came).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from analyses.word_attention import find_word, word_token_spans
from models import HookedTransformer
from probe.errors import InputError
from probe.head_labels import check_top, head_label
from probe.prompts import Prompt, PromptSource, load_prompts

CONTINUATION = " The {variant} one was the"  # appended to each twin's sentence; {variant}: the twin's adjective
SITES = ("pronoun", "answer")  # where attention is read from: the pronoun, the forcing prompt's last token


@dataclass(frozen=True, eq=False)
class Twin:
    """One twin's measurements. Attention arrays are [layer, head, candidate], candidates in the
    order of `SeedQuestion.candidates`."""

    variant: str  # the adjective ("tired")
    sentence: str
    antecedent: str  # the gold referent of the pronoun ("animal")
    pronoun_attention: np.ndarray  # from the pronoun (a decoder's read in the prompt: the same as in the sentence)
    prompt: str | None = None  # sentence + forcing continuation (decoders)
    answer_attention: np.ndarray | None = None  # from the prompt's last token
    logit_diff: float | None = None  # logit(answers[0]) - logit(answers[1]) after the prompt
    answer_probs: tuple[float, float] | None = None  # p(answers[0]), p(answers[1]) after the prompt
    last_token: str | None = None  # the prompt's last token, where the answer is read
    top_token: str | None = None  # the model's own most likely next token after the prompt
    top_prob: float | None = None


@dataclass(frozen=True, eq=False)
class SeedQuestion:
    model_name: str
    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    pronoun: str  # "it"
    candidates: tuple[str, str]  # ("animal", "street"), in order of appearance
    answers: tuple[str, str] | None  # (" animal", " street"): the answer tokens; None without an answer
    twins: tuple[Twin, Twin]
    causal: bool  # a decoder: its pronoun cannot see the adjective
    no_answer: str | None = None  # why the model gives no answer (an encoder without an LM head)

    def gold(self, twin: Twin) -> int:
        return self.candidates.index(twin.antecedent)

    @property
    def follows_adjective(self) -> bool | None:
        """The model's answer prefers the gold noun in both twins (None: no answer)."""
        if self.no_answer is not None:
            return None
        return all((t.logit_diff > 0) == (self.gold(t) == 0) and t.logit_diff != 0 for t in self.twins)

    @property
    def pronoun_twin_difference(self) -> float:
        """The largest difference between the twins' attention from the pronoun, over heads and
        candidates (0 up to float rounding in a causal model: the pronoun cannot see the adjective)."""
        a, b = (t.pronoun_attention for t in self.twins)
        return float(np.abs(a - b).max())

    def heads(self, site: str = "pronoun"):
        """[layer, head] table of one site ("pronoun" or "answer"): the attention to each candidate
        in each twin (columns VARIANT_CANDIDATE), each twin's margin (gold minus the other noun),
        the verdict ("follows": the gold noun in both twins; "same noun": one noun in both;
        "against": the wrong noun in both; "tie": an exact tie in a twin) and the noun preferred
        when it is the same in both."""
        import pandas as pd

        if site not in SITES:
            raise InputError(f"site must be one of {', '.join(SITES)}, not {site!r}")
        arrays = [t.pronoun_attention if site == "pronoun" else t.answer_attention for t in self.twins]
        if any(a is None for a in arrays):
            raise InputError(f"{self.model_name} has no answer position: {self.no_answer}")
        layer, head = np.meshgrid(np.arange(self.n_layers), np.arange(self.n_heads), indexing="ij")
        table = {"layer": layer.ravel(), "head": head.ravel(),
                 "label": [head_label(la, h) for la, h in zip(layer.ravel(), head.ravel())]}
        margins, prefs = [], []
        for twin, att in zip(self.twins, arrays):
            for c, cand in enumerate(self.candidates):
                table[f"{twin.variant}_{cand}"] = att[:, :, c].ravel()
            g = self.gold(twin)
            margin = (att[:, :, g] - att[:, :, 1 - g]).ravel()
            table[f"{twin.variant}_margin"] = margin
            margins.append(margin)
            first = att[:, :, 0].ravel() > att[:, :, 1].ravel()
            prefs.append(np.where(margin == 0, -1, np.where(first, 0, 1)))
        m0, m1 = margins
        verdict = np.select([(m0 > 0) & (m1 > 0), (m0 < 0) & (m1 < 0), (m0 == 0) | (m1 == 0)],
                            ["follows", "against", "tie"], "same noun")
        table["verdict"] = verdict
        table["same_noun"] = [self.candidates[p] if v == "same noun" else "" for p, v in zip(prefs[0], verdict)]
        # how firmly a head holds its verdict in both twins: the smaller margin toward what it prefers
        table["strength"] = np.where(verdict == "follows", np.minimum(m0, m1),
                                     np.where(verdict == "against", np.minimum(-m0, -m1),
                                              np.minimum(np.abs(m0), np.abs(m1))))
        return pd.DataFrame(table)


def seed_question(model: HookedTransformer, prompts: PromptSource = "seed",
                  continuation: str = CONTINUATION) -> SeedQuestion:
    """Both twins of a contrast pair (default: the bundled ``seed`` pair), measured on ``model``.

    ``prompts``: exactly two prompts with the coreference labels of `probe.prompts` (``pronoun``,
    ``candidates``, ``antecedent``, ``variant``), one-word mentions (their first occurrence is
    used), the same candidates, different antecedents. ``continuation``: appended to each
    sentence to ask for the referent; ``{variant}`` stands for the twin's variant label (the
    adjective). Works for any model; only a causal model with an LM head gets an answer."""
    twins_in = _twin_prompts(load_prompts(prompts))
    cfg = model.cfg
    pronoun, candidates = twins_in[0].labels["pronoun"], tuple(twins_in[0].labels["candidates"])
    no_answer = None
    if not cfg.causal:
        no_answer = (f"{cfg.model_name} is an encoder" + ("" if cfg.has_unembed else " without a language-model head")
                     + ": it predicts no next token, so it has no answer to measure")
    elif not cfg.has_unembed:
        no_answer = f"{cfg.model_name} has no language-model head: it predicts no token, so it has no answer to measure"
    answers = ids = None
    if no_answer is None:
        answers = tuple(" " + c for c in candidates)
        ids = [model.to_single_token(a) for a in answers]
    twins = []
    for p in twins_in:
        variant = str(p.labels["variant"])
        # A decoder reads the sentence and the question in one pass (its attention from the pronoun
        # cannot see what follows, so it is the sentence's); an encoder reads the sentence alone.
        text = p.text if no_answer else p.text + continuation.format(variant=variant)
        twins.append(Twin(variant=variant, sentence=p.text, antecedent=p.labels["antecedent"],
                          **_measure(model, text, pronoun, candidates, ids)))
    return SeedQuestion(model_name=cfg.model_name, family=cfg.family, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                        n_kv_heads=cfg.n_kv_heads, pronoun=pronoun, candidates=candidates, answers=answers,
                        twins=tuple(twins), causal=cfg.causal, no_answer=no_answer)


def _twin_prompts(prompts: list[Prompt]) -> list[Prompt]:
    if len(prompts) != 2:
        raise InputError(f"the seed question takes one contrast pair, two prompts; got {len(prompts)}")
    need = ("pronoun", "candidates", "antecedent", "variant")
    for p in prompts:
        missing = [k for k in need if k not in p.labels]
        if missing:
            raise InputError(f"prompt {p.text!r} lacks the label(s) {', '.join(missing)} (need {', '.join(need)})")
        if len(p.labels["candidates"]) != 2 or p.labels["antecedent"] not in p.labels["candidates"]:
            raise InputError(f"prompt {p.text!r}: 'candidates' must be two mentions, the 'antecedent' one of them")
    a, b = (p.labels for p in prompts)
    if list(a["candidates"]) != list(b["candidates"]) or a["pronoun"] != b["pronoun"]:
        raise InputError("the two twins must share the pronoun and the candidates")
    if a["antecedent"] == b["antecedent"]:
        raise InputError(f"both twins' antecedent is {a['antecedent']!r}: twins that do not flip the referent "
                         "cannot tell following the text from preferring a noun")
    return prompts


@torch.no_grad()
def _measure(model: HookedTransformer, text: str, pronoun: str, candidates, ids) -> dict:
    """One forward pass over ``text``: attention from the pronoun (the mean over its tokens) and,
    with answer ids, from the last token, to each candidate (the sum over its tokens), counted as
    `analyses.word_attention.word_to_word_attention` counts them; then, at the last position, the
    logit difference, the answers' probabilities and the model's own top token."""
    words, spans = word_token_spans(model, text)
    q, keys = spans[find_word(words, pronoun)], [spans[find_word(words, c)] for c in candidates]
    logits, cache = model.run_with_cache(text, names_filter="blocks.*.attn.hook_pattern")
    patterns = torch.stack([cache["pattern", layer][0] for layer in range(model.cfg.n_layers)]).float()  # [l, h, q, k]
    out = dict(pronoun_attention=torch.stack([patterns[:, :, q][:, :, :, k].sum(-1).mean(-1) for k in keys], -1)
               .cpu().numpy())
    if ids is None:
        return out
    last = logits[0, -1].float()
    probs = last.softmax(-1)
    top = int(last.argmax())
    out.update(prompt=text, last_token=model.to_str_tokens(text)[-1],
               answer_attention=torch.stack([patterns[:, :, -1, k].sum(-1) for k in keys], -1).cpu().numpy(),
               logit_diff=float(last[ids[0]] - last[ids[1]]), answer_probs=(float(probs[ids[0]]), float(probs[ids[1]])),
               top_token=model.tokenizer.decode([top]), top_prob=float(probs[top]))
    return out


# ---------------------------------------------------------------------------------- prose
def render_seed_question(q: SeedQuestion, top: int = 3, width: int = 100) -> str:
    """What was measured, in plain sentences (wrapped at ``width``): the model's answer in each
    twin and whether it follows the adjective; per site, how many heads prefer the gold noun in
    both twins against the same noun in both, with the ``top`` firmest of each."""
    check_top(top)
    say = _sayer(width)
    kv = f", {q.n_kv_heads} key/value heads" if q.n_kv_heads != q.n_heads else ""
    lines = say(f"{q.model_name} ({q.family}, {q.n_layers} layers x {q.n_heads} heads{kv}), the two twins: "
                + "; ".join(f"'{t.variant}' (it = {t.antecedent})" for t in q.twins))
    lines.append("")
    if q.no_answer is not None:
        lines += say(f"the model's answer: none. {q.no_answer}.")
    else:
        a0, a1 = q.answers
        lines += say(f"the model's answer: logit({a0!r}) - logit({a1!r}) after each twin's forcing continuation "
                     f"(> 0: it prefers {a0!r}):")
        for t in q.twins:
            lines.append(f"  {t.prompt!r}")
            lines.append(f"      {t.logit_diff:+.2f}   p({a0!r}) {_p(t.answer_probs[0])}, p({a1!r}) "
                         f"{_p(t.answer_probs[1])}; its own top token {t.top_token!r} ({_p(t.top_prob)})")
        lines += say(_answer_verdict(q), "  ")
        held = [sum(t.answer_probs) for t in q.twins]
        if max(held) < 0.5:
            lines += say(f"the two answers together hold {' and '.join(f'{h:.3f}' for h in held)} of the "
                         "next-token probability: the continuation asks for the referent but does not force it, "
                         "and the difference compares two continuations the model finds unlikely.", "  ")
    lines.append("")
    lines += _site_lines(q, "pronoun", top, say)
    if q.no_answer is None:
        lines.append("")
        lines += _site_lines(q, "answer", top, say)
    return "\n".join(lines)


def _p(p: float) -> str:
    """A probability: three decimals, or two significant digits below 0.001 (not a bare 0.000)."""
    return f"{p:.3f}" if p >= 0.001 or p == 0 else f"{p:.1e}"


def _sayer(width: int):
    import textwrap

    def say(text: str, indent: str = "") -> list[str]:
        return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent + "  ")

    return say


def _answer_verdict(q: SeedQuestion) -> str:
    t0, t1 = q.twins
    a = q.answers
    pref = [a[0] if t.logit_diff > 0 else a[1] if t.logit_diff < 0 else None for t in q.twins]
    shift = t1.logit_diff - t0.logit_diff
    moved = (f"from '{t0.variant}' to '{t1.variant}' the difference moves by {shift:+.2f}"
             + (f", toward {a[1]!r}" if shift < 0 else f", toward {a[0]!r}" if shift > 0 else ""))
    if None in pref:
        return f"the model is indifferent between the two in a twin (a difference of exactly 0); {moved}."
    if q.follows_adjective:
        return (f"its answer follows the adjective: it prefers {pref[0]!r} after '{t0.variant}' and {pref[1]!r} "
                f"after '{t1.variant}'; {moved}.")
    if pref[0] == pref[1]:
        return (f"it prefers {pref[0]!r} in both twins: its answer does not follow the adjective; {moved}, "
                "without crossing zero.")
    return (f"its preference flips against the adjective: {pref[0]!r} after '{t0.variant}', {pref[1]!r} after "
            f"'{t1.variant}'; {moved}.")


def _site_lines(q: SeedQuestion, site: str, top: int, say) -> list[str]:
    table = q.heads(site)
    counts = table.verdict.value_counts()
    same = table[table.verdict == "same noun"]
    by_noun = ", ".join(f"{c} {int((same.same_noun == c).sum())}" for c in q.candidates)
    t0, t1 = q.twins
    c0, c1 = q.candidates
    if site == "pronoun":
        lines = say(f"attention from {q.pronoun!r} to {c0!r} / {c1!r}, per head:")
        if q.causal:
            lines += say(f"the same in both twins (largest difference {q.pronoun_twin_difference:.1e}): in a causal "
                         f"model {q.pronoun!r} comes before the adjective and cannot see it, so no head's attention "
                         f"from {q.pronoun!r} can follow the adjective.", "  ")
    else:
        lines = say(f"attention from the last token ({t0.last_token!r}, which predicts the answer and has read the "
                    f"adjective) to {c0!r} / {c1!r}, per head:")
    lines += say(f"{int(counts.get('follows', 0))} of {len(table)} heads give the right noun more attention than the "
                 f"other (however little more) in both twins; {int(counts.get('same noun', 0))} prefer the same noun "
                 f"in both ({by_noun}: a noun or position preference, not the adjective); "
                 f"{int(counts.get('against', 0))} the wrong noun in both"
                 + (f"; {int(counts['tie'])} tie in a twin" if counts.get("tie", 0) else "") + ".", "  ")

    def row(r) -> str:
        return (f"    {r.label:<6} {t0.variant}: {c0} {r[f'{t0.variant}_{c0}']:.3f} / {c1} {r[f'{t0.variant}_{c1}']:.3f}"
                f"   {t1.variant}: {c0} {r[f'{t1.variant}_{c0}']:.3f} / {c1} {r[f'{t1.variant}_{c1}']:.3f}"
                f"   strength {r.strength:.3f}")

    follows = table[table.verdict == "follows"].sort_values("strength", ascending=False).head(top)
    if len(follows):
        lines.append("  the right noun in both twins, firmest first (strength: the smaller of its two margins):")
        lines += [row(r) for _, r in follows.iterrows()]
    if len(same):
        lines.append("  the same noun in both twins, firmest first (each looks right on one twin alone):")
        lines += [row(r) for _, r in same.sort_values("strength", ascending=False).head(top).iterrows()]
    return lines
