"""Plotly figures from numpy arrays. Pure functions: no run, no Dash, so each is tested on
the arrays it is given.

Patterns are [query, key] (one head), [head, query, key] (a layer) or [layer, head, query,
key] (a prompt). Token labels go on axes as tick text over numeric positions, because a
categorical axis would merge repeated tokens ("the" twice).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from probe.head_labels import head_label

MAX_TOKENS = 128  # longest window a token-level view draws; longer prompts are cropped
THUMB = 16  # side of a grid thumbnail (longer patterns are pooled down to it)
TOP_K = 5  # keys per query the line view draws
SELECTED = "#d62728"
# A small template of our own: a named one ("plotly_white") is validated and copied into
# every figure, ~20 ms each, more than the rest of a figure costs.
TEMPLATE = go.layout.Template(layout=dict(plot_bgcolor="white", xaxis=dict(gridcolor="#e8ecf2", zeroline=False),
                                          yaxis=dict(gridcolor="#e8ecf2", zeroline=False)))
LAYOUT = dict(margin=dict(l=50, r=20, t=40, b=40), template=TEMPLATE)


def _round(a: np.ndarray, digits: int = 4) -> np.ndarray:
    """What is sent to the browser: float32 (plotly ships typed arrays, so half the bytes of
    float64), rounded; NaN stays NaN."""
    return np.round(np.asarray(a, dtype=np.float64), digits).astype(np.float32)


def figure(data: list[dict], layout: dict) -> go.Figure:
    """One Figure built in one go (traces as dicts): much cheaper than add_trace and
    update_layout call by call, which re-validate the figure each time."""
    return go.Figure(data=data, layout={**LAYOUT, **layout})


def message_figure(text: str) -> go.Figure:
    return figure([], dict(annotations=[dict(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")],
                           xaxis=dict(visible=False), yaxis=dict(visible=False), height=200))


# ----------------------------------------------------------------------- long prompts
def crop_window(n: int, max_tokens: int = MAX_TOKENS, focus: list[int] | None = None,
                start: int | None = None) -> tuple[int, int]:
    """[start, end) of at most ``max_tokens`` positions: from ``start`` if given, else
    around the focused positions (the selected queries), else the prompt's end, where a
    decoder's late queries see the whole context."""
    if n <= max_tokens:
        return 0, n
    if start is None:
        start = max(focus) - max_tokens // 2 if focus else n - max_tokens
    start = min(max(0, start), n - max_tokens)
    return start, start + max_tokens


def sparsify_topk(pattern: np.ndarray, k: int) -> np.ndarray:
    """Keep each row's ``k`` largest weights, zero the rest (for display)."""
    if k >= pattern.shape[-1]:
        return pattern.copy()
    out = np.zeros_like(pattern)
    idx = np.argpartition(-pattern, k - 1, axis=-1)[..., :k]
    np.put_along_axis(out, idx, np.take_along_axis(pattern, idx, -1), -1)
    return out


def pool(pattern: np.ndarray, size: int) -> np.ndarray:
    """Mean-pool the last two axes down to at most ``size`` x ``size``."""
    n_q, n_k = pattern.shape[-2:]
    if n_q <= size and n_k <= size:
        return pattern
    qb = np.linspace(0, n_q, min(size, n_q) + 1).astype(int)
    kb = np.linspace(0, n_k, min(size, n_k) + 1).astype(int)
    rows = np.add.reduceat(pattern, qb[:-1], axis=-2) / np.diff(qb)[:, None]
    return np.add.reduceat(rows, kb[:-1], axis=-1) / np.diff(kb)


def summed_attention(pattern: np.ndarray, queries: list[int]) -> np.ndarray:
    """Attention to each key summed over the selected query positions."""
    return pattern[list(queries)].sum(0) if queries else np.zeros(pattern.shape[-1])


# ----------------------------------------------------------------------- one head
def head_heatmap(pattern: np.ndarray, tokens: list[str], title: str = "", window: tuple[int, int] | None = None,
                 queries: list[int] | None = None, key_tokens: list[str] | None = None) -> go.Figure:
    """The [query, key] pattern with token labels on both axes and hover values. ``window``
    crops both axes to [start, end); selected queries are marked on the query axis. With
    ``key_tokens`` (cross-attention: target queries, source keys) the keys are another sequence,
    shown whole; the window crops the queries only."""
    a, b = window or (0, len(tokens))
    ka, kb = (a, b) if key_tokens is None else (0, len(key_tokens))
    keys = tokens if key_tokens is None else key_tokens
    z = _round(pattern[a:b, ka:kb])
    toks, ktoks = tokens[a:b], keys[ka:kb]
    pos, kpos = list(range(a, b)), list(range(ka, kb))
    hover = [[f"query {q} {toks[i]!r} -> key {k} {ktoks[j]!r}" for j, k in enumerate(kpos)] for i, q in enumerate(pos)]
    size = {"size": 10 if max(len(pos), len(kpos)) < 48 else 7}
    tick = dict(tickmode="array", tickvals=pos, ticktext=toks, tickfont=size)
    ktick = dict(tickmode="array", tickvals=kpos, ticktext=ktoks, tickfont=size)
    shapes = [dict(type="rect", x0=ka - 0.5, x1=kb - 0.5, y0=q - 0.5, y1=q + 0.5, line=dict(color=SELECTED, width=1))
              for q in queries or [] if a <= q < b]
    return figure(
        [dict(type="heatmap", z=z, x=kpos, y=pos, colorscale="Blues", zmin=0,
              zmax=max(float(np.nanmax(z)), 1e-6) if z.size else 1, hovertext=hover,
              hovertemplate="%{hovertext}: %{z:.3f}<extra></extra>", colorbar={"title": {"text": "attn"}})],
        dict(title={"text": title + (f" (positions {a}-{b - 1} of {len(tokens)}; set the window start, or select "
                                     "a query token, to move the window)" if (a, b) != (0, len(tokens)) else "")},
             xaxis=dict(title={"text": "key" if key_tokens is None else "key (source)"}, side="bottom", tickangle=-60,
                        **ktick),
             yaxis=dict(title={"text": "query" if key_tokens is None else "query (target)"}, autorange="reversed",
                        **tick), shapes=shapes,
             height=max(360, min(900, 14 * len(pos) + 140))))


