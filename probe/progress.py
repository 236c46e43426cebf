"""Progress for long jobs: a rich bar on a terminal, plain log lines otherwise (CI, pipes)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def rich_bar(stream: TextIO, label: str, total: int, extra: str, completed: int = 0, **fields):
    """A started rich progress bar (label, bar, n/total, ``extra`` text, ETA) when ``stream``
    is a terminal; (None, None) otherwise, and the caller prints plain lines."""
    if not stream.isatty():
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(extra),
                       TimeRemainingColumn())
    task = bar.add_task(label, total=total, completed=completed, **fields)
    bar.start()
    return bar, task


class Progress:
    """Counts prompts and tokens; shows rate and ETA.

    ``Progress(total_prompts, total_tokens, label)``; call ``advance(prompts, tokens)``
    and ``close()``. On a TTY it draws a rich bar; otherwise it prints one line at most
    every ``interval`` seconds, and a final line.
    """

    def __init__(self, total_prompts: int, total_tokens: int, label: str = "recording",
                 stream: TextIO | None = None, interval: float = 5.0, done_prompts: int = 0, done_tokens: int = 0):
        self.total_prompts, self.total_tokens = total_prompts, total_tokens
        self.prompts, self.tokens = done_prompts, done_tokens
        self.start_tokens = done_tokens
        self.label = label
        self.stream = stream or sys.stderr
        self.interval = interval
        self.t0 = time.perf_counter()
        self.last_print = 0.0
        self._rich, self._task = rich_bar(self.stream, label, total_prompts, "{task.fields[rate]}",
                                          completed=done_prompts, rate="")

    def rate(self) -> tuple[float, float]:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        return (self.tokens - self.start_tokens) / dt, dt

    def eta(self) -> float:
        tok_s, _ = self.rate()
        return (self.total_tokens - self.tokens) / tok_s if tok_s > 0 else float("inf")

    def advance(self, prompts: int, tokens: int) -> None:
        self.prompts += prompts
        self.tokens += tokens
        tok_s, dt = self.rate()
        prompt_s = tok_s * (self.prompts / max(self.tokens, 1))
        if self._rich is not None:
            self._rich.update(self._task, completed=self.prompts, rate=f"{prompt_s:.1f} prompts/s {tok_s:.0f} tok/s")
        elif dt - self.last_print >= self.interval or self.prompts >= self.total_prompts:
            self.last_print = dt
            print(f"{self.label}: {self.prompts}/{self.total_prompts} prompts, {self.tokens}/{self.total_tokens} "
                  f"tokens, {prompt_s:.1f} prompts/s, {tok_s:.0f} tokens/s, ETA {self.eta():.0f}s",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()


class StepProgress:
    """Progress over optimisation steps, with the latest loss: a rich bar on a terminal,
    a plain line every ``interval`` seconds otherwise."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, interval: float = 5.0):
        self.total, self.label = total, label
        self.stream = stream or sys.stderr
        self.interval = interval
        self.t0 = time.perf_counter()
        self.last_print = 0.0
        self._rich, self._task = rich_bar(self.stream, label, total, "loss {task.fields[loss]}", loss="")

    def __call__(self, step: int, loss: float) -> None:
        done = step + 1
        if self._rich is not None:
            self._rich.update(self._task, completed=done, loss=f"{loss:.4f}")
            return
        dt = time.perf_counter() - self.t0
        if dt - self.last_print >= self.interval or done == self.total:
            self.last_print = dt
            eta = dt / done * (self.total - done)
            print(f"{self.label}: step {done}/{self.total}, loss {loss:.4f}, {done / dt:.1f} steps/s, ETA {eta:.0f}s",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
