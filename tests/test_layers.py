"""The import arrows of docs/design.md ("Layers"), checked on every import statement of the
product, at module level or inside a function (ast, nothing is imported). A new arrow that the
design forbids fails here with the file, the line and the rule it breaks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("probe", "models", "analyses", "dashboard")

# Each rule: (which modules it governs, what they may import of ours, why).
# A module is governed by the first rule whose prefix it starts with.
RULES: list[tuple[str, tuple[str, ...], str]] = [
    ("probe.errors", (), "the error vocabulary is a leaf: every layer imports it"),
    ("probe.hook_names", (), "what a hook name says is a torch-free leaf: the reader and the dashboard use it"),
    ("probe.hooks", ("probe.errors", "probe.hook_names"), "hook points are a leaf under models"),
    ("probe.head_labels", ("probe.errors",), "head labels are a leaf: the dashboard and models share them"),
    ("probe.paths", (), "output-path checks are a leaf: every layer that writes a user's file asks them"),
    ("probe.cli", PACKAGES, "the CLI is the one place that reaches everything"),
    ("probe", ("probe", "models"), "the store, reader, recorder and prompts use models, never analyses or dashboard"),
    ("models", ("models", "probe.errors", "probe.hooks", "probe.hook_names", "probe.head_labels", "probe.paths"),
     "models depend on nothing of ours but the leaves"),
    ("analyses.results", ("analyses.results", "probe.errors", "probe.store", "probe.paths"),
     "the results contract stays light (and publishes as the store does): the dashboard imports it"),
    ("analyses", ("analyses", "models", "probe"), "analyses read runs and run models; they never draw or parse flags"),
    ("dashboard", ("dashboard", "probe", "analyses.results"),
     "the dashboard reads runs and saved results; it never loads a model"),
]
NEVER = {  # modules a layer must not import even where its rule admits the package
    "analyses": ("probe.cli",),
    "dashboard": ("probe.cli", "probe.recorder"),
    "probe": ("probe.cli",),
}
FOREIGN_HEAVY = {"dashboard": ("torch", "transformers", "transformer_lens")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, lazy ones included."""
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - (node.level - 1)] if node.level else []
            target = ".".join([*base, node.module] if node.module else base) if node.level else node.module
            found.append((node.lineno, target))
            # `from probe import cli` imports the module probe.cli
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names if is_module(f"{target}.{a.name}")]
    return found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def rule_of(module: str) -> tuple[str, tuple[str, ...], str]:
    return next(rule for rule in RULES if within(module, rule[0]))


def violations(path: Path, source: str | None = None) -> list[str]:
    module = module_name(path)
    prefix, allowed, why = rule_of(module)
    top = module.split(".")[0]
    where = path.relative_to(ROOT)
    bad = []
    for line, target in imports_of(path, source):
        if target.split(".")[0] in PACKAGES and not any(within(target, a) for a in allowed):
            bad.append(f"{where}:{line}: {module} imports {target} ({prefix}: {why})")
        bad += [f"{where}:{line}: {module} imports {target}, which {top} never imports"
                for never in NEVER.get(top, ()) if within(target, never) and not within(module, never)]
        bad += [f"{where}:{line}: {module} imports {target} ({prefix}: {why})"
                for heavy in FOREIGN_HEAVY.get(top, ()) if within(target, heavy)]
    return bad


def product_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_every_import_follows_the_design():
    problems = [v for path in product_files() for v in violations(path)]
    assert not problems, "imports the design forbids (docs/design.md, Layers):\n" + "\n".join(problems)


@pytest.mark.parametrize("module, source, expected", [
    ("models.example", "from analyses.coref import coref_study\n", "models.example imports analyses.coref"),
    ("models.example", "def f():\n    import dashboard.data\n", "models.example imports dashboard.data"),
    ("dashboard.example", "import models\n", "dashboard.example imports models"),
    ("dashboard.example", "from torch import nn\n", "dashboard.example imports torch"),
    ("analyses.example", "from probe.cli.shared import write_csv\n", "analyses.example imports probe.cli.shared"),
    ("probe.store2", "from analyses.results import save_result\n", "probe.store2 imports analyses.results"),
    ("probe.hooks_extra", "from ..errors import ProbeError\n", None),  # a relative import inside probe is fine
])
def test_the_check_catches_a_forbidden_arrow(module, source, expected):
    """The checker itself: a forbidden arrow, lazy or relative, is reported."""
    parts = module.split(".")
    found = violations(ROOT / Path(*parts[:-1]) / f"{parts[-1]}.py", source)
    if expected is None:
        assert not found
    else:
        assert any(expected in v for v in found), found


def test_no_command_imports_another():
    """Each command is a leaf of the CLI: what two commands share lives in probe/cli/shared.py."""
    commands = sorted((ROOT / "probe" / "cli").glob("*_command.py"))
    assert len(commands) >= 10
    crossing = [f"{path.name}:{line} imports {target}" for path in commands for line, target in imports_of(path)
                if target.endswith("_command") and target != module_name(path)]
    assert not crossing, crossing


def test_reading_a_run_and_the_dashboard_load_no_torch():
    """Transitively, not just directly: the reader, the results contract and the dashboard
    modules must not pull torch in (a run opens in ~0.1 s; torch costs a second more)."""
    import subprocess
    import sys

    code = ("import sys, probe.reader, analyses.results, dashboard.data, dashboard.views, dashboard.figures; "
            "print(sorted(m for m in ('torch', 'models') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def module_level_imports(path: Path) -> list[tuple[int, str]]:
    """Imports executed when the module is imported (not inside a function or TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else ():
            if isinstance(sub, ast.Import):
                found += [(sub.lineno, a.name) for a in sub.names]
            elif isinstance(sub, ast.ImportFrom) and not sub.level:
                found.append((sub.lineno, sub.module or ""))
    return found


def test_store_modules_import_models_only_inside_functions():
    """`import probe.reader` must not import models (a cycle through probe.hooks, and torch for
    the dashboard): the store reaches models lazily."""
    store = [p for p in sorted((ROOT / "probe").glob("*.py"))]
    eager = [f"{p.name}:{line} imports {t}" for p in store for line, t in module_level_imports(p) if within(t, "models")]
    assert not eager, eager
