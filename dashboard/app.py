"""The Dash app: layout and thin callbacks over `views` (what each view shows, read
through `data` and drawn by `figures`). ``create_app(run_paths)`` serves only the given
runs.

One callback (`sync_state`) owns the view state: it reads the URL on load and after
back/forward, applies every control or click to a `ViewState`, and writes the state to a
store, the controls and the URL. The other callbacks draw from the store, so one click
draws each figure once, and only the active view reads anything from the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dash
from dash import ALL, Input, Output, State, ctx, dcc, html, no_update

from . import figures
from .data import CACHE_BYTES, ENCODER_DECODER_ATTENTIONS, READ_ERRORS, Registry, RunData, error_message
from .state import THUMBNAILS, VIEWS, ViewState, from_query, to_query
from .views import (
    GRAPH_CONFIG,
    HIDDEN,
    SHOWN,
    default_x,
    default_y,
    grid_figure,
    head_card,
    prompt_options,
    render_view,
    token_checklist,
)

VIEW_LABELS = {"head": "Head", "layer": "Layer", "metrics": "Head metrics", "results": "Probes & causal",
               "qk": "Q/K", "compare": "Compare", "circuit": "Circuit"}

# Runs in the browser: moves the grid's outline to the selected head with Plotly.relayout,
# which redraws the outline only (a new figure from the server would redraw every thumbnail).
OUTLINE_JS = """
function(query) {
    const params = new URLSearchParams(query || '');
    const layer = parseInt(params.get('layer') || '0'), head = parseInt(params.get('head') || '0');
    const gd = document.querySelector('#grid .js-plotly-plot');
    if (gd && gd.layout && gd.layout.shapes && gd.layout.shapes.length === 1) {
        const s = gd.layout.shapes[0];
        if (s.x0 !== head - 0.5 || s.y0 !== layer - 0.5) {
            window.Plotly.relayout(gd, {'shapes[0].x0': head - 0.5, 'shapes[0].x1': head + 0.5,
                                        'shapes[0].y0': layer - 0.5, 'shapes[0].y1': layer + 0.5});
        }
    }
    return window.dash_clientside.no_update;
}
"""

# Runs in the browser, no server round trip: hovering a query token of the token view draws
# lines to the keys it attends to most (layout.meta.top, written by figures.line_view).
HOVER_JS = """
function(hover, fig) {
    const nu = window.dash_clientside.no_update;
    if (!fig || !fig.layout || !fig.layout.meta || !fig.layout.meta.top) { return nu; }
    const data = fig.data.filter(t => t.name !== 'hover');
    let q = null;
    if (hover && hover.points && hover.points.length) {
        const p = hover.points[0];
        const trace = data[p.curveNumber];
        if (trace && trace.name === 'queries') { q = p.pointNumber; }
    }
    if (q === null) { return data.length === fig.data.length ? nu : Object.assign({}, fig, {data: data}); }
    const qy = fig.layout.meta.qy ? fig.layout.meta.qy[q] : q;  // keys outside the window add rows
    for (const [k, w] of fig.layout.meta.top[q]) {
        data.push({type: 'scatter', name: 'hover', x: [0, 1], y: [qy, k], mode: 'lines', hoverinfo: 'skip',
                   showlegend: false, line: {color: '#ff7f0e', width: 1.5 + 8 * w}});
    }
    return Object.assign({}, fig, {data: data});
}
"""


# ----------------------------------------------------------------------- state updates
def clamp(state: ViewState, registry: Registry) -> ViewState:
    """Fit the state to what the run has: an unknown run id becomes the first run, out-of-range
    prompt/layer/head numbers the nearest valid ones, query positions past the prompt's end
    are dropped. An unreadable run keeps the state as it is (its views show why)."""
    if state.run not in registry.runs:
        state = state.with_(run=registry.ids()[0])
    data = registry.get(state.run)
    if data.error:
        return state
    try:
        return _fit(state, data)
    except READ_ERRORS:  # manifest fine, shards or tables not: the views say what is wrong
        return state


def _fit(state: ViewState, data: RunData) -> ViewState:
    n = max(data.n_prompts, 1)
    prompt = min(max(state.prompt, 0), n - 1)
    compare = state.compare if state.compare is None or 0 <= state.compare < n else None
    attention = data.attention_of(state.attention)  # "" unless the run is an encoder-decoder's
    state = state.with_(prompt=prompt, compare=compare, attention=attention,
                        layer=min(max(state.layer, 0), data.n_layers_of(attention) - 1),
                        head=min(max(state.head, 0), data.n_heads - 1))
    cols = list(data.head_columns())
    if cols:
        x = state.x if state.x in cols else default_x(cols)
        state = state.with_(x=x, y=state.y if state.y in cols else default_y(cols, x))
    if (state.queries or state.window is not None) and data.n_prompts:
        n_tok = len(data.query_tokens(prompt, attention))
        window = None if state.window is None or n_tok <= figures.MAX_TOKENS else \
            min(state.window, n_tok - figures.MAX_TOKENS)
        state = state.with_(queries=tuple(q for q in state.queries if q < n_tok), window=window)
    return state


def apply_event(state: ViewState, trigger: str | None, value: Any) -> ViewState:
    """The state after one control changed or one figure was clicked. A dropdown reporting
    no value is ignored: Dash empties a dropdown whose value is not (yet) among its options,
    which happens while a shared URL loads, and that must not undo the URL's state."""
    if value is None and trigger in ("run", "prompt", "layer", "head", "view", "metric", "compare", "scatter-x",
                                     "scatter-y", "attention"):
        return state
    if trigger == "run":
        return state.with_(run=str(value), prompt=0, compare=None, queries=(), window=None, attention="")
    if trigger == "attention":  # another attention has other query tokens
        return state.with_(attention=str(value or ""), queries=(), window=None)
    if trigger == "prompt" and value is not None:
        return state.with_(prompt=int(value), queries=(), window=None) if int(value) != state.prompt else state
    if trigger in ("prev", "next"):
        return state.with_(prompt=max(0, state.prompt + (1 if trigger == "next" else -1)), queries=(), window=None)
    if trigger == "window":  # emptied: back to the automatic window
        return state.with_(window=None if value in (None, "") else max(0, int(value)))
    if trigger == "prompt-search":
        return state.with_(search=str(value or "")[:120])
    if trigger in ("layer", "head") and value is not None:
        return state.with_(**{trigger: int(value)})
    if trigger in ("grid", "result-head", "circuit-head"):  # [layer, head] heatmaps: x is the head, y the layer
        picked = figures.head_of_click(value)
        return state.with_(layer=picked[0], head=picked[1]) if picked else state
    if trigger in ("resid-norm", "result-layer", "result-probe"):  # [layer, position] maps; probe curves by layer
        point = _point(value)
        axis = "x" if trigger == "result-probe" else "y"
        return state.with_(layer=int(round(float(point[axis])))) if point and point.get(axis) is not None else state
    if trigger in ("scatter", "circuit-graph"):  # customdata [layer, head]
        point = _point(value)
        cd = point.get("customdata") if point else None
        if isinstance(cd, dict):  # a row of a typed array arrives as {"0": layer, "1": head}
            cd = [cd.get("0"), cd.get("1")]
        if isinstance(cd, list) and len(cd) == 2:
            return state.with_(layer=int(cd[0]), head=int(cd[1]))
    if trigger == "layer-view":
        point = _point(value)
        if point and point.get("customdata") is not None:
            return state.with_(head=int(point["customdata"]))
    if trigger == "head-lines":
        point = _point(value)
        if point and point.get("x") == 0 and isinstance(point.get("customdata"), int | float):
            q = int(point["customdata"])  # a query token was clicked: toggle it
            return state.with_(queries=tuple(sorted(set(state.queries) ^ {q})))
    if trigger == "queries":
        return state.with_(queries=tuple(sorted(int(q) for q in value or [])))
    if trigger == "view" and value in VIEWS:
        return state.with_(view=value)
    if trigger == "metric":
        return state.with_(metric=value or THUMBNAILS)
    if trigger == "compare":
        return state.with_(compare=None if value is None else int(value))
    if trigger in ("scatter-x", "scatter-y"):
        return state.with_(**{trigger[-1]: value or ""})
    return state


