"""What each view shows for a state: the figures and messages of the active view, the
all-heads grid, the prompt's tokens and the prompt picker's options. Plain functions of a
`Registry` and a `ViewState` (no Dash callbacks here), so tests call them directly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from dash import dcc, html, no_update

from analyses.results import (
    ABLATION,
    CIRCUIT_ATTRIBUTION,
    CIRCUIT_EDGES,
    CIRCUIT_HEADS,
    COREF,
    HEAD_METRICS,
    PATCH_HEADS,
    PATCH_RESID,
    PROBES,
    ResultKind,
)
from probe.head_labels import head_label

from . import figures
from .data import READ_ERRORS, Registry, RunData, error_message
from .state import THUMBNAILS, ViewState

HIDDEN, SHOWN = {"display": "none"}, {"display": "block"}
GRAPH_CONFIG = {"displaylogo": False, "scrollZoom": True}


def default_x(cols: list[str]) -> str:
    return "induction" if "induction" in cols else cols[0]


def default_y(cols: list[str], x: str) -> str:
    """A causal result when there is one (the point of the scatter), else another metric."""
    causal = [c for c in cols if c.startswith(("ablation", "patch")) or c == "coref_accuracy"]
    return next((c for c in causal + cols if c != x), x)


# ----------------------------------------------------------------------- view bodies
def _missing(kind: ResultKind) -> html.Div:
    """What a run lacks and the command that computes it, both from the registry of kinds."""
    return html.Div([f"No {kind.description} saved for this run yet. Compute it with ", html.Code(kind.produce), "."],
                    className="missing")


def head_card(data: RunData, layer: int, head: int) -> html.Div:
    """The selected head's numbers from every per-head analysis table."""
    values = data.head_values(layer, head)
    if not data.head_columns():
        kv = _kv_note(data, head)
        return html.Div([html.B(head_label(layer, head)), *kv, _missing(HEAD_METRICS)]) if kv else \
            _missing(HEAD_METRICS)
    rows = [html.Tr([html.Td(name), html.Td(f"{v:.3f}")]) for name, v in values.items() if np.isfinite(v)]
    return html.Div([html.B(head_label(layer, head)), *_kv_note(data, head), html.Table(rows, className="card")])


def kv_label(data: RunData, head: int) -> str:
    """The key/value head query head ``head`` attends with, and the heads sharing it."""
    kv = data.kv_head(head)
    return figures.kv_head_text(kv, data.query_heads(kv))


def _kv_note(data: RunData, head: int) -> list:
    """Under grouped-query attention, which K/V head the selected head uses; nothing otherwise."""
    if data.n_kv_heads == data.n_heads:
        return []
    return [html.Span(f" uses {kv_label(data, head)}", className="kv-head")]


def head_pattern_figure(data: RunData, s: ViewState):
    """The selected head's [query, key] pattern on the selected prompt (the head view's
    heatmap; the circuit view shows it for the head clicked there)."""
    pattern = data.pattern(s.prompt, s.layer, s.head, s.attention)
    tokens, keys = data.query_tokens(s.prompt, s.attention), _other_keys(data, s)
    window = figures.crop_window(len(tokens), focus=list(s.queries), start=s.window)
    title = f"{_attention_label(data, s)}{head_label(s.layer, s.head)} on prompt {s.prompt}"
    return figures.head_heatmap(pattern, tokens, title, window, list(s.queries), key_tokens=keys)


def _attention_label(data: RunData, s: ViewState) -> str:
    """"cross-attention " etc. on an encoder-decoder run; nothing on the others."""
    attention = data.attention_of(s.attention)
    return {"": "", "encoder": "encoder ", "decoder": "decoder ", "cross": "cross-attention "}[attention]


def _other_keys(data: RunData, s: ViewState) -> list[str] | None:
    """Cross-attention's keys (the source), which are not its queries' tokens; None otherwise."""
    return data.key_tokens(s.prompt, s.attention) if data.attention_of(s.attention) == "cross" else None


