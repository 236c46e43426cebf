"""The contract between analyses and the dashboard: which kinds of result there are, and
how a result is kept next to the run it was computed from so that it says what it is.

An analysis saves a table with `save_result` as RUN/analyses/NAME.csv plus a sidecar
NAME.json (its kind, the command that produced it, when, its columns). `load_results` reads
every table back with its kind; `KINDS` says what each kind needs and how to compute it, which
is what the dashboard shows for a kind a run lacks. A CSV without a sidecar (written by hand,
by an older probe, or by ``probe patch -o RUN/analyses``) is judged by its columns.

Kept light (pandas, json, os; `probe.store` for the crash-safe write): the dashboard imports it.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from probe.errors import StoreError, one_line
from probe.paths import output_path_problem
from probe.store import atomic_write_text, fsync_dir

SIDECAR_SCHEMA = 1  # version of the NAME.json layout; a newer one is not read (upgrade probe)
RESULTS_DIR = "analyses"


# ----------------------------------------------------------------------- the kinds
@dataclass(frozen=True)
class ResultKind:
    """One kind of analysis result: what its table must hold and how to compute it."""

    name: str
    required: tuple[str, ...]  # columns every table of this kind has
    produce: str  # the command that computes it ("probe heads RUN")
    description: str  # one line: what the table is (a noun phrase: "No {description} saved")
    file_names: tuple[str, ...]  # file-name patterns (fnmatch) that mean this kind when none is given
    one_of: tuple[str, ...] = ()  # at least one of these too (a probe's accuracy or its R^2)
    labelled: tuple[str, ...] = ()  # index columns that hold labels, not numbers (a circuit's "IO", "S2", "all")

    def missing(self, columns: Iterable[str]) -> list[str]:
        """What the columns lack to be a table of this kind ([] when nothing)."""
        cols = set(map(str, columns))
        out = [c for c in self.required if c not in cols]
        if self.one_of and not cols & set(self.one_of):
            out.append(" or ".join(self.one_of))
        return out

    def is_named_by(self, name: str) -> bool:
        return any(fnmatchcase(name, pattern) for pattern in self.file_names)


PATCH_COMMAND = "probe patch --run RUN (twin prompts of the run), or probe patch --pairs FILE -o RUN/analyses"

ABLATION = ResultKind(
    "ablation", ("layer", "head", "effect"),
    "probe coref RUN (ablates the study's heads), or probe ablate --run RUN --metric accuracy",
    "ablation sweep (each head's effect on a metric when ablated)", ("ablation", "ablation_*"))
PATCH_RESID = ResultKind(
    "patch_resid", ("layer", "position", "normalized"), PATCH_COMMAND,
    "residual patching (the normalised metric per [layer, position])", ("patch_resid", "patch_resid_*"))
PATCH_HEADS = ResultKind(
    "patch_heads", ("layer", "head", "normalized"), PATCH_COMMAND,
    "head patching (the normalised metric per head)", ("patch_heads", "patch_heads_*"))
PROBES = ResultKind(
    "probes", ("layer",),
    "probe probes RUN --label FIELD (or --task pos on a ud-ewt run, --task antecedent on a coreference run)",
    "probe results (a linear probe's score per layer: accuracy, or R^2 for a ridge probe)",
    ("probes", "probes_*"), one_of=("test_acc", "test_r2"))
COREF = ResultKind(
    "coref", ("layer", "head", "accuracy", "ci_low", "ci_high"), "probe coref RUN",
    "coreference study (each head's antecedent accuracy, with its interval)", ("coref_heads",))
HEAD_METRICS = ResultKind(
    "head_metrics", ("layer", "head"), "probe heads RUN",
    "head metrics (per-head attention scores: previous token, induction, entropy, ...)", ("head_metrics",))

# Most specific first: a CSV without a sidecar takes the first kind whose columns it has, so
# head metrics (any per-head table) come last.
CIRCUIT_COMMAND = "probe circuit ioi --model MODEL -o RUN (or probe circuit induction --model toy-induction -o RUN)"
CIRCUIT_HEADS = ResultKind(
    "circuit_heads", ("layer", "head", "head_class", "in_circuit"), CIRCUIT_COMMAND,
    "circuit (each head's class and evidence: direct logit attribution, patching effects, attention)",
    ("circuit_heads",))
CIRCUIT_EDGES = ResultKind(
    "circuit_edges", ("sender_layer", "sender_head", "receiver_layer", "receiver_head", "receiver_input", "effect"),
    CIRCUIT_COMMAND, "circuit edges (path patching from a sender head to receiver heads' inputs)", ("circuit_edges",))
CIRCUIT_ATTRIBUTION = ResultKind(
    "circuit_attribution", ("layer", "head", "position", "atp", "atp_star", "exact"), CIRCUIT_COMMAND,
    "circuit attribution (AtP, AtP* and exact patching effects per head and position)", ("circuit_attribution",),
    labelled=("position",))
KINDS: dict[str, ResultKind] = {k.name: k for k in (ABLATION, PATCH_RESID, PATCH_HEADS, PROBES, COREF, CIRCUIT_HEADS,
                                                    CIRCUIT_EDGES, CIRCUIT_ATTRIBUTION, HEAD_METRICS)}


def kind_named(name: str | ResultKind) -> ResultKind:
    """The registered kind of this name (a bug if there is none: ValueError)."""
    if isinstance(name, ResultKind):
        return name
    if name not in KINDS:
        raise ValueError(f"no result kind {name!r}; the kinds are {', '.join(KINDS)}")
    return KINDS[name]


def kind_for_name(name: str) -> ResultKind:
    """The kind a result's file name means (head_metrics, ablation_*, patch_heads*,
    patch_resid*, probes_*, coref_heads); a name that means none is a bug: ValueError."""
    stem = PurePosixPath(name).name
    for kind in KINDS.values():
        if kind.is_named_by(stem):
            return kind
    known = ", ".join(p for k in KINDS.values() for p in k.file_names)
    raise ValueError(f"result name {name!r} matches no result kind ({known}); pass kind= to save_result")


def _kind_by_columns(columns: Iterable[str], stem: str) -> ResultKind | None:
    """The fallback for a CSV without a sidecar: the first kind whose columns it has."""
    cols = set(map(str, columns))
    for kind in KINDS.values():
        if kind.missing(cols):
            continue
        if kind is HEAD_METRICS and cols <= {"layer", "head"} and stem != HEAD_METRICS.name:
            return None  # a bare list of heads holds no result
        return kind
    return None


# ----------------------------------------------------------------------- saving
def table_path(run_path: str | Path, name: str) -> Path:
    """RUN/analyses/NAME.csv. NAME may hold one subfolder ("coref/coref_heads"), the depth
    `load_results` reads; anything that could leave RUN/analyses is a bug: ValueError."""
    parts = PurePosixPath(name).parts
    if not parts or len(parts) > 2 or name.startswith("/") or any(p in (".", "..") for p in parts) \
            or "\\" in name or name.endswith(".csv"):
        raise ValueError(f"result name {name!r} must be NAME or FOLDER/NAME, without .csv")
    *folder, stem = parts
    return Path(run_path, RESULTS_DIR, *folder, f"{stem}.csv")  # not with_suffix: a stem may hold dots


def save_result(run_path: str | Path, name: str, table: pd.DataFrame, kind: str | ResultKind | None = None,
                command: str | Sequence[str] | None = None) -> Path:
    """Write an analysis table next to the run (RUN/analyses/NAME.csv) and its sidecar
    NAME.json, each crash-safe (temp file, fsync, rename, fsync the folder), the table first:
    a crash between the two leaves the table, judged by its columns. ``kind`` defaults to the
    kind the name means; ``command`` is the command line that produced the table."""
    result_kind = kind_named(kind) if kind is not None else kind_for_name(name)
    if missing := result_kind.missing(table.columns):
        raise ValueError(f"result {name!r} is a {result_kind.name} table but lacks the columns {missing}")
    out = table_path(run_path, name)
    if problem := output_path_problem(out):
        raise StoreError(f"cannot save the result {name!r} next to the run: {problem}")
    _make_dir(out.parent, Path(run_path))
    atomic_write_text(out, table.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(out.with_suffix(".json"), json.dumps(_sidecar(result_kind, table, command), indent=1) + "\n")
    return out


def check_results_dir(run_path: str | Path) -> Path:
    """RUN/analyses, refused (StoreError) when results cannot be saved there (a file in its
    place): what a command asks before its work, so the refusal comes before the wait."""
    folder = Path(run_path, RESULTS_DIR)
    if problem := output_path_problem(folder, folder=True):
        raise StoreError(f"cannot save results next to the run: {problem}")
    return folder


def _sidecar(kind: ResultKind, table: pd.DataFrame, command: str | Sequence[str] | None) -> dict[str, Any]:
    if command is not None and not isinstance(command, str):
        command = shlex.join(command)  # sys.argv as one line the user could paste
    return {"kind": kind.name, "schema_version": SIDECAR_SCHEMA,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
            "columns": [str(c) for c in table.columns]}


def _make_dir(path: Path, run_path: Path) -> None:
    """Create ``path`` and its missing parents below the run, fsyncing each new entry's
    folder so the table's folder survives a crash too (the run itself must exist)."""
    if path == run_path or path.is_dir():
        return
    _make_dir(path.parent, run_path)
    path.mkdir(exist_ok=True)
    fsync_dir(path.parent)