LINE_BUCKETS = [(0.02, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 1.01)]  # weight ranges: a trace each, not n^2


def line_view(pattern: np.ndarray, tokens: list[str], queries: list[int] | None = None, top_k: int = TOP_K,
              window: tuple[int, int] | None = None, key_tokens: list[str] | None = None) -> go.Figure:
    """bertviz-style: queries on the left, keys on the right, a line per (query, key) among
    each query's ``top_k`` keys, opacity and width by weight. ``window`` crops the queries
    only: each query's top keys come from its whole row, and a top key outside the window
    (a BOS sink, a distant antecedent) gets a row of its own, labelled with its position.
    Selected queries' lines are red and the key markers' size shows the attention they get
    from the selected queries, summed. Clicking a query token selects it. With ``key_tokens``
    (cross-attention) the keys are the other sentence: the target on the left, the source on the
    right, every source token drawn."""
    a, b = window or (0, len(tokens))
    rows = pattern[a:b]  # [window queries, every key]
    top = _top_keys(rows, top_k)  # [n, top_k] key positions, each row's strongest first
    weight = np.take_along_axis(rows, top, 1)
    n = b - a
    if key_tokens is None:
        keys = np.union1d(np.arange(a, b), top[weight > 0])  # the key rows drawn, in position order
        q_y = np.searchsorted(keys, np.arange(a, b))  # a query sits level with itself as a key
    else:
        keys, q_y = np.arange(len(key_tokens)), np.arange(n)
    y_of = {int(k): i for i, k in enumerate(keys)}
    ktoks = tokens if key_tokens is None else key_tokens
    sel = [q - a for q in queries or [] if a <= q < b]
    is_sel = np.isin(np.arange(n), sel)
    traces = []
    for selected in (False, True):
        for lo, hi in LINE_BUCKETS:
            qs, j = np.nonzero((weight >= lo) & (weight < hi) & (is_sel[:, None] == selected))
            if not len(qs):
                continue
            xs = np.tile([0.0, 1.0, np.nan], len(qs))
            ys = np.stack([q_y[qs], np.searchsorted(keys, top[qs, j]), np.full(len(qs), np.nan)], 1).ravel()
            color = SELECTED if selected else f"rgba(31,119,180,{0.15 + 0.8 * lo:.2f})"
            traces.append(dict(type="scatter", x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                               connectgaps=False, line=dict(color=color, width=(2 if selected else 1) + 4 * lo)))
    summed = summed_attention(rows, sel)[keys]
    key_text = [ktoks[k] if key_tokens is not None or a <= k < b else f"{ktoks[k]} @{k}" for k in keys]
    where = ["<br>".join(f"{k} {ktoks[k]!r} {w:.2f}" for k, w in zip(top[q], weight[q]) if w > 0) for q in range(n)]
    traces.append(dict(type="scatter", x=[0] * n, y=q_y.tolist(), mode="markers+text", text=tokens[a:b],
                       textposition="middle left", name="queries", showlegend=False, customdata=list(range(a, b)),
                       hovertext=where, marker=dict(size=9, color=[SELECTED if s else "#1f77b4" for s in is_sel]),
                       hovertemplate="query %{customdata} %{text} attends to:<br>%{hovertext}"
                                     "<extra>click to select</extra>"))
    traces.append(dict(type="scatter", x=[1] * len(keys), y=list(range(len(keys))), mode="markers+text",
                       text=key_text, textposition="middle right", name="keys", showlegend=False,
                       customdata=_round(summed, 3),
                       marker=dict(size=6 + 20 * np.sqrt(np.clip(summed, 0, None) / max(len(sel), 1)),
                                   color=SELECTED if sel else "#7f7f7f"),
                       hovertemplate="key %{text}: summed attention %{customdata}<extra></extra>"))
    outside = len(keys) - n if key_tokens is None else 0
    return figure(traces, dict(
        title={"text": f"token view: top {top_k} keys per query" + (
            f"; {len(sel)} selected queries, marker size = summed attention" if sel
            else "; click query tokens to select") + (f"; {outside} keys outside the window (@position)"
                                                      if outside else "")},
        xaxis=dict(visible=False, range=[-0.6, 1.6]), yaxis=dict(visible=False, autorange="reversed"),
        height=max(360, min(1400, 18 * len(keys) + 80)), clickmode="event",
        # each query's top keys [[key row, weight], ...]: the browser draws them on hover (app.HOVER_JS)
        # and each query's own row, "qy" (keys outside the window add rows)
        meta={"top": [[[y_of[int(k)], round(float(w), 4)] for k, w in zip(top[q], weight[q]) if w > 0]
                      for q in range(n)], "qy": q_y.tolist()}))


