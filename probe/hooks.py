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
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
from torch import nn

from probe.errors import InputError, MissingHook
from probe.hook_names import block_of, name_matcher

HookFn = Callable[[torch.Tensor, "HookPoint"], Union[torch.Tensor, None]]  # noqa: UP007 (forward ref)
HookName = Union[str, Callable[[str], bool]]  # noqa: UP007 (runtime alias on 3.10)
Direction = Literal["fwd", "bwd"]


@dataclass(eq=False)
class LensHandle:
    """One attachment of a hook to a hook point (TransformerLens's `LensHandle`): the user's
    function, whether `reset_hooks` spares it, and the `hooks()` context level that added it.
    `remove()` detaches exactly this attachment and nothing else."""

    user_hook: HookFn
    is_permanent: bool = False
    context_level: int | None = None
    _detach: Callable[[], None] = field(default=lambda: None, repr=False)

    def remove(self) -> None:
        self._detach()
        self._detach = lambda: None  # removing twice is harmless


def _matches(handle: LensHandle, including_permanent: bool, level: int | None) -> bool:
    return (including_permanent or not handle.is_permanent) and (level is None or handle.context_level == level)


class HookPoint(nn.Module):
    """An identity on the forward pass that runs the hooks attached to it.

    `__call__` is overridden on purpose: with no hooks attached a hook point costs two list
    checks, not a trip through `nn.Module.__call__`, so an unhooked model runs at the bare
    model's speed. Backward hooks are PyTorch full backward hooks on this module, as in
    TransformerLens, so only a hook point with one goes through `nn.Module.__call__`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""
        self.fwd_hooks: list[LensHandle] = []
        self.bwd_hooks: list[LensHandle] = []
        self.ctx: dict[Any, Any] = {}

    def add_hook(self, hook: HookFn, dir: Direction = "fwd", is_permanent: bool = False, level: int | None = None,
                 prepend: bool = False) -> LensHandle:
        """Attach ``hook`` (TransformerLens's signature): ``fn(activation, hook)`` on the
        forward pass, ``fn(grad, hook)`` on the backward pass (``grad`` is the gradient of the
        hook point's output; a returned tensor replaces the gradient passed upstream). With
        ``prepend`` it runs before the hooks already there. Returns the handle."""
        handle = LensHandle(hook, is_permanent, level)
        if dir == "fwd":
            handles = self.fwd_hooks
        elif dir == "bwd":
            handles = self.bwd_hooks
            torch_handle = self.register_full_backward_hook(self._backward_hook(hook), prepend=prepend)
        else:
            raise InputError(f"a hook's dir is 'fwd' or 'bwd', got {dir!r}")
        handles.insert(0, handle) if prepend else handles.append(handle)

        def detach() -> None:
            # By identity, so the same function attached twice is detached once.
            for i, h in enumerate(handles):
                if h is handle:
                    del handles[i]
                    break
            if dir == "bwd":
                torch_handle.remove()

        handle._detach = detach
        return handle

    def add_perma_hook(self, hook: HookFn, dir: Direction = "fwd") -> LensHandle:
        return self.add_hook(hook, dir=dir, is_permanent=True)

    def _backward_hook(self, fn: HookFn) -> Callable[..., tuple[torch.Tensor] | None]:
        """fn(grad, hook) as a PyTorch full backward hook. As in TransformerLens (and PyTorch),
        every backward hook of a point sees the same incoming gradient; the last one that
        returns a tensor sets the gradient passed upstream."""

        def full_hook(module: nn.Module, grad_input: Any, grad_output: tuple[torch.Tensor, ...]):
            out = fn(grad_output[0], self)
            return None if out is None else (out,)

        full_hook.__name__ = repr(fn)
        return full_hook

    def remove_hooks(self, dir: Literal["fwd", "bwd", "both"] = "fwd", including_permanent: bool = False,
                     level: int | None = None) -> None:
        """Remove this point's hooks of ``dir`` (TransformerLens's defaults: forward hooks,
        permanent ones spared; ``level`` only those a `hooks()` context of that depth added)."""
        if dir not in ("fwd", "bwd", "both"):
            raise InputError(f"dir is 'fwd', 'bwd' or 'both', got {dir!r}")
        lists = [self.fwd_hooks] * (dir != "bwd") + [self.bwd_hooks] * (dir != "fwd")
        for handles in lists:
            for handle in [h for h in handles if _matches(h, including_permanent, level)]:
                handle.remove()

    def has_hooks(self, dir: Literal["fwd", "bwd", "both"] = "both", including_permanent: bool = True,
                  level: int | None = None) -> bool:
        """Whether hooks of ``dir`` are attached (TransformerLens's signature). The components
        ask it to decide whether to compute an activation only some hooks need."""
        if including_permanent and level is None:  # the components' question: keep it cheap
            return bool((dir != "bwd" and self.fwd_hooks) or (dir != "fwd" and self.bwd_hooks))
        lists = [self.fwd_hooks] * (dir != "bwd") + [self.bwd_hooks] * (dir != "fwd")
        return any(_matches(h, including_permanent, level) for handles in lists for h in handles)

    def clear_context(self) -> None:
        self.ctx = {}

    def layer(self) -> int:
        """The block index of a "blocks.L...." hook (TransformerLens's `hook.layer()`)."""
        layer = block_of(self.name)
        if layer is None:
            raise InputError(f"hook {self.name!r} is not inside a block, so it has no layer")
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for handle in list(self.fwd_hooks):
            out = handle.user_hook(x, self)
            if out is not None:
                if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    fn = handle.user_hook
                    raise ValueError(
                        f"hook {getattr(fn, '__name__', fn)!r} on {self.name} returned {got}; "
                        f"a hook must return None or a tensor of shape {tuple(x.shape)}"
                    )
                x = out
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.bwd_hooks:
            return super().__call__(x)  # PyTorch wires the full backward hooks around forward
        if not self.fwd_hooks:
            return x
        return self.forward(x)

    def extra_repr(self) -> str:
        return self.name


class HookedModule(nn.Module):
    """Mixin giving a module TransformerLens-style hook management over its HookPoints.

    Every temporary attachment (`hooks`, `run_with_hooks`) is removed by its own handle on
    exit, so a caller's permanent hooks and hooks added by an outer context survive."""

    def setup_hooks(self) -> None:
        """Name every HookPoint by its module path; call at the end of ``__init__``."""
        self.hook_dict: dict[str, HookPoint] = {}
        self.context_level = 0
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    @property
    def hook_names(self) -> list[str]:
        return list(self.hook_dict)

    def hook_points(self) -> list[HookPoint]:
        return list(self.hook_dict.values())

    def check_hook_name(self, name: str) -> HookPoint:
        try:
            return self.hook_dict[name]
        except KeyError:
            raise MissingHook(unknown_hook_message(name, self.hook_dict)) from None

    def add_hook(self, name: HookName, hook: HookFn, dir: Direction = "fwd", is_permanent: bool = False,
                 level: int | None = None, prepend: bool = False) -> list[LensHandle]:
        """Attach ``hook`` to the point ``name`` (or every point a predicate or glob accepts)
        until removed (`reset_hooks`; ``is_permanent`` ones only with ``including_permanent``).
        Returns the handles (TransformerLens returns None)."""
        points = self.resolve_hook_points(name, allow_none=callable(name))
        return [hp.add_hook(hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend) for hp in points]

    def add_perma_hook(self, name: HookName, hook: HookFn, dir: Direction = "fwd") -> list[LensHandle]:
        return self.add_hook(name, hook, dir=dir, is_permanent=True)

    def reset_hooks(self, clear_contexts: bool = True, direction: Literal["fwd", "bwd", "both"] = "both",
                    including_permanent: bool = False, level: int | None = None) -> None:
        """Remove hooks everywhere (TransformerLens's defaults: both directions, permanent
        hooks spared, every context level) and clear the hook points' ``ctx``."""
        for hp in self.hook_dict.values():
            if clear_contexts:
                hp.clear_context()
            hp.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def remove_all_hook_fns(self, direction: Literal["fwd", "bwd", "both"] = "both", including_permanent: bool = False,
                            level: int | None = None) -> None:
        self.reset_hooks(False, direction, including_permanent, level)

    def clear_contexts(self) -> None:
        for hp in self.hook_dict.values():
            hp.clear_context()

    @contextlib.contextmanager
    def hooks(
        self,
        fwd_hooks: Iterable[tuple[HookName, HookFn]] = (),
        bwd_hooks: Iterable[tuple[HookName, HookFn]] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Iterator[HookedModule]:
        """Attach hooks for the duration of a ``with`` block; they are removed on exit, also
        when the block or a hook raises (unless ``reset_hooks_end=False``: then they stay until
        `reset_hooks`, e.g. for a backward pass after the block). A hook name may be a glob or
        a predicate. Only what this block attached is removed."""
        added: list[LensHandle] = []
        self.context_level += 1
        try:
            for dir, pairs in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
                for name, fn in pairs:
                    for hp in self.resolve_hook_points(name, allow_none=callable(name)):
                        added.append(hp.add_hook(fn, dir=dir, level=self.context_level))
            yield self
        finally:
            if reset_hooks_end:
                for handle in reversed(added):
                    handle.remove()
                if clear_contexts:
                    self.clear_contexts()
            self.context_level -= 1

    def is_dormant(self, name: str) -> bool:
        """Whether the point ``name`` is one that a forward pass does not reach unless switched on
        (TransformerLens's opt-in hooks, e.g. ``hook_q_input`` before `set_use_split_qkv_input`).
        None here; a model with such points says which."""
        return False

    def resolve_hook_points(self, name: HookName, allow_none: bool = False) -> list[HookPoint]:
        """The points a name, a glob or a predicate names; an unknown name or a glob matching
        nothing is refused (MissingHook), a predicate may match nothing with ``allow_none``.

        Dormant points (`is_dormant`) are left out of what a predicate matches, as in
        TransformerLens, where such a point is never called, so ``lambda name: True`` does not
        switch a model onto its per-head input path. An exact name reaches them (hooking one
        computes it), and so does a glob that matches nothing else."""
        if isinstance(name, str) and not any(c in name for c in "*?["):
            return [self.check_hook_name(name)]
        match = name_matcher(name)
        matched = [(n, hp) for n, hp in self.hook_dict.items() if match(n)]
        awake = [hp for n, hp in matched if not self.is_dormant(n)]
        points = awake if callable(name) or awake else [hp for _, hp in matched]
        if not points and not allow_none:
            raise MissingHook(unknown_hook_message(str(name), self.hook_dict))
        return points


def warn_bwd_hooks_reset(bwd_hooks: Iterable[Any], reset_hooks_end: bool) -> None:
    """TransformerLens's warning: backward hooks detached at the end of a forward-only call.
    (TransformerLens says they are removed before a backward pass can occur; in fact PyTorch
    captured them in this call's graph, so a backward of this output still runs them; later
    passes do not.)"""
    if reset_hooks_end and list(bwd_hooks):
        warnings.warn("Hooks will be reset at the end of run_with_hooks: backward hooks are detached now, so only a "
                      "backward pass of this call's output runs them (pass reset_hooks_end=False to keep them, then "
                      "call reset_hooks()).", stacklevel=3)


def unknown_hook_message(name: str, hook_dict: dict[str, HookPoint]) -> str:
    # Show the layer-0 names (the set repeats per layer) so the user sees what exists.
    examples = [n for n in hook_dict if not n.startswith("blocks.") or n.startswith("blocks.0.")]
    close = [n for n in hook_dict if name.split(".")[-1] in n][:5]
    hint = f" Did you mean one of {close}?" if close else ""
    return (
        f"no hook point named {name!r}.{hint} Hook names follow TransformerLens, e.g. "
        f"{examples} (layer 0 shown; 'blocks.N.' repeats for every layer)."
    )
