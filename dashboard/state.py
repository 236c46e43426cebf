"""The view state and its URL query string, so that a view can be shared and reloaded:
``?run=0&prompt=1&layer=3&head=1&view=head&metric=induction&compare=0&q=10,11&window=200&search=tired``
(and ``attention=cross`` on an encoder-decoder run).
The circuit view (``view=circuit``) needs no field of its own: the selected head is layer/head.

Parsing never fails: a value that is missing or malformed falls back to its default (the
app then checks ranges against the run, which only it knows).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from urllib.parse import parse_qs, urlencode

VIEWS = ("head", "layer", "metrics", "results", "qk", "compare", "circuit")
ATTENTIONS = ("", "encoder", "decoder", "cross")
THUMBNAILS = ""  # the grid's metric when it shows pattern thumbnails


@dataclass(frozen=True)
class ViewState:
    run: str = "0"
    prompt: int = 0
    layer: int = 0
    head: int = 0
    view: str = "head"
    metric: str = THUMBNAILS  # what colours the all-heads grid
    compare: int | None = None  # second prompt of the compare view
    queries: tuple[int, ...] = field(default_factory=tuple)  # selected query positions
    x: str = ""  # scatter axes of the metrics view
    y: str = ""
    window: int | None = None  # first position of a long prompt's heatmap window (None: automatic)
    search: str = ""  # the prompt picker's search text
    attention: str = ""  # encoder-decoder runs: "encoder", "decoder" or "cross" ("": the run's default)

    def with_(self, **changes) -> ViewState:
        return replace(self, **changes)


DEFAULT = ViewState()


MAX_DIGITS = 12  # no run has a trillion prompts, tokens, layers or heads


def _natural(text: str) -> int | None:
    """A non-negative number written in ASCII digits, or None. `str.isdigit` is true for
    '²' or '٣', which `int` refuses or reads, and `int` also takes '+3', '3_0' or 5000 digits
    (slowly): a URL holds none of these, so none counts."""
    text = text.strip()
    if not (0 < len(text) <= MAX_DIGITS and text.isascii() and text.isdigit()):
        return None
    return int(text)


def _int(values: list[str] | None, default: int | None) -> int | None:
    v = _natural(values[0]) if values else None
    return default if v is None else v


def from_query(search: str | None) -> ViewState:
    """ViewState from ``location.search`` ("?a=1&b=2" or "a=1&b=2" or empty)."""
    q = parse_qs((search or "").lstrip("?"), keep_blank_values=False)

    def text(key: str, default: str, allowed=None, limit: int = 120) -> str:
        v = q.get(key, [default])[0][:limit]
        return v if allowed is None or v in allowed else default

    queries = [v for v in (_natural(part) for part in q.get("q", [""])[0].split(",")) if v is not None][:64]
    return ViewState(run=text("run", DEFAULT.run, limit=20), prompt=_int(q.get("prompt"), 0), layer=_int(q.get("layer"), 0),
                     head=_int(q.get("head"), 0), view=text("view", DEFAULT.view, VIEWS),
                     metric=text("metric", THUMBNAILS), compare=_int(q.get("compare"), None),
                     queries=tuple(sorted(set(queries))), x=text("x", ""), y=text("y", ""),
                     window=_int(q.get("window"), None), search=text("search", ""),
                     attention=text("attention", "", ATTENTIONS))


def to_query(state: ViewState) -> str:
    """``?...`` holding every field that differs from the default, in a stable order."""
    items = []
    for key, value in asdict(state).items():
        if key == "queries":
            if value:
                items.append(("q", ",".join(str(v) for v in value)))
        elif value is not None and value != getattr(DEFAULT, key) or key in ("run", "prompt", "layer", "head"):
            items.append((key, str(value)))
    return "?" + urlencode(items)