# ----------------------------------------------------------------------- loading
@dataclass
class Result:
    """One saved table. ``name`` keys the dashboard's graph ids: the file stem, or the path
    under RUN/analyses when two tables share a stem."""

    name: str
    kind: str
    table: pd.DataFrame
    sidecar: dict[str, Any] | None  # what NAME.json says; None for a CSV without one
    path: Path


INDEX_COLUMNS = ("layer", "head", "position")  # what views turn into grid coordinates


def result_files(run_path: str | Path) -> list[Path]:
    """Every table and sidecar `load_results` reads (RUN/analyses and one level of
    subfolders, for coref/): what a reader watches to know the results changed."""
    root = Path(run_path) / RESULTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for pattern in ("*.csv", "*/*.csv", "*.json", "*/*.json") for p in root.glob(pattern))


def load_results(run_path: str | Path, problems: list[str] | None = None) -> list[Result]:
    """Every recognisable table under RUN/analyses, with its kind: from its sidecar, or for a
    CSV without one judged by its columns. A table that cannot be shown (unreadable with a
    sidecar, a sidecar of an unknown kind or newer schema, layer/head/position columns that
    are not whole numbers) is left out and why is appended to ``problems``; a foreign CSV
    that is no result is left out quietly."""
    run_path = Path(run_path)
    problems = [] if problems is None else problems
    found: list[Result] = []
    for path in (p for p in result_files(run_path) if p.suffix == ".csv"):
        shown = path.relative_to(run_path)
        try:
            result = _load_one(path, problems)
        except _NotShown as why:
            problems.append(f"{shown} is not shown: {why}")
            continue
        if result is None:
            continue
        # a second table of the same stem (analyses/x.csv and analyses/coref/x.csv) is named
        # by its path, so the views' graph ids stay unique
        if result.name in {r.name for r in found}:
            result.name = str(path.relative_to(run_path / RESULTS_DIR).with_suffix(""))
        found.append(result)
    return found


