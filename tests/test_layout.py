"""The layout the core keeps (README, "Development"): every module reads in one sitting and says
what it owns, and imports run one way, from the commands down to the rules.

Layers, highest first: `cli` > `agent` > `targets`, `queue`, `watchers`, `notify`, `verify`
and the state > the pure rules. A module may import its own layer or lower ones, never a
higher one. The pure rules (names, modes, windows, retention, deletion rules, alert
conditions) import nothing of the agent's machinery at all.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "offsite"
MAX_LINES = 400
PURE = {"backupfiles", "selection", "deletions", "windows", "alerts", "units", "errors", "crashpoints"}
# What each pure rule may import of offsite: other pure rules only (and config's declarations
# for the defaults alerts.py shares with the config file).
PURE_MAY = PURE | {"config"}
DECLARATIONS = ("offsite.config.options", "offsite.config.parsers")


def modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def name_of(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """The offsite modules `path` imports, as dotted names (offsite.x.y)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = name_of(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("offsite"):
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("offsite"))
    return out


def layer(dotted: str) -> int:
    parts = dotted.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if dotted.startswith(DECLARATIONS):
        return 0  # the option declarations: values and parsers, importing only pure rules
    if top == "cli" or top == "__main__" or top == "install":
        return 3
    if top == "agent":
        return 2
    if top in PURE:
        return 0
    return 1  # targets, queue, watchers, notify, verify, state, config, system, logs, owner


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_reads_in_one_sitting(path):
    lines = path.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines (at most {MAX_LINES})"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if lines > 20:
        assert ast.get_docstring(tree), f"{path.relative_to(ROOT)} says nowhere what it owns (no docstring)"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_downwards(path):
    mine = layer(name_of(path))
    for dotted in imports(path):
        if dotted.count(".") > 1 and dotted.split(".")[1] in ("agent", "cli") and mine < 2:
            pytest.fail(f"{name_of(path)} (a lower layer) imports {dotted}")
        theirs = layer(dotted)
        assert theirs <= mine, f"{name_of(path)} imports {dotted}, a higher layer"
        if name_of(path) in {f"offsite.{p}" for p in PURE} and dotted.count(".") >= 1:
            top = dotted.split(".")[1]
            assert top in PURE_MAY, f"the pure rule {name_of(path)} imports {dotted}"


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The check above, shown to fail: a target importing the agent."""
    fake = ROOT / "targets" / "local.py"
    tree_imports = imports(fake) | {"offsite.agent.job"}
    assert any(layer(d) > layer(name_of(fake)) for d in tree_imports)


def test_the_readme_names_real_functions_on_a_files_way():
    """README, "Development": every function named on the way of a new file exists."""
    import re

    text = (ROOT.parent / "README.md").read_text(encoding="utf-8")
    way = text[text.index("How one new backup file travels"):]
    way = way[:way.index("\n\n")]
    source = "\n".join(p.read_text(encoding="utf-8") for p in modules())
    named = set(re.findall(r"`([A-Za-z_.]+)`", way))
    assert len(named) > 20
    for name in sorted(named):
        *owner, last = name.split(".")
        if owner and owner[-1][0].isupper() and owner[-1] not in ("Kind",):
            assert re.search(rf"^class {owner[-1]}\b", source, re.M), f"README names {name}: no class {owner[-1]}"
        if last[0].islower():
            assert re.search(rf"def {last}\b", source), f"README names {name}: no function {last}"