def view_head(data: RunData, s: ViewState) -> dict[str, Any]:
    pattern = data.pattern(s.prompt, s.layer, s.head, s.attention)
    tokens, keys = data.query_tokens(s.prompt, s.attention), _other_keys(data, s)
    window = figures.crop_window(len(tokens), focus=list(s.queries), start=s.window)
    out = {"head-heatmap": head_pattern_figure(data, s),
           "head-lines": figures.line_view(pattern, tokens, list(s.queries), window=window, key_tokens=keys),
           "head-card": head_card(data, s.layer, s.head)}
    # without selected queries the bar is hidden, not redrawn: every Plotly draw costs the browser
    out["head-summed"] = figures.summed_bar(pattern, tokens, list(s.queries), keys) if s.queries else no_update
    out["head-summed-style"] = SHOWN if s.queries else HIDDEN
    return out


def view_layer(data: RunData, s: ViewState) -> dict[str, Any]:
    tokens = data.query_tokens(s.prompt, s.attention)
    kv_heads = [data.kv_head(h) for h in range(data.n_heads)]
    out = {"layer-view": figures.layer_view(data.layer_patterns(s.prompt, s.layer, s.attention), tokens, s.layer,
                                            s.head, kv_heads=kv_heads)}
    if data.attentions:  # the residual norms below read the decoder-only blocks' stream
        out["resid-norm"] = figures.message_figure("residual norms are not drawn for encoder-decoder runs yet")
        return out
    norms = data.residual_norms(s.prompt)
    out["resid-norm"] = figures.residual_norms(norms[0], tokens, norms[1]) if norms else figures.message_figure(
        "no residual stream recorded; record it with `probe record ... --names 'blocks.*.hook_resid_post'`")
    return out


def view_metrics(data: RunData, s: ViewState) -> dict[str, Any]:
    cols = data.head_columns()
    if not cols:
        return {"scatter": figures.message_figure(f"no per-head results yet: run `{HEAD_METRICS.produce}`"),
                "metrics-msg": html.Div([*_problems(data), _missing(HEAD_METRICS)])}
    x = s.x if s.x in cols else default_x(list(cols))
    y = s.y if s.y in cols else default_y(list(cols), x)
    notes = _problems(data) + ([] if data.tables_of(ABLATION) else [_missing(ABLATION)])
    return {"scatter": figures.metrics_scatter(cols, x, y, (s.layer, s.head)), "metrics-msg": html.Div(notes)}


def _problems(data: RunData) -> list[html.Div]:
    return [html.Div(why, className="missing", style={"color": "#a00"}) for why in data.table_problems()]


def _direction(table) -> str:
    """How to read a patching table's normalised value: the two directions read differently."""
    directions = set(table["direction"]) if "direction" in table.columns else {"denoise"}
    if directions == {"noise"}:
        return "noising, normalised (1 = no damage, 0 = as corrupted)"
    if directions == {"denoise"}:
        return "denoising, normalised (1 = fully restored, 0 = as corrupted)"
    return "normalised"


def view_results(data: RunData, s: ViewState) -> dict[str, Any]:
    parts: list[Any] = _problems(data)

    def graph(fig, kind: str, name: str):
        # a pattern-matching id: app.sync_state hears clicks on however many of these there are
        return dcc.Graph(figure=fig, config=GRAPH_CONFIG, id={"type": "result", "kind": kind, "name": name})

    probes = data.tables_of(PROBES)
    parts += [graph(figures.probe_curves(t.table, t.name, s.layer), "probe", t.name) for t in probes] \
        or [_missing(PROBES)]
    sel = (s.layer, s.head)
    ablations = data.tables_of(ABLATION)
    parts += [graph(figures.layer_head_heatmap(t.table, "effect", f"{t.name}: effect of ablating each head "
                                               "(ablated - clean)", sel), "head", t.name) for t in ablations] \
        or [_missing(ABLATION)]
    heads = data.tables_of(PATCH_HEADS)
    parts += [graph(figures.layer_head_heatmap(t.table, "normalized", f"{t.name}: head patching, {_direction(t.table)}",
                                               sel), "head", t.name) for t in heads] \
        or [_missing(PATCH_HEADS)]
    resid = data.tables_of(PATCH_RESID)
    parts += [graph(figures.layer_position_heatmap(t.table, "normalized", f"{t.name}: residual patching "
                                                   f"[layer, position], {_direction(t.table)}"), "layer", t.name)
              for t in resid] \
        or [_missing(PATCH_RESID)]
    coref = data.tables_of(COREF)
    parts += [graph(figures.layer_head_heatmap(t.table, "accuracy", f"{t.name}: antecedent accuracy per head", sel,
                                               diverging=False), "head", t.name) for t in coref] \
        or [_missing(COREF)]
    return {"results": parts}


