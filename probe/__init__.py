"""probe: a mechanistic-interpretability and probing workbench.

`import probe` stays light: it must not import `models` eagerly, because
`models` imports `probe.hooks` (docs/design.md, "Layers"). Model-facing names are re-exported
lazily on first attribute access.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": ("models", "load"),
    "HookedTransformer": ("models", "HookedTransformer"),
    "TransformerConfig": ("models", "TransformerConfig"),
    "ActivationCache": ("models", "ActivationCache"),
    "record": ("probe.recorder", "record"),
    "open": ("probe.reader", "open_run"),
    "Run": ("probe.reader", "Run"),
    "load_prompts": ("probe.prompts", "load_prompts"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'probe' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