def _top_keys(rows: np.ndarray, k: int) -> np.ndarray:
    """[n, min(k, n_keys)] positions of each row's largest weights, largest first."""
    k = min(k, rows.shape[-1])
    idx = np.argpartition(-rows, k - 1, axis=-1)[:, :k] if k < rows.shape[-1] else \
        np.broadcast_to(np.arange(rows.shape[-1]), rows.shape).copy()
    order = np.argsort(-np.take_along_axis(rows, idx, 1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, 1)


def summed_bar(pattern: np.ndarray, tokens: list[str], queries: list[int],
               key_tokens: list[str] | None = None) -> go.Figure:
    """Bar per key: the attention the selected queries give it, summed (``key_tokens``: the
    keys' own sequence, cross-attention's source)."""
    s = summed_attention(pattern, queries)
    keys = tokens if key_tokens is None else key_tokens
    pos = list(range(len(keys)))
    return figure(
        [dict(type="bar", x=pos, y=_round(s), hovertext=keys, hovertemplate="%{hovertext}: %{y:.3f}<extra></extra>",
              marker=dict(color=SELECTED))],
        dict(title={"text": "attention summed over the selected queries: " + ", ".join(repr(tokens[q])
                                                                                        for q in queries)},
             xaxis=dict(tickmode="array", tickvals=pos, ticktext=keys, tickangle=-60),
             yaxis=dict(title={"text": "summed attention"}), height=300))


# ----------------------------------------------------------------------- all heads
def grid_thumbnails(patterns: np.ndarray, thumb: int = THUMB) -> go.Figure:
    """One heatmap holding every head's pattern as a thumbnail, with a blank row and column
    between thumbnails: head h of layer l covers x in (h - 0.5, h + 0.5), y likewise, so
    rounding a click's (or hover's) coordinates names the head. The cells are evenly
    spaced (x0/dx, not coordinate arrays), which Plotly draws as one image. Each thumbnail
    is scaled to its own maximum."""
    L, H = patterns.shape[:2]
    small = pool(patterns, thumb)  # [L, H, tq, tk] (tq != tk for cross-attention)
    tq, tk = small.shape[-2:]
    small = small / np.maximum(small.max(axis=(-2, -1), keepdims=True), 1e-9)
    z = np.full((L, tq + 1, H, tk + 1), np.nan)
    z[:, :tq, :, :tk] = small.transpose(0, 2, 1, 3)
    xstep, ystep = 1 / (tk + 1), 1 / (tq + 1)
    return figure([dict(type="heatmap", z=_round(z.reshape(L * (tq + 1), H * (tk + 1)), 3), x0=-0.5 + xstep / 2,
                        dx=xstep, y0=-0.5 + ystep / 2, dy=ystep, colorscale="Blues", zmin=0, zmax=1, showscale=False,
                        hoverongaps=False, hovertemplate="layer %{y:.0f} head %{x:.0f}<extra>click to select</extra>")],
                  grid_axes(L, H, "each head's pattern on this prompt (scaled to its maximum); click one to select it"))


def grid_metric(values: np.ndarray, metric: str) -> go.Figure:
    """[layer, head] values of one per-head metric, cell (l, h) centred on (h, l)."""
    L, H = values.shape
    return figure([dict(type="heatmap", z=_round(values), colorscale="Viridis",
                        hovertemplate="layer %{y} head %{x}: %{z:.3f}<extra></extra>",
                        colorbar={"title": {"text": metric[:14]}})],
                  grid_axes(L, H, f"{metric} per head; click one to select it"))


def grid_axes(L: int, H: int, title: str) -> dict:
    """Layout of a [layer, head] grid: heads across the top, layers down, cell (l, h)
    centred on (h, l)."""
    return dict(
        title=dict(text=title, font={"size": 12}),
        xaxis=dict(tickmode="array", tickvals=list(range(H)), ticktext=[f"H{h}" for h in range(H)],
                   range=[-0.5, H - 0.5], showgrid=False, zeroline=False, side="top"),
        yaxis=dict(tickmode="array", tickvals=list(range(L)), ticktext=[f"L{layer}" for layer in range(L)],
                   range=[L - 0.5, -0.5], showgrid=False, zeroline=False),
        height=max(220, min(700, 60 * L + 60)), margin=dict(l=40, r=10, t=60, b=10))


def grid_selection(layer: int, head: int) -> list[dict]:
    """The layout shapes that outline the selected cell of a grid."""
    return [dict(type="rect", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                 line=dict(color=SELECTED, width=3))]


def head_of_click(click: dict | None) -> tuple[int, int] | None:
    """(layer, head) from a grid's clickData: the clicked coordinates, rounded."""
    try:
        point = click["points"][0]
        return int(np.floor(float(point["y"]) + 0.5)), int(np.floor(float(point["x"]) + 0.5))
    except (TypeError, KeyError, IndexError, ValueError, OverflowError):  # OverflowError: a crafted Infinity
        return None


# ----------------------------------------------------------------------- one layer
def panels(n: int, cols: int, titles: list[str], hgap: float = 0.02, vgap: float = 0.08) -> tuple[dict, list]:
    """Layout axes for ``n`` panels in a grid of ``cols`` columns (what make_subplots does,
    without its cost), and each panel's (xaxis, yaxis) trace references."""
    rows = -(-n // cols)
    layout: dict = {"annotations": []}
    refs = []
    for i in range(n):
        r, c = divmod(i, cols)
        x0, x1 = c / cols + hgap / 2, (c + 1) / cols - hgap / 2
        y1 = 1 - r / rows - (vgap / 2 if r else 0)
        y0 = 1 - (r + 1) / rows + (vgap / 2 if r < rows - 1 else 0)
        suffix = "" if i == 0 else str(i + 1)
        layout[f"xaxis{suffix}"] = dict(domain=[x0, x1], anchor=f"y{suffix}")
        layout[f"yaxis{suffix}"] = dict(domain=[y0, y1], anchor=f"x{suffix}", autorange="reversed")
        layout["annotations"].append(dict(text=titles[i], x=(x0 + x1) / 2, y=y1, xref="paper", yref="paper",
                                          xanchor="center", yanchor="bottom", showarrow=False))
        refs.append((f"x{suffix}", f"y{suffix}"))
    return layout, refs


def layer_view(patterns: np.ndarray, tokens: list[str], layer: int, selected: int | None = None,
               size: int = 48, kv_heads: list[int] | None = None) -> go.Figure:
    """Every head of one layer side by side (pooled to ``size`` positions for long prompts).
    Clicking a panel selects that head (the trace's customdata holds it). ``kv_heads``: the
    key/value head of each head, named in its panel's title when heads share them
    (grouped-query attention)."""
    H = patterns.shape[0]
    kv = list(kv_heads) if kv_heads is not None else list(range(H))
    n_kv = len(set(kv))
    shared = n_kv < H
    cols = _group_columns(H, n_kv) if shared else min(H, 6)
    rows = -(-H // cols)
    names = [f"H{h} (K/V {kv[h]})" if shared else f"H{h}" for h in range(H)]
    titles = [f"<b>{names[h]} (selected)</b>" if h == selected else names[h] for h in range(H)]
    layout, refs = panels(H, cols, titles)
    if selected is not None and 0 <= selected < H:
        layout["annotations"][selected]["font"] = dict(color=SELECTED, size=14)
    small = pool(patterns, size)
    traces = [dict(type="heatmap", z=_round(small[h], 3), coloraxis="coloraxis", xaxis=refs[h][0], yaxis=refs[h][1],
                   customdata=np.full(small[h].shape, h),
                   hovertemplate=f"H{h} q %{{y}} -> k %{{x}}: %{{z:.3f}}<extra>click to select</extra>")
              for h in range(H)]
    for key in layout:
        if key.startswith(("xaxis", "yaxis")):
            layout[key]["showticklabels"] = False
    groups = f"<br><sub>{n_kv} K/V heads, each shared by {H // n_kv} heads: (K/V n) names the keys and values " \
        "a head attends with</sub>" if shared else ""
    return figure(traces, dict(layout, title={"text": f"layer {layer}: all {H} heads{groups}"},
                               coloraxis=dict(colorscale="Blues", cmin=0), height=230 * rows + 60,
                               margin=dict(LAYOUT["margin"], t=100 if shared else 40)))


def _group_columns(n_heads: int, n_kv: int, most: int = 6) -> int:
    """Panels per row that keep each row to whole K/V groups: the group size times the
    largest divisor k of the group count with group * k <= ``most`` (SmolLM2's 9 heads in 3
    groups: 3 per row, a row per K/V head)."""
    group = n_heads // n_kv
    if group > most:
        return most
    return group * max(k for k in range(1, n_kv + 1) if n_kv % k == 0 and group * k <= most)


OUTLIER = 10.0  # a norm this many times the median is off the colour scale (residual_norms)


def colour_cap(values: np.ndarray, factor: float = OUTLIER) -> float | None:
    """The top of a colour scale that leaves out outliers: the largest value at most ``factor``
    times the median, or None when nothing exceeds it. Real language models have a few
    "massive activations" (SmolLM2's first position reaches ~20,000 where the others are
    ~100-700): scaled to them, every other cell would be one colour."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return None
    inside = finite[finite <= factor * np.median(finite)]
    return float(inside.max()) if inside.size and inside.size < finite.size else None


def residual_norms(norms: np.ndarray, tokens: list[str], hook: str) -> go.Figure:
    """[layer, position] L2 norm of the residual stream. Outlying norms (`colour_cap`) are
    drawn in the top colour and named in the title; hover shows every value."""
    L, n = norms.shape
    cap = colour_cap(norms)
    note = ""
    if cap is not None:
        layer, pos = np.unravel_index(int(np.nanargmax(norms)), norms.shape)
        note = (f"<br><sub>colours end at {cap:,.0f}; larger norms (up to {float(norms[layer, pos]):,.0f}, layer "
                f"{layer} position {pos} {tokens[pos]!r}) are drawn in the top colour</sub>")
    return figure([dict(type="heatmap", z=_round(norms, 3), x=list(range(n)), y=list(range(L)), colorscale="Viridis",
                        zmin=float(np.nanmin(norms)) if cap is not None else None, zmax=cap,
                        hovertemplate="layer %{y} position %{x}: %{z:.2f}<extra></extra>",
                        colorbar={"title": {"text": "norm"}})],
                  dict(title={"text": f"residual stream norm ({hook}) per layer and position{note}"},
                       xaxis=dict(tickmode="array", tickvals=list(range(n)), ticktext=tokens, tickangle=-60),
                       yaxis=dict(title={"text": "layer"}, autorange="reversed", dtick=1), height=120 + 30 * L,
                       margin=dict(LAYOUT["margin"], t=75 if note else 40)))


# ----------------------------------------------------------------------- analyses
def metrics_scatter(columns: dict[str, pd.Series], x: str, y: str, selected: tuple[int, int] | None) -> go.Figure:
    """One point per head, metric ``x`` against metric ``y``; customdata = (layer, head)."""
    df = pd.concat({x: columns[x], y: columns[y]}, axis=1).dropna() if x != y else \
        columns[x].rename(x).to_frame().dropna()
    layers = df.index.get_level_values(0).to_numpy()
    heads = df.index.get_level_values(1).to_numpy()
    names = [head_label(layer, head) for layer, head in zip(layers, heads)]
    is_sel = [(int(layer), int(head)) == selected for layer, head in zip(layers, heads)]
    return figure(
        [dict(type="scatter", x=_round(df[x]), y=_round(df[y]), mode="markers+text",
              text=[n if s else "" for n, s in zip(names, is_sel)], textposition="top center", hovertext=names,
              customdata=np.stack([layers, heads], 1).tolist(),  # a list: a typed array's row reaches Dash as a dict
              marker=dict(size=[14 if s else 8 for s in is_sel], color=layers, colorscale="Turbo",
                          line=dict(color=[SELECTED if s else "white" for s in is_sel],
                                    width=[3 if s else 1 for s in is_sel]),
                          colorbar={"title": {"text": "layer"}}),
              hovertemplate="%{hovertext}: " + x + " %{x:.3f}, " + y + " %{y:.3f}<extra>click to select</extra>")],
        dict(title={"text": f"{y} against {x}, one point per head"}, xaxis=dict(title={"text": x}),
             yaxis=dict(title={"text": y}), height=450))


ACCURACY_CURVES = (("test_acc", "solid"), ("dev_acc", "dot"), ("train_acc", "dot"), ("control_test_acc", "dash"),
                   ("selectivity", "solid"), ("majority_baseline", "dashdot"))
R2_CURVES = (("test_r2", "solid"), ("dev_r2", "dot"), ("train_r2", "dot"), ("control_test_r2", "dash"),
             ("selectivity", "solid"), ("mean_baseline_r2", "dashdot"))
R2_FLOOR = -1.0  # R^2 is unbounded below; a useless layer's -40 must not flatten the others


def is_ridge_table(table: pd.DataFrame) -> bool:
    """A ridge probe's table (R^2 of a real-valued target) rather than a logistic one's."""
    return "test_r2" in table.columns and "test_acc" not in table.columns


def probe_curves(table: pd.DataFrame, name: str, selected_layer: int | None = None) -> go.Figure:
    """Score per layer of a probe table: train/dev/test, the baseline, and the control task
    and selectivity when the table has them; the selected head's layer is marked. Logistic
    tables are drawn as accuracy (majority baseline), ridge tables as R^2 (mean-predictor
    baseline)."""
    if is_ridge_table(table):
        return _layer_curves(table, R2_CURVES, f"{name}: ridge probe R^2 per layer", "R^2", selected_layer,
                             floor=R2_FLOOR)
    return _layer_curves(table, ACCURACY_CURVES, f"{name}: probe accuracy per layer", "accuracy", selected_layer)


def _layer_curves(table: pd.DataFrame, curves: tuple[tuple[str, str], ...], title: str, y_title: str,
                  selected_layer: int | None, floor: float = -np.inf) -> go.Figure:
    """One line per column of ``curves`` the table has, over its layers (x = layer, so a
    click selects that layer). The y axis ends at 1.02 and starts at the lowest value or 0,
    but no lower than ``floor``; points below it are named in a note."""
    layers = table["layer"].to_numpy()
    present = [(col, dash) for col, dash in curves if col in table.columns]
    traces = [dict(type="scatter", x=layers, y=_round(pd.to_numeric(table[col], errors="coerce")),
                   mode="lines+markers", name=col, line=dict(dash=dash),
                   hovertemplate=f"layer %{{x}}: {col} %{{y:.3f}}<extra>click to select the layer</extra>")
              for col, dash in present]
    values = np.concatenate([pd.to_numeric(table[col], errors="coerce").to_numpy(float) for col, _ in present]) \
        if present else np.zeros(0)
    finite = values[np.isfinite(values)]
    low = min(0.0, float(finite.min())) if len(finite) else 0.0
    layout = dict(title={"text": title}, xaxis=dict(title={"text": "layer"}, dtick=1),
                  yaxis=dict(title={"text": y_title}, range=[max(low, floor) - 0.02, 1.02]), height=360)
    notes = []
    if low < floor:
        notes.append(dict(text=f"values below {floor:g} are off the axis (lowest {low:.2f})", showarrow=False, x=0,
                          y=0, xref="paper", yref="paper", xanchor="left", yanchor="bottom",
                          font=dict(size=11, color="#666")))
    if selected_layer is not None:
        layout["shapes"] = [dict(type="line", x0=selected_layer, x1=selected_layer, y0=0, y1=1, xref="x",
                                 yref="paper", line=dict(color=SELECTED, dash="dot"))]
        notes.append(dict(text="selected layer", showarrow=False, x=selected_layer, y=1, xref="x", yref="paper",
                          xanchor="left", yanchor="top"))
    return figure(traces, {**layout, "annotations": notes})


def layer_head_heatmap(table: pd.DataFrame, value: str, title: str, selected: tuple[int, int] | None = None,
                       diverging: bool = True, shape: tuple[int, int] | None = None) -> go.Figure:
    """A [layer, head] table as a heatmap (ablation effect, head patching, coref accuracy).
    ``shape`` (layers, heads): draw every head of the model, heads the table lacks (or holds
    NaN for) blank; without it, the layers and heads the table has numbers for."""
    grid = table.pivot_table(index="layer", columns="head", values=value, aggfunc="mean")
    if shape is not None:
        grid = grid.reindex(index=range(shape[0]), columns=range(shape[1]))
    z = grid.to_numpy(dtype=float)
    L, H = z.shape
    bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    # x and y are the table's head and layer numbers, so a click reports them (app.apply_event)
    fig = go.Figure(go.Heatmap(z=_round(z), x=grid.columns.to_list(), y=grid.index.to_list(),
                               colorscale="RdBu" if diverging else "Viridis", reversescale=diverging,
                               zmid=0 if diverging else None, zmin=-bound if diverging else None,
                               zmax=bound if diverging else None,
                               hovertemplate="layer %{y} head %{x}: %{z:.3f}<extra></extra>", hoverongaps=False,
                               colorbar={"title": value}))
    fig.update_layout(grid_axes(L, H, title))
    if selected is not None:
        fig.update_layout(shapes=grid_selection(*selected))
    return fig


# ----------------------------------------------------------------------- circuits
# One fixed colour per head class of a circuit (IOI's classes, Wang et al. 2022; induction's),
# none of them the selection's red or the grey of heads outside the circuit.
HEAD_CLASS_COLOURS = {"name mover": "#1f77b4", "negative name mover": "#9467bd", "backup name mover": "#17becf",
                      "S-inhibition": "#ff7f0e", "induction": "#2ca02c", "duplicate token": "#8c564b",
                      "previous token": "#e377c2"}
EXTRA_CLASS_COLOURS = ("#393b79", "#637939", "#7b4173", "#843c39", "#bcbd22")  # classes not named above
UNCLASSIFIED = "circuit (no class)"  # the trace of circuit heads without a class
OTHER_HEADS = "other heads"  # the trace of heads outside the circuit
OTHER_COLOUR = "#c7c7c7"
# an edge's sign: negative = the path carries the behaviour (patching it lowers the metric);
# the ends of the reversed RdBu scale the heatmaps use, so blue means the same everywhere
EDGE_COLOURS = {True: "rgba(33,102,172,0.6)", False: "rgba(178,24,43,0.6)"}
EDGE_DASH = {"q": "solid", "k": "dash", "v": "dot"}  # the receiver's input a path enters by
EDGE_WIDTH = (1.0, 9.0)  # the thinnest and thickest edge: width grows with |effect|


def head_class(value) -> str:
    """A head's class from a circuit_heads table: its text, "" for none (empty or NaN)."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    return str(value).strip()


def is_true(value) -> bool:
    """An in_circuit cell as a bool (a CSV reads True/False as bools, or as text next to a blank)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    try:
        return bool(value) and not (isinstance(value, float) and not np.isfinite(value))
    except (TypeError, ValueError):
        return False


def evidence_columns(table: pd.DataFrame, skip: tuple[str, ...] = ("layer", "head")) -> list[str]:
    """The numeric columns of a per-head table (dla, atp_star, exact, attn_io, ...), bools excluded."""
    return [c for c in table.columns if c not in skip and pd.api.types.is_numeric_dtype(table[c])
            and not pd.api.types.is_bool_dtype(table[c])]


def circuit_classes(heads: pd.DataFrame) -> dict[str, list[tuple[int, int]]]:
    """The circuit's heads by class, in the fixed order of HEAD_CLASS_COLOURS, then any other
    class, then circuit heads without one (UNCLASSIFIED); heads outside the circuit are none of them."""
    found: dict[str, list[tuple[int, int]]] = {}
    for layer, head, cls, inside in zip(heads["layer"], heads["head"], heads["head_class"], heads["in_circuit"]):
        if is_true(inside):
            found.setdefault(head_class(cls) or UNCLASSIFIED, []).append((int(layer), int(head)))
    order = [c for c in HEAD_CLASS_COLOURS if c in found] + sorted(c for c in found if c not in HEAD_CLASS_COLOURS
                                                                   and c != UNCLASSIFIED)
    return {c: sorted(found[c]) for c in order + ([UNCLASSIFIED] if UNCLASSIFIED in found else [])}


def class_colour(cls: str, classes: list[str]) -> str:
    if cls in HEAD_CLASS_COLOURS:
        return HEAD_CLASS_COLOURS[cls]
    if cls == UNCLASSIFIED:
        return "#555555"
    extra = [c for c in classes if c not in HEAD_CLASS_COLOURS and c != UNCLASSIFIED]
    return EXTRA_CLASS_COLOURS[extra.index(cls) % len(EXTRA_CLASS_COLOURS)] if cls in extra else OTHER_COLOUR


def edge_widths(effects: np.ndarray) -> np.ndarray:
    """Line width per edge, proportional to |effect| between EDGE_WIDTH's ends (the
    strongest edge the thickest)."""
    size = np.abs(np.asarray(effects, dtype=float))
    top = float(size.max()) if size.size else 0.0
    lo, hi = EDGE_WIDTH
    return lo + (hi - lo) * (size / top if top > 0 else np.zeros_like(size))


def circuit_graph(heads: pd.DataFrame, edges: pd.DataFrame | None, n_layers: int, n_heads: int,
                  selected: tuple[int, int] | None = None, title: str = "") -> go.Figure:
    """A circuit as a layered graph: every head of ``heads`` (a circuit_heads table) at x =
    layer, y = head; the circuit's heads coloured by class (a trace, and a legend entry, per
    class), the others small and grey; each edge of ``edges`` (circuit_edges) a line from
    sender to receiver, its width proportional to |effect|, blue where the path carries the
    behaviour (effect < 0), red where it works against it, dashed by the receiver's input
    (q solid, k dashed, v dotted). Hover names the head ("L{layer}H{head}"), its class and its
    evidence; each head's customdata is [layer, head], so a click selects it."""
    classes = circuit_classes(heads)
    in_class = {lh: c for c, members in classes.items() for lh in members}
    evidence = evidence_columns(heads)
    info: dict[tuple[int, int], str] = {}
    for _, row in heads.iterrows():
        lh = (int(row["layer"]), int(row["head"]))
        cls = head_class(row["head_class"])
        lines = [f"<b>{head_label(*lh)}</b>", (cls or "no class") + (" (in the circuit)" if lh in in_class
                                                                     else " (not in the circuit)")]
        lines += [f"{c}: {float(row[c]):.3g}" for c in evidence if np.isfinite(float(row[c]))]
        info[lh] = "<br>".join(lines)
    traces: list[dict] = []
    shown_sign: set[bool] = set()
    if edges is not None and len(edges):
        e = edges.assign(effect=pd.to_numeric(edges["effect"], errors="coerce"))
        e = e[np.isfinite(e["effect"])]
        widths = edge_widths(e["effect"].to_numpy())
        for i in np.argsort(-widths, kind="stable"):  # thickest first, so thin edges stay visible on top
            row = e.iloc[int(i)]
            s, r = (int(row["sender_layer"]), int(row["sender_head"])), (int(row["receiver_layer"]),
                                                                          int(row["receiver_head"]))
            effect, inp = float(row["effect"]), str(row["receiver_input"])
            carries = effect < 0
            text = f"{head_label(*s)} → {head_label(*r)} ({inp}): effect {effect:+.3f}"
            traces.append(dict(
                type="scatter", x=[s[0], (s[0] + r[0]) / 2, r[0]], y=[s[1], (s[1] + r[1]) / 2, r[1]], mode="lines",
                line=dict(color=EDGE_COLOURS[carries], width=float(widths[i]), dash=EDGE_DASH.get(inp, "solid")),
                name="path carries the behaviour (effect < 0)" if carries else "path works against it (effect > 0)",
                legendgroup=f"edges-{carries}", showlegend=carries not in shown_sign, hovertext=[text] * 3,
                hovertemplate="%{hovertext}<extra></extra>", meta={"edge": [*s, *r], "input": inp}))
            shown_sign.add(carries)
    n_edges = len(traces)
    others = sorted(lh for lh in info if lh not in in_class)
    groups = [(OTHER_HEADS, others)] + list(classes.items())
    for cls, members in groups:
        if not members:
            continue
        other = cls == OTHER_HEADS
        traces.append(dict(
            type="scatter", x=[lh[0] for lh in members], y=[lh[1] for lh in members], mode="markers",
            name=cls, customdata=[list(lh) for lh in members],  # lists: a typed array's row reaches Dash as a dict
            hovertext=[info[lh] for lh in members], hovertemplate="%{hovertext}<extra>click to select</extra>",
            marker=dict(size=7 if other else 15, color=OTHER_COLOUR if other else class_colour(cls, list(classes)),
                        line=dict(color="white", width=0 if other else 1.5))))
    layout = dict(
        title={"text": title or f"circuit: {sum(map(len, classes.values()))} of {len(info)} heads, {n_edges} paths"
                                "<br><sub>line width = |effect|; into the receiver's q solid, k dashed, v dotted; "
                                "click a head to select it</sub>"},
        margin=dict(LAYOUT["margin"], t=80),
        xaxis=dict(title={"text": "layer"}, tickmode="array", tickvals=list(range(n_layers)),
                   ticktext=[f"L{layer}" for layer in range(n_layers)], range=[-0.5, n_layers - 0.5]),
        yaxis=dict(title={"text": "head"}, tickmode="array", tickvals=list(range(n_heads)),
                   ticktext=[f"H{h}" for h in range(n_heads)], range=[n_heads - 0.5, -0.5]),
        height=max(320, min(800, 26 * n_heads + 140)), clickmode="event", legend=dict(itemsizing="constant"))
    if selected is not None:
        layer, head = selected
        layout["shapes"] = [dict(type="circle", x0=layer - 0.3, x1=layer + 0.3, y0=head - 0.45, y1=head + 0.45,
                                 line=dict(color=SELECTED, width=3))]
    return figure(traces, layout)


def circuit_map(maps: pd.DataFrame, value: str, title: str, selected: tuple[int, int] | None,
                shape: tuple[int, int], diverging: bool = True) -> go.Figure:
    """One column of `attribution_maps` as a [layer, head] heatmap of every head (blank where
    it holds NaN), its title above the head labels, for three side by side."""
    fig = layer_head_heatmap(maps, value, title, selected, diverging, shape)
    fig.update_layout(title=dict(y=1, yanchor="top", pad=dict(t=30)), margin=dict(t=110))  # below the modebar
    return fig


def attribution_maps(table: pd.DataFrame) -> pd.DataFrame:
    """The whole-head rows (position "all") of a circuit_attribution table, one per (layer,
    head): atp, atp_star, exact and difference = atp_star - |exact|, AtP*'s estimate of the
    effect's size against the size measured, NaN where exact was not measured."""
    rows = table[table["position"].astype(str).str.strip() == "all"]
    cols = [c for c in ("atp", "atp_star", "exact") if c in rows.columns]
    values = rows[["layer", "head"]].astype(int).join(rows[cols].apply(pd.to_numeric, errors="coerce"))
    out = values.groupby(["layer", "head"], as_index=False)[cols].mean()
    out["difference"] = out["atp_star"] - out["exact"].abs()
    return out


def layer_position_heatmap(table: pd.DataFrame, value: str, title: str) -> go.Figure:
    """A [layer, position] table (residual patching) as a heatmap."""
    grid = table.pivot_table(index="layer", columns="position", values=value, aggfunc="mean")
    fig = go.Figure(go.Heatmap(z=_round(grid.to_numpy()), x=grid.columns.to_list(), y=grid.index.to_list(),
                               colorscale="RdBu", reversescale=True, zmid=0,
                               hovertemplate="layer %{y} position %{x}: %{z:.3f}<extra></extra>",
                               colorbar={"title": value}))
    fig.update_layout(title=title, xaxis=dict(title="position", dtick=1),
                      yaxis=dict(title="layer", autorange="reversed", dtick=1), height=120 + 30 * len(grid), **LAYOUT)
    return fig


# ----------------------------------------------------------------------- Q/K
def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projection of the rows of ``x`` on their first two principal components, and the
    fraction of variance each explains."""
    centered = x - x.mean(0)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    var = s**2 / max((s**2).sum(), 1e-12)
    return centered @ vt[:2].T, var[:2]


def kv_head_text(kv_head: int, shared_by: range | list[int]) -> str:
    """How a view names the key/value head a query head attends with: "K/V head 1 (shared by
    heads 3-5)" under grouped-query attention, "K/V head 4" when each head has its own."""
    heads = list(shared_by)
    if len(heads) <= 1:
        return f"K/V head {kv_head}"
    return f"K/V head {kv_head} (shared by heads {heads[0]}-{heads[-1]})"