SUMMARY_KEYS = ("task", "model", "metric", "clean_metric", "faithfulness")  # a circuit's headline, in this order


def _summary_value(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int | float):
        return f"{v:.4g}" if np.isfinite(v) else "n/a"
    return str(v)[:80]


def summary_text(summary: dict[str, Any], most: int = 12) -> str:
    """The headline of RUN/circuit/summary.json as one line: task, model, metric, clean
    metric and faithfulness first (null as n/a), then its other plain values (lists and
    objects left out), at most ``most`` in all."""
    keys = [k for k in SUMMARY_KEYS if k in summary] + [
        k for k, v in summary.items() if k not in SUMMARY_KEYS and (v is None or isinstance(v, str | int | float))]
    return "; ".join(f"{k}: {_summary_value(summary[k])}" for k in keys[:most])


def circuit_head_card(heads: pd.DataFrame | None, attribution: pd.DataFrame | None, layer: int,
                      head: int) -> html.Div:
    """The selected head in the circuit: its class, evidence, and attribution per position."""
    parts: list[Any] = [html.B(head_label(layer, head))]
    if heads is not None:
        row = heads[(heads["layer"] == layer) & (heads["head"] == head)]
        if len(row):
            r = row.iloc[0]
            cls = figures.head_class(r["head_class"]) or "no class"
            inside = "in the circuit" if figures.is_true(r["in_circuit"]) else "not in the circuit"
            evidence = [f"{c} {float(r[c]):.3g}" for c in figures.evidence_columns(heads) if np.isfinite(float(r[c]))]
            parts.append(html.Span(f": {cls}, {inside}" + (f"; {', '.join(evidence)}" if evidence else "")))
    if attribution is not None:
        rows = attribution[(attribution["layer"] == layer) & (attribution["head"] == head)]
        cols = [c for c in ("atp", "atp_star", "exact") if c in rows.columns]
        if len(rows):
            cell = lambda v: f"{v:+.3g}" if np.isfinite(v) else "-"  # noqa: E731
            parts.append(html.Table(
                [html.Tr([html.Th("position"), *[html.Th(c) for c in cols]])]
                + [html.Tr([html.Td(str(r["position"])), *[html.Td(cell(float(pd.to_numeric(r[c], errors="coerce"))))
                                                           for c in cols]]) for _, r in rows.iterrows()],
                className="card"))
    return html.Div(parts, className="circuit-head")


def view_circuit(data: RunData, s: ViewState) -> dict[str, Any]:
    """The circuit `probe circuit` saved beside the run: its headline (RUN/circuit/
    summary.json), the heads by class with the paths between them, AtP* against exact
    patching per head, and the selected head's pattern on the selected prompt. A click on
    a head in any of the figures selects it."""
    parts: list[Any] = _problems(data)
    heads, edges, attribution = (data.circuit_table(k) for k in (CIRCUIT_HEADS, CIRCUIT_EDGES, CIRCUIT_ATTRIBUTION))
    summary, why = data.circuit_summary()
    if why:
        parts.append(html.Div(why, className="missing", style={"color": "#a00"}))
    if summary:
        parts.append(html.Div(summary_text(summary), className="circuit-summary"))
    if heads is None and edges is None and attribution is None:
        return {"circuit": parts + [_missing(CIRCUIT_HEADS)]}
    L, H = data.n_layers, data.n_heads
    sel = (s.layer, s.head)

    def graph(fig, kind: str, name: str, **style):
        # a pattern-matching id: app.sync_state hears clicks on each ("graph": customdata; "head": x, y)
        return dcc.Graph(figure=fig, config=GRAPH_CONFIG, id={"type": "circuit", "kind": kind, "name": name},
                         style=style)

    if heads is not None or edges is not None:
        table = heads.table if heads is not None else pd.DataFrame(
            {"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L), "head_class": "",
             "in_circuit": False})
        parts.append(graph(figures.circuit_graph(table, edges.table if edges is not None else None, L, H, sel),
                           "graph", "circuit"))
    if heads is None:
        parts.append(_missing(CIRCUIT_HEADS))
    if edges is None:
        parts.append(_missing(CIRCUIT_EDGES))
    elif not len(edges.table):
        parts.append(html.Div(f"{edges.name}: no paths were saved (path patching found none, or was not run).",
                              className="missing"))
    if attribution is None:
        parts.append(_missing(CIRCUIT_ATTRIBUTION))
    else:
        maps = figures.attribution_maps(attribution.table)
        side = {"flex": "1 1 0", "minWidth": "260px"}
        name = attribution.name
        parts.append(html.Div([
            graph(figures.circuit_map(maps, "atp_star", "AtP* (estimated |effect|)", sel, (L, H), diverging=False),
                  "head", "atp_star", **side),
            graph(figures.circuit_map(maps, "exact", "exact patching (blank: not measured)", sel, (L, H)),
                  "head", "exact", **side),
            graph(figures.circuit_map(maps, "difference", "AtP* - |exact|", sel, (L, H)), "head", "difference",
                  **side),
        ], style={"display": "flex", "flexWrap": "wrap", "gap": "8px"}))
        parts.append(html.Div(f"{name}: whole heads (position \"all\"); AtP*'s estimate of each head's effect size "
                              "against the size exact patching measured (blank where the head was not measured).",
                              style={"fontSize": "12px", "color": "#555"}))
    parts.append(circuit_head_card(heads.table if heads is not None else None,
                                   attribution.table if attribution is not None else None, s.layer, s.head))
    if why := data.missing_patterns():
        parts.append(html.Div(why, className="missing"))
    elif data.n_prompts == 0:
        parts.append(html.Div("no prompts published yet; press Refresh while the run is being recorded",
                              className="missing"))
    else:
        parts.append(dcc.Graph(figure=head_pattern_figure(data, s), config=GRAPH_CONFIG, id="circuit-pattern"))
    return {"circuit": parts}