def _point(click: Any) -> dict | None:
    try:
        return click["points"][0]
    except (TypeError, KeyError, IndexError):
        return None


# ----------------------------------------------------------------------- layout
def metric_options(data: RunData) -> tuple[list[dict], list[dict]]:
    """Options of the grid's colouring and of the scatter's axes: the run's per-head numbers."""
    cols = [] if data.error else list(data.head_columns())
    return ([{"label": "pattern thumbnails", "value": THUMBNAILS}] + [{"label": f"colour by {c}", "value": c}
                                                                      for c in cols],
            [{"label": c, "value": c} for c in cols])


def _dropdown(id_: str, options=None, value=None, width="100%", **kw) -> dcc.Dropdown:
    return dcc.Dropdown(id=id_, options=options or [], value=value, style={"width": width}, **kw)


def layout(registry: Registry) -> html.Div:
    first = registry.get(registry.ids()[0])
    n_layers = first.n_layers if not first.error else 1
    n_heads = first.n_heads if not first.error else 1
    metrics, columns = metric_options(first)
    panel = {v: {"display": "block" if v == "head" else "none"} for v in VIEWS}
    graph = lambda id_, **kw: dcc.Graph(id=id_, config=GRAPH_CONFIG, **kw)  # noqa: E731
    return html.Div([
        dcc.Location(id="url", refresh=False),
        dcc.Store(id="generation", data=0),
        dcc.Store(id="state"), dcc.Store(id="grid-drawn"), dcc.Store(id="tokens-drawn"), dcc.Store(id="grid-outline"),
        dcc.Store(id="prompts-drawn"),
        html.Div([
            html.H3("probe dashboard", style={"margin": "0 16px 0 0"}),
            _dropdown("run", registry.options(), registry.ids()[0], "260px", clearable=False),
            html.Button("Refresh", id="refresh", title="re-read the run (shows shards published since)"),
            html.Div(id="run-status", style={"marginLeft": "12px", "fontSize": "13px"}),
        ], style={"display": "flex", "alignItems": "center", "gap": "8px"}),
        html.Div([
            html.Button("◀", id="prev", title="previous prompt"),
            _dropdown("prompt", prompt_options(registry, registry.ids()[0], None, 0), 0, "60%", clearable=False,
                      placeholder="prompt"),
            html.Button("▶", id="next", title="next prompt"),
            dcc.Input(id="prompt-search", type="search", placeholder="search prompts by text", debounce=True,
                      style={"width": "260px"}),
        ], style={"display": "flex", "alignItems": "center", "gap": "6px", "margin": "8px 0"}),
        html.Div(["attention: ", dcc.RadioItems(
            id="attention", options=[{"label": ATTENTION_LABELS[a], "value": a} for a in ENCODER_DECODER_ATTENTIONS],
            value=None, inline=True, labelStyle={"marginRight": "10px"})],
            id="attention-box", style=HIDDEN),  # shown for encoder-decoder runs (run_status)
        html.Div(id="prompt-text", style={"fontStyle": "italic"}),
        html.Div(id="prompt-labels", style={"fontSize": "12px", "color": "#555"}),
        html.Div(["query tokens (select to sum their attention): ",
                  dcc.Checklist(id="queries", options=[], value=[], inline=True,
                                labelStyle={"marginRight": "8px", "fontFamily": "monospace"})],
                 style={"margin": "6px 0"}),
        html.Div([
            html.Div([
                html.Div(["grid: ", _dropdown("metric", metrics,
                                              THUMBNAILS, "220px", clearable=False)],
                         style={"display": "flex", "alignItems": "center", "gap": "6px"}),
                graph("grid"),
                html.Div(["layer ", _dropdown("layer", [{"label": str(i), "value": i} for i in range(n_layers)], 0,
                                              "80px", clearable=False),
                          " head ", _dropdown("head", [{"label": str(i), "value": i} for i in range(n_heads)], 0,
                                              "80px", clearable=False)],
                         style={"display": "flex", "alignItems": "center", "gap": "6px"}),
                html.Div(id="head-card", style={"marginTop": "8px", "fontSize": "13px"}),
            ], style={"flex": "0 0 34%", "minWidth": "300px"}),
            html.Div([
                dcc.Tabs(id="view", value="head", children=[dcc.Tab(label=VIEW_LABELS[v], value=v) for v in VIEWS]),
                html.Div(id="view-msg", className="missing", style={"color": "#a00", "margin": "6px"}),
                html.Div(id="panel-head", style=panel["head"], children=[
                    html.Div(["window start ", dcc.Input(
                        id="window", type="number", min=0, step=1, debounce=True, placeholder="auto",
                        style={"width": "80px"}), f" (prompts longer than {figures.MAX_TOKENS} tokens show a window "
                                                  "of them; the token view still finds each query's top keys "
                                                  "anywhere)"], style={"fontSize": "12px"}),
                    graph("head-heatmap"), graph("head-summed", style=HIDDEN),
                    graph("head-lines", clear_on_unhover=True)]),
                html.Div(id="panel-layer", style=panel["layer"], children=[graph("layer-view"), graph("resid-norm")]),
                html.Div(id="panel-metrics", style=panel["metrics"], children=[
                    html.Div(["x ", _dropdown("scatter-x", columns, width="240px", placeholder="metric",
                                                 clearable=False),
                              " y ", _dropdown("scatter-y", columns, width="240px", placeholder="metric",
                                                 clearable=False)],
                             style={"display": "flex", "alignItems": "center", "gap": "6px"}),
                    graph("scatter"), html.Div(id="metrics-msg")]),
                html.Div(id="panel-results", style=panel["results"]),
                html.Div(id="panel-circuit", style=panel["circuit"]),
                html.Div(id="panel-qk", style=panel["qk"], children=[html.Div(id="qk-msg"), graph("qk")]),
                html.Div(id="panel-compare", style=panel["compare"], children=[
                    html.Div(["compare with prompt ", _dropdown("compare", [], None, "60%",
                                                                placeholder="(its twin, else the next prompt)", clearable=False)],
                             style={"display": "flex", "alignItems": "center", "gap": "6px"}),
                    html.Div(id="compare-msg"), graph("compare-graph")]),
            ], style={"flex": "1 1 auto", "minWidth": "0"}),
        ], style={"display": "flex", "gap": "16px"}),
    ], style={"fontFamily": "sans-serif", "margin": "10px"})