# one colour per token, the same for its queries and its keys (Plotly's D3 palette and two more)
TOKEN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                 "#17becf", "#393b79", "#637939")


def qk_pca(q: np.ndarray, k: np.ndarray, tokens: list[str], prompt_of: np.ndarray, layer: int, head: int,
           highlight_prompt: int | None = None, n_colours: int = 12, kv_label: str | None = None) -> go.Figure:
    """Queries (circles) of one head and the keys (crosses) it attends with, in the plane of
    their joint first two principal components, coloured by token (the ``n_colours``
    commonest tokens; the rest grey). Points of ``highlight_prompt`` are drawn larger.
    ``kv_label`` names the key/value head the keys are from (`kv_head_text`), in the title
    and in each key's hover text."""
    xy, var = pca_2d(np.concatenate([q, k]))
    n = len(q)
    common = [t for t, _ in Counter(tokens).most_common(n_colours)]
    fig = go.Figure()
    for kind, part, symbol in (("query", slice(0, n), "circle"), ("key", slice(n, 2 * n), "x")):
        pts = xy[part]
        for tok in [*common, None]:
            mask = np.array([(t == tok) if tok is not None else (t not in common) for t in tokens])
            if not mask.any():
                continue
            big = prompt_of[mask] == highlight_prompt
            fig.add_trace(go.Scatter(
                x=_round(pts[mask, 0], 3), y=_round(pts[mask, 1], 3), mode="markers",
                name=f"{kind} {tok!r}" if tok is not None else f"{kind} (other tokens)",
                legendgroup=str(tok), marker=dict(symbol=symbol, size=np.where(big, 11, 5),
                                                  color=TOKEN_COLOURS[common.index(tok) % len(TOKEN_COLOURS)]
                                                  if tok is not None else "lightgrey", opacity=0.7),
                hovertext=[f"{kind} {t!r} (prompt {p})" + (f", {kv_label}" if kind == "key" and kv_label else "")
                           for t, p in zip(np.asarray(tokens)[mask], prompt_of[mask])],
                hovertemplate="%{hovertext}<extra></extra>"))
    keys = f"<br><sub>keys (crosses) of {kv_label}</sub>" if kv_label else ""
    fig.update_layout(title=f"{head_label(layer, head)}: PCA of query and key vectors over {n} tokens "
                      f"(PC1 {var[0]:.0%}, PC2 {var[1] if len(var) > 1 else 0:.0%} of variance){keys}",
                      xaxis_title="PC1", yaxis_title="PC2", height=520,
                      **{**LAYOUT, "margin": dict(LAYOUT["margin"], t=75 if kv_label else 40)})
    return fig


