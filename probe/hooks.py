"""Hook points: named identity modules that let callers read or replace an activation.

This module is a leaf: it imports only torch and the leaves `probe.errors` and `probe.hook_names`
(what a hook *name* says, torch-free, so the reader and the dashboard can ask it without loading
torch), so `models` can depend on it without pulling in the rest of `probe` (docs/design.md,
"Layers").

The hook contract is TransformerLens's: a hook is ``fn(activation, hook) -> tensor | None``
where ``hook`` is the `HookPoint` (``hook.name`` is its full name). Returning a tensor
replaces the activation; returning None leaves it unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Union

import torch
from torch import nn

from probe.errors import MissingHook
from probe.hook_names import name_matcher

HookFn = Callable[[torch.Tensor, "HookPoint"], Union[torch.Tensor, None]]  # noqa: UP007 (forward ref)


class HookPoint(nn.Module):
    """An identity on the forward pass that runs the hooks attached to it.

    `__call__` is overridden on purpose: with no hooks attached a hook point costs one
    attribute check, not a trip through `nn.Module.__call__`, so an unhooked model runs at
    the bare model's speed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""
        self.fwd_hooks: list[HookFn] = []

    def add_hook(self, fn: HookFn) -> Callable[[], None]:
        """Attach ``fn``; returns a function that removes exactly this attachment."""
        self.fwd_hooks.append(fn)

        def remove() -> None:
            # Remove by identity so the same function attached twice is removed once.
            for i, h in enumerate(self.fwd_hooks):
                if h is fn:
                    del self.fwd_hooks[i]
                    return

        return remove

    def remove_hooks(self) -> None:
        self.fwd_hooks.clear()

    @property
    def has_hooks(self) -> bool:
        return bool(self.fwd_hooks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fn in list(self.fwd_hooks):
            out = fn(x, self)
            if out is not None:
                if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise ValueError(
                        f"hook {getattr(fn, '__name__', fn)!r} on {self.name} returned {got}; "
                        f"a hook must return None or a tensor of shape {tuple(x.shape)}"
                    )
                x = out
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not self.fwd_hooks:
            return x
        return self.forward(x)

    def extra_repr(self) -> str:
        return self.name


class HookedModule(nn.Module):
    """Mixin giving a module TransformerLens-style hook management over its HookPoints."""

    def setup_hooks(self) -> None:
        """Name every HookPoint by its module path; call at the end of ``__init__``."""
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    @property
    def hook_names(self) -> list[str]:
        return list(self.hook_dict)

    def check_hook_name(self, name: str) -> HookPoint:
        try:
            return self.hook_dict[name]
        except KeyError:
            raise MissingHook(unknown_hook_message(name, self.hook_dict)) from None

    def reset_hooks(self) -> None:
        for hp in self.hook_dict.values():
            hp.remove_hooks()

    @contextlib.contextmanager
    def hooks(
        self, fwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]] = ()
    ) -> Iterator[HookedModule]:
        """Attach hooks for the duration of a ``with`` block; they are removed on exit,
        also when the block or a hook raises. A hook name may be a glob or a predicate."""
        removers: list[Callable[[], None]] = []
        try:
            for name, fn in fwd_hooks:
                points = self.resolve_hook_points(name)
                for hp in points:
                    removers.append(hp.add_hook(fn))
            yield self
        finally:
            for remove in reversed(removers):
                remove()

    def resolve_hook_points(self, name: str | Callable[[str], bool]) -> list[HookPoint]:
        if isinstance(name, str) and not any(c in name for c in "*?["):
            return [self.check_hook_name(name)]
        match = name_matcher(name)
        points = [hp for n, hp in self.hook_dict.items() if match(n)]
        if not points:
            raise MissingHook(unknown_hook_message(str(name), self.hook_dict))
        return points


def unknown_hook_message(name: str, hook_dict: dict[str, HookPoint]) -> str:
    # Show the layer-0 names (the set repeats per layer) so the user sees what exists.
    examples = [n for n in hook_dict if not n.startswith("blocks.") or n.startswith("blocks.0.")]
    close = [n for n in hook_dict if name.split(".")[-1] in n][:5]
    hint = f" Did you mean one of {close}?" if close else ""
    return (
        f"no hook point named {name!r}.{hint} Hook names follow TransformerLens, e.g. "
        f"{examples} (layer 0 shown; 'blocks.N.' repeats for every layer)."
    )