# ----------------------------------------------------------------------- app
STATE_INPUTS = ["run", "prompt", "layer", "head", "view", "metric", "compare", "queries", "scatter-x", "scatter-y",
                "window", "prompt-search", "attention"]
ATTENTION_LABELS = {"cross": "cross (target x source)", "encoder": "encoder (source)", "decoder": "decoder (target)"}
CLICKS = ["grid", "scatter", "layer-view", "head-lines", "resid-norm"]
RESULT_GRAPHS = {"type": "result", "kind": ALL, "name": ALL}  # the results panel's graphs (views.view_results)
CIRCUIT_GRAPHS = {"type": "circuit", "kind": ALL, "name": ALL}  # the circuit panel's graphs (views.view_circuit)
VIEW_OUTPUTS = {"head": [("head-heatmap", "figure"), ("head-summed", "figure"), ("head-summed", "style"),
                         ("head-lines", "figure")],
                "layer": [("layer-view", "figure"), ("resid-norm", "figure")],
                "metrics": [("scatter", "figure"), ("metrics-msg", "children")],
                "results": [("panel-results", "children")],
                "qk": [("qk", "figure"), ("qk-msg", "children")],
                "compare": [("compare-graph", "figure"), ("compare-msg", "children")],
                "circuit": [("panel-circuit", "children")]}
