"""The settings' documentation, generated from their declarations (``python -m common.settings``).

``markdown`` gives the README's configuration table: each variable once, grouped (one table with a
group column rather than a table per group, which would cost the README 30 lines of headings);
``listing`` the same as plain text for a terminal, a section per group. tests/test_settings.py fails
when the README's copy differs.
"""

from __future__ import annotations

import textwrap

from common.setting_types import FALSE, TRUE, Spec, number

BOOLEAN = ", ".join(f"`{t}`/`{f}`" for t, f in zip(TRUE, FALSE))
INTRO = (f"Booleans take {BOOLEAN} (any case); an empty value means the default; a number outside its "
         "range stops the process at start.")


def default(spec: Spec) -> str:
    """The default as the docs show it (markdown)."""
    if spec.shown:
        return spec.shown
    if spec.default in ("", (), None):
        return "—"
    if isinstance(spec.default, bool):
        return f"`{str(spec.default).lower()}`"
    return f"`{number(spec.default) if isinstance(spec.default, float) else spec.default}`"


def allowed(spec: Spec) -> str:
    """The values it takes: its choices, its range, or true/false (markdown); "" for free text."""
    if spec.choices:
        return ", ".join(f"`{c}`" for c in spec.choices)
    if spec.lo is not None and spec.hi is not None:
        return f"{number(spec.lo)}–{number(spec.hi)}"
    return BOOLEAN if spec.kind is bool else ""


def variable(spec: Spec) -> str:
    return " or ".join(f"`{name}`" for name in (spec.env, *spec.also))


def meaning(spec: Spec) -> str:
    notes = [spec.doc]
    if spec.persona:
        notes.append(f"persona file key `{spec.persona}`")
    if spec.secret:
        notes.append("never logged")
    return "; ".join(notes)


def plain(markdown_text: str) -> str:
    return markdown_text.replace("`", "")


def groups(specs: list[Spec]) -> dict[str, list[Spec]]:
    """The variables by group, groups and variables in declaration order."""
    grouped: dict[str, list[Spec]] = {}
    for spec in specs:
        grouped.setdefault(spec.group, []).append(spec)
    return grouped


def markdown(specs: list[Spec]) -> str:
    rows = ["| group | variable | default | values | meaning |", "|---|---|---|---|---|"]
    for group, members in groups(specs).items():
        rows += [f"| {f'**{group}**' if i == 0 else ''} | {variable(s)} | {default(s)} | {allowed(s)} | "
                 f"{meaning(s)} |" for i, s in enumerate(members)]
    return "\n".join(rows) + "\n"


def listing(specs: list[Spec]) -> str:
    """A --help style listing: per group, each variable with its default and values, then its meaning."""
    lines = ["Settings (environment variables). " + plain(INTRO), ""]
    for group, members in groups(specs).items():
        lines.append(f"{group}:")
        for s in members:
            values = plain(allowed(s)).replace("–", "..")
            head = f"  {plain(variable(s))} (default {plain(default(s))}{'; ' + values if values else ''})"
            lines += [head, *textwrap.wrap(plain(meaning(s)), 100, initial_indent=" " * 6,
                                           subsequent_indent=" " * 6)]
        lines.append("")
    return "\n".join(lines)