def view_qk(data: RunData, s: ViewState) -> dict[str, Any]:
    vectors = data.qk_vectors(s.layer, s.head, include=s.prompt)
    if vectors is None:
        return {"qk": figures.message_figure("this run has no query/key vectors for this layer"),
                "qk-msg": html.Div(["Record them with ", html.Code(
                    "probe record --model MODEL --prompts PROMPTS -o RUN --names 'blocks.*.attn.hook_q' "
                    "'blocks.*.attn.hook_k' 'blocks.*.attn.hook_pattern'"), "."], className="missing")}
    label = kv_label(data, s.head)
    fig = figures.qk_pca(vectors["q"], vectors["k"], vectors["tokens"], vectors["prompt"], s.layer, s.head,
                         highlight_prompt=s.prompt, kv_label=label)
    n_prompts = len(set(vectors["prompt"].tolist()))
    notes = [f"{len(vectors['q'])} tokens of {n_prompts} prompts spread over the run (all of them for a small run); "
             "the selected prompt's points are larger."]
    if data.n_kv_heads != data.n_heads:
        kv = data.kv_head(s.head)
        heads = data.query_heads(kv)
        notes.append(f"Grouped-query attention ({data.n_heads} query heads, {data.n_kv_heads} key/value heads): "
                     f"the queries of head {s.head} (hook_q[:, {s.head}]) with the keys of K/V head {kv} "
                     f"(hook_k[:, {kv}]), which heads {heads[0]}-{heads[-1]} share.")
    if data.rotary:
        notes.append("hook_q and hook_k are before rotary positions are applied; the attention scores are "
                     "dot products of their rotated versions (hook_rot_q, hook_rot_k).")
    return {"qk": fig, "qk-msg": html.Div([html.Div(n) for n in notes])}


def default_compare(data: RunData, prompt: int) -> int:
    """The prompt a comparison defaults to: the prompt's twin (same pair_id), else the next."""
    twin = data.twin(prompt)
    return twin if twin is not None else (prompt + 1 if prompt + 1 < data.n_prompts else 0)


def view_compare(data: RunData, s: ViewState) -> dict[str, Any]:
    other = s.compare if s.compare is not None else default_compare(data, s.prompt)
    pa, pb = data.pattern(s.prompt, s.layer, s.head), data.pattern(other, s.layer, s.head)
    ta, tb = data.str_tokens(s.prompt), data.str_tokens(other)
    wa, wb = figures.crop_window(len(ta), start=s.window), figures.crop_window(len(tb), start=s.window)
    fig = figures.compare_heads(pa[wa[0]:wa[1], wa[0]:wa[1]], pb[wb[0]:wb[1], wb[0]:wb[1]], ta[wa[0]:wa[1]],
                                tb[wb[0]:wb[1]], f"{head_label(s.layer, s.head)}: prompt {s.prompt} (A) and prompt {other} (B)")
    texts = data.prompts()
    return {"compare-graph": fig, "compare-msg": html.Div([html.Div(f"A: {texts[s.prompt]}"),
                                                          html.Div(f"B: {texts[other]}")])}