class _NotShown(Exception):
    """Why a saved table cannot be shown (load_results reports it, never raises it)."""


def _load_one(path: Path, problems: list[str]) -> Result | None:
    """One table with its kind, None for a CSV that is no analysis result."""
    sidecar = _read_sidecar(path, problems)
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        if sidecar is None:
            return None  # a half-written or foreign CSV is not an analysis result
        raise _NotShown(f"it cannot be read ({one_line(e).splitlines()[0][:120]})") from None
    kind = _kind_of(table, sidecar, path.stem)
    if kind is None:
        return None
    if missing := kind.missing(table.columns):
        raise _NotShown(f"its sidecar says {kind.name}, but it lacks the columns {missing}")
    if why := index_problem(table, kind.labelled):
        raise _NotShown(why)
    for col in INDEX_COLUMNS:  # 1.0 from a float CSV is layer 1
        if col in table.columns and col not in kind.labelled:
            table[col] = pd.to_numeric(table[col]).astype(int)
    return Result(path.stem, kind.name, table, sidecar, path)


def _read_sidecar(table: Path, problems: list[str]) -> dict[str, Any] | None:
    """NAME.json beside NAME.csv, or None when there is none. A damaged one is reported and
    ignored (the table is then judged by its columns)."""
    path = table.with_suffix(".json")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        problems.append(f"{path.name} cannot be read ({type(e).__name__}); {table.name} is judged by its columns")
        return None
    if not isinstance(meta, dict):
        problems.append(f"{path.name} is not a result sidecar; {table.name} is judged by its columns")
        return None
    return meta


def _kind_of(table: pd.DataFrame, sidecar: dict[str, Any] | None, stem: str) -> ResultKind | None:
    """The sidecar's kind when it describes this table, else the kind the columns suggest."""
    if sidecar is None or sidecar.get("columns") != [str(c) for c in table.columns]:
        # no sidecar, or a stale one (the CSV was rewritten without it, or the writer
        # crashed between the table and its sidecar): the sidecar does not describe it
        return _kind_by_columns(table.columns, stem)
    version = sidecar.get("schema_version")
    if not isinstance(version, int) or version > SIDECAR_SCHEMA:
        raise _NotShown(f"its sidecar's schema {version!r} is not one this probe reads (up to "
                        f"{SIDECAR_SCHEMA}); upgrade probe")
    kind = sidecar.get("kind")
    if kind not in KINDS:
        raise _NotShown(f"its sidecar names the kind {kind!r}, which this probe does not know "
                        f"({', '.join(KINDS)}); upgrade probe")
    return KINDS[kind]


def index_problem(table: pd.DataFrame, labelled: Sequence[str] = ()) -> str | None:
    """Why a table's layer/head/position columns cannot index a grid (not whole numbers,
    e.g. "L0" from a foreign tool), or None when they can; ``labelled`` columns hold labels."""
    for col in INDEX_COLUMNS:
        if col not in table.columns or col in labelled:
            continue
        values = pd.to_numeric(table[col], errors="coerce")
        if values.isna().any() or not (values == values.round()).all():
            bad = table[col][values.isna() | (values != values.round())].iloc[0]
            return f"its {col!r} column holds {str(bad)[:20]!r}, not a whole number"
    return None
