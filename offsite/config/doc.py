"""The README's configuration tables, rendered from the declarations (options.py).

`tables()` is the markdown of every table with its caption line, in the README's order;
tests/test_config_doc.py compares it with README.md and fails with a diff when the two
differ. After changing an option, print the tables and paste them into the README:

    python -m offsite.config.doc
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

from .options import (
    AGENT_OPTIONS,
    JOB_OPTIONS,
    JOB_ROWS,
    NOTIFY_OPTIONS,
    NOTIFY_ROWS,
    REQUIRED,
    TARGET_OPTIONS,
    Opt,
    Row,
)

HEADER = ("| key | default | meaning |", "|---|---|---|")

# The location types, one table each; types that share their options share a table.
TARGET_GROUPS: tuple[tuple[str, ...], ...] = (("local",), ("smb",), ("sftp",), ("ftp", "ftps"), ("s3",))


def shown(opt: Opt) -> str:
    """An option's default as the README shows it: `30s`, `false`, required, none."""
    if opt.shown:
        return opt.shown
    if opt.default is REQUIRED:
        return "required"
    if opt.default is None:
        return "none"
    text = str(opt.default).lower() if isinstance(opt.default, bool) else str(opt.default)
    others = "".join(f" (`{v}` for {t})" for t, v in opt.for_type.items())
    return f"`{text}`{others}"


def _rows(options: Mapping[str, Opt], extra: Sequence[Row] = (),
          only: Mapping[str, str] | None = None) -> Iterator[str]:
    """The table rows of `options` in their order, each `extra` row after the option it
    follows; `only` gives the note of keys that only some of a table's types have."""
    def line(keys: Sequence[str], default: str, meaning: str) -> str:
        return f"| {' / '.join(f'`{k}`' for k in keys)} | {default} | {meaning} |"

    for row in extra:
        if row.after is None:
            yield line(row.keys, row.shown, row.help)
    for name, opt in options.items():
        note = f"{only[name]} only: " if only and name in only else ""
        yield line((name,), shown(opt), note + opt.help)
        for row in extra:
            if row.after == name:
                yield line(row.keys, row.shown, row.help)


def _target_table(types: tuple[str, ...]) -> tuple[str, list[str]]:
    options: dict[str, Opt] = {}
    for t in types:
        options.update(TARGET_OPTIONS[t])
    only = {name: ", ".join(f"`{t}`" for t in types if name in TARGET_OPTIONS[t])
            for name in options if not all(name in TARGET_OPTIONS[t] for t in types)}
    caption = "`type = " + " or ".join(f'"{t}"' for t in types) + "`"
    return caption, list(_rows(options, only=only))


def blocks() -> list[tuple[str, list[str]]]:
    """(caption, rows) of each table, in the README's order."""
    return [
        ("`[agent]`", list(_rows(AGENT_OPTIONS))),
        *(_target_table(types) for types in TARGET_GROUPS),
        ("`[[jobs]]`", list(_rows(JOB_OPTIONS, JOB_ROWS))),
        ("`[notify]` (optional)", list(_rows(NOTIFY_OPTIONS, NOTIFY_ROWS))),
    ]


def tables() -> str:
    """Every table with its caption line, as markdown, in the README's order."""
    return "\n\n".join("\n".join((caption, "", *HEADER, *rows)) for caption, rows in blocks()) + "\n"


if __name__ == "__main__":
    print(tables(), end="")
