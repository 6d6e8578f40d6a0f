"""The README's configuration tables are the option declarations (offsite/config/options.py),
rendered by offsite/config/doc.py: a default or meaning changed in one and not the other fails
here, with the diff and how to fix it."""
from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

from offsite.config import AGENT_OPTIONS, JOB_OPTIONS, NOTIFY_OPTIONS, REQUIRED, TARGET_OPTIONS, doc

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Configuration: `agent.toml`"


def readme_tables(text: str) -> str:
    """The tables of the README's configuration section, each with its caption (the line
    before it), laid out as doc.tables() lays them out. The section ends at the next heading."""
    lines = text.splitlines()
    start = lines.index(SECTION) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("#")), len(lines))
    out: list[list[str]] = []
    caption = ""
    for i in range(start, end):
        line = lines[i]
        if line.startswith("|"):
            if not lines[i - 1].startswith("|"):
                out.append([caption, ""])
            out[-1].append(line)
        elif line.strip():
            caption = line
    return "\n\n".join("\n".join(block) for block in out) + "\n"


def test_readme_tables_are_the_declarations():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    want, have = doc.tables(), readme_tables(readme)
    diff = "".join(difflib.unified_diff(have.splitlines(True), want.splitlines(True),
                                        "README.md (configuration tables)", "offsite/config/options.py"))
    assert have == want, (
        "README.md's configuration tables differ from the option declarations. Fix the declaration "
        "(offsite/config/options.py), or paste the output of `python -m offsite.config.doc` over the "
        "README's tables:\n" + diff)


def test_every_option_has_a_row_with_a_meaning():
    tables = doc.tables()
    for decl in (AGENT_OPTIONS, JOB_OPTIONS, NOTIFY_OPTIONS, *TARGET_OPTIONS.values()):
        for name, opt in decl.items():
            assert f"| `{name}` |" in tables
            assert opt.help and "|" not in opt.help and "\n" not in opt.help, name


def test_every_default_is_one_the_option_accepts():
    for decl in (AGENT_OPTIONS, JOB_OPTIONS, NOTIFY_OPTIONS, *TARGET_OPTIONS.values()):
        for opt in decl.values():
            if opt.default is not None and opt.default is not REQUIRED:
                opt.parse(opt.default)
            for written in opt.for_type.values():
                opt.parse(written)


def test_the_tables_are_printed_for_pasting():
    r = subprocess.run([sys.executable, "-m", "offsite.config.doc"], cwd=ROOT, capture_output=True,
                       text=True, check=True, timeout=60)
    assert r.stdout == doc.tables()