# ----------------------------------------------------------------------- compare
def compare_heads(pa: np.ndarray, pb: np.ndarray, ta: list[str], tb: list[str], title: str) -> go.Figure:
    """The same head on two prompts side by side, and their difference (b - a) over the
    positions both have (the whole pattern when the prompts are the same length, as twins
    such as tired/wide are)."""
    m = min(len(ta), len(tb))
    diff = pb[:m, :m] - pa[:m, :m]
    layout, refs = panels(3, 3, ["prompt A", "prompt B", "B - A" + ("" if len(ta) == len(tb)
                                                                    else f" (first {m} positions)")], hgap=0.1)
    bound = max(float(np.abs(diff).max()) if diff.size else 0, 1e-6)
    hover = "q %{y} -> k %{x}: %{z:.3f}<extra></extra>"
    traces = [dict(type="heatmap", z=_round(pa), coloraxis="coloraxis", xaxis=refs[0][0], yaxis=refs[0][1],
                   hovertemplate=hover),
              dict(type="heatmap", z=_round(pb), coloraxis="coloraxis", xaxis=refs[1][0], yaxis=refs[1][1],
                   hovertemplate=hover),
              dict(type="heatmap", z=_round(diff), colorscale="RdBu", reversescale=True, zmin=-bound, zmax=bound,
                   xaxis=refs[2][0], yaxis=refs[2][1], colorbar=dict(title={"text": "B - A"}, x=1.02),
                   hovertemplate="q %{y} -> k %{x}: %{z:+.3f}<extra></extra>")]
    for i, toks in enumerate((ta, tb, [f"{a}/{b}" if a != b else a for a, b in zip(ta, tb)])):
        tick = dict(tickmode="array", tickvals=list(range(len(toks))), ticktext=toks, tickfont={"size": 9})
        suffix = "" if i == 0 else str(i + 1)
        layout[f"xaxis{suffix}"].update(tickangle=-60, **tick)
        layout[f"yaxis{suffix}"].update(**tick)
    return figure(traces, dict(layout, title={"text": title}, coloraxis=dict(colorscale="Blues", cmin=0,
                                                                             showscale=False),
                               height=max(380, min(900, 14 * max(len(ta), len(tb)) + 180)),
                               margin=dict(l=60, r=20, t=70, b=60)))