VIEW_FUNCS: dict[str, Callable[[RunData, ViewState], dict[str, Any]]] = {
    "head": view_head, "layer": view_layer, "metrics": view_metrics, "results": view_results, "qk": view_qk,
    "compare": view_compare, "circuit": view_circuit}
NEEDS_PATTERNS = {"head", "layer", "compare"}
ENCODER_DECODER_VIEWS = {"head", "layer", "metrics"}  # the views that take an attention switch


def render_view(registry: Registry, s: ViewState) -> tuple[dict[str, Any], str | None]:
    """The active view's outputs, or a message saying why it cannot be shown."""
    try:
        data = registry.get(s.run)
        if data.error:
            return {}, data.error
        if data.attentions and s.view not in ENCODER_DECODER_VIEWS:
            return {}, (f"the {s.view} view does not take encoder-decoder runs yet; the head, layer and head-metrics "
                        "views do (switch encoder / decoder / cross above)")
        if s.view in NEEDS_PATTERNS and (why := data.missing_patterns(s.attention)):
            return {}, why
        if data.n_prompts == 0 and s.view not in ("metrics", "results", "circuit"):
            return {}, f"run {data.label} has no published prompts yet; press Refresh while it is being recorded"
        return VIEW_FUNCS[s.view](data, s), None
    except READ_ERRORS as e:
        return {}, error_message(e)


def grid_figure(registry: Registry, s: ViewState):
    """The all-heads grid: thumbnails of the prompt's patterns, or one metric per head."""
    try:
        data = registry.get(s.run)
        if data.error:
            return figures.message_figure(data.error)
        if s.metric and s.metric != THUMBNAILS:
            cols = data.head_columns()
            if s.metric not in cols:
                return figures.message_figure(f"no metric {s.metric!r} saved for this run")
            n_layers = max([data.n_layers_of(a) for a in data.attentions] or [data.n_layers])
            values = np.full((n_layers, data.n_heads), np.nan)
            for (layer, head), v in cols[s.metric].items():
                if 0 <= layer < n_layers and 0 <= head < data.n_heads:
                    values[int(layer), int(head)] = v
            fig = figures.grid_metric(values, s.metric)
        else:
            if why := data.missing_patterns(s.attention):
                return figures.message_figure(why)
            if data.n_prompts == 0:
                return figures.message_figure("no prompts published yet")
            fig = figures.grid_thumbnails(data.all_patterns(s.prompt, s.attention))
        fig.update_layout(shapes=figures.grid_selection(s.layer, s.head))
        return fig
    except READ_ERRORS as e:
        return figures.message_figure(error_message(e))


def token_checklist(registry: Registry, s: ViewState) -> tuple[list[dict], str, str]:
    """The prompt's tokens as selectable query positions, its text, and its labels."""
    try:
        data = registry.get(s.run)
        if data.error or data.n_prompts == 0:
            return [], "", ""
        tokens = data.query_tokens(s.prompt, s.attention)  # the target's, for the decoder and cross-attention
        labels = data.labels(s.prompt)
        shown = ", ".join(f"{k}: {v}" for k, v in labels.items() if not isinstance(v, list | dict))
        text = data.prompts()[s.prompt]
        if data.attentions:  # source and target, as the line view draws them
            text = f"{text}  →  {' '.join(data.query_tokens(s.prompt, 'cross'))}"
        return ([{"label": t, "value": i} for i, t in enumerate(tokens)], text, shown)
    except READ_ERRORS as e:
        return [], error_message(e), ""


def prompt_options(registry: Registry, run_id: str, search: str | None, current: int | None,
                   limit: int = 50) -> list[dict]:
    """At most ``limit`` prompts matching the search text, the current one always included."""
    try:
        data = registry.get(run_id)
        if data.error:
            return []
        texts = data.prompts()
        return [{"label": f"{i}: {texts[i][:90]}", "value": i}
                for i in data.search_prompts(search, limit, include=current)]
    except READ_ERRORS:
        return []