OUT_KEYS = {("panel-results", "children"): "results", ("panel-circuit", "children"): "circuit",
            ("head-summed", "style"): "head-summed-style"}


def state_outputs(s: ViewState) -> list[Any]:
    return [to_query(s), s.run, s.prompt, s.layer, s.head, s.view, s.metric, s.compare, list(s.queries),
            s.x or None, s.y or None, s.window, s.search, s.attention or None]


def next_state(search: str | None, stored: str | None, trigger: str | None, value: Any,
               registry: Registry) -> ViewState:
    """The state after an event: the URL's on page load or back/forward, otherwise the
    stored state changed by the one control or click that fired."""
    if trigger in (None, "url") or stored is None:
        state = from_query(search)
    else:
        try:
            state = apply_event(from_query(stored), trigger, value)
        except (TypeError, ValueError, OverflowError):  # a value no control of this page sends: ignore it
            state = from_query(stored)
    return clamp(state, registry)


def create_app(run_paths: list[str | Path], cache_bytes: int = CACHE_BYTES) -> dash.Dash:
    """A Dash app serving exactly these runs (opened lazily, on first use), each caching
    up to ``cache_bytes`` of the slices its views read."""
    registry = Registry(run_paths, cache_bytes=cache_bytes)
    app = dash.Dash(__name__, title="probe dashboard", update_title=None,
                    assets_folder=str(Path(__file__).parent / "assets"), serve_locally=True)
    app.registry = registry
    app.layout = lambda: layout(registry)

    @app.callback(
        [Output("state", "data"), Output("url", "search")] + [Output(c, "value") for c in STATE_INPUTS],
        [Input("url", "search")] + [Input(c, "value") for c in STATE_INPUTS]
        + [Input(c, "clickData") for c in CLICKS] + [Input("prev", "n_clicks"), Input("next", "n_clicks"),
                                                     Input(RESULT_GRAPHS, "clickData"),
                                                     Input(CIRCUIT_GRAPHS, "clickData")],
        State("state", "data"),
    )
    def sync_state(search, *values):
        *values, _results, _circuit, stored = values
        trigger, value = ctx.triggered_id, None
        if isinstance(trigger, dict):  # a results or circuit panel's graph: its kind says what a click selects
            trigger = f"{trigger.get('type')}-{trigger.get('kind')}"
            value = ctx.triggered[0]["value"] if ctx.triggered else None
        else:
            value = dict(zip(STATE_INPUTS + CLICKS, values)).get(trigger)
        state = next_state(search, stored, trigger, value, registry)
        out = state_outputs(state)
        # write back only what changed: each control set costs the browser a re-render, and an
        # unchanged state must not redraw the results panel (its new graphs would fire this again)
        controls = [no_update if new == old else new for new, old in zip(out[1:], values[:len(STATE_INPUTS)])]
        return [no_update if out[0] == stored else out[0], no_update if out[0] == search else out[0], *controls]

    @app.callback(Output("generation", "data"), Input("refresh", "n_clicks"), State("state", "data"),
                  State("generation", "data"), prevent_initial_call=True)
    def refresh(_, query, generation):
        try:
            registry.get(from_query(query).run).refresh()
        except READ_ERRORS:
            pass
        return (generation or 0) + 1

    @app.callback(Output("run-status", "children"), Output("layer", "options"), Output("head", "options"),
                  Output("metric", "options"), Output("scatter-x", "options"), Output("scatter-y", "options"),
                  Output("attention-box", "style"), Input("run", "value"), Input("generation", "data"))
    def run_status(run_id, _):
        try:
            data = registry.get(run_id)
        except READ_ERRORS as e:
            return (error_message(e),) + (no_update,) * 6
        if data.error:
            return (html.Span(data.error, style={"color": "#a00"}),) + (no_update,) * 6
        metrics, columns = metric_options(data)
        n_layers = max([data.n_layers_of(a) for a in data.attentions] or [data.n_layers])
        return (data.status(), [{"label": str(i), "value": i} for i in range(n_layers)],
                [{"label": str(i), "value": i} for i in range(data.n_heads)], metrics, columns, columns,
                SHOWN if data.attentions else HIDDEN)

    @app.callback(Output("prompt", "options"), Output("compare", "options"), Output("prompts-drawn", "data"),
                  Input("state", "data"), Input("generation", "data"), State("prompts-drawn", "data"))
    def prompts(query, generation, drawn):
        s = from_query(query)
        key = [s.run, s.search, s.prompt, s.compare, generation]
        if key == drawn:  # a head switch: the options are what the browser has
            return no_update, no_update, no_update
        opts = prompt_options(registry, s.run, s.search, s.prompt)
        other = prompt_options(registry, s.run, s.search, s.compare) if s.compare is not None else opts
        return opts, other, key

    @app.callback(Output("queries", "options"), Output("prompt-text", "children"), Output("prompt-labels", "children"),
                  Output("tokens-drawn", "data"), Input("state", "data"), Input("generation", "data"),
                  State("tokens-drawn", "data"))
    def tokens(query, generation, drawn):
        s = from_query(query)
        key = [s.run, s.prompt, s.attention, generation]
        if key == drawn:
            return no_update, no_update, no_update, no_update
        return (*token_checklist(registry, s), key)

    @app.callback(Output("grid", "figure"), Output("grid-drawn", "data"), Input("state", "data"),
                  Input("generation", "data"), State("grid-drawn", "data"))
    def grid(query, generation, drawn):
        s = from_query(query)
        key = [s.run, s.prompt, s.metric, s.attention, generation]
        if key == drawn:  # only the selected head moved: OUTLINE_JS moves the outline in the browser
            return no_update, no_update
        return grid_figure(registry, s), key

    app.clientside_callback(OUTLINE_JS, Output("grid-outline", "data"), Input("state", "data"))

    app.clientside_callback(HOVER_JS, Output("head-lines", "figure", allow_duplicate=True),
                            Input("head-lines", "hoverData"), State("head-lines", "figure"), prevent_initial_call=True)

    view_outputs = [(cid, prop) for v in VIEWS for cid, prop in VIEW_OUTPUTS[v]]

    @app.callback([Output(f"panel-{v}", "style") for v in VIEWS] + [Output("view-msg", "children"),
                                                                     Output("head-card", "children")]
                  + [Output(cid, prop) for cid, prop in view_outputs],
                  Input("state", "data"), Input("generation", "data"))
    def view(query, _):
        s = from_query(query)
        produced, message = render_view(registry, s)
        styles = [SHOWN if v == s.view and message is None else HIDDEN for v in VIEWS]
        card = produced.pop("head-card", no_update)
        if card is no_update and message is None:
            try:
                card = head_card(registry.get(s.run), s.layer, s.head)
            except READ_ERRORS as e:
                card = error_message(e)
        outs = [produced.get(OUT_KEYS.get((cid, prop), cid), no_update) for cid, prop in view_outputs]
        return styles + [message or "", card if message is None else ""] + outs

    return app
