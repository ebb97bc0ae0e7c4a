"""The documentation holds up: quoted log lines exist, links resolve, the README stays a short guide,
and nothing points at files outside the repository."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", "node_modules", "out", ".run"}
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}
HOLE = "\0"  # an f-string's replacement field: a quoted piece never spans one


def _source_files(suffixes: tuple[str, ...]) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        found += [Path(dirpath, f) for f in filenames if f.endswith(suffixes)]
    return sorted(found)


def _literal(node: ast.expr) -> str | None:
    """The text a log call's message argument spells out, with each f-string field as HOLE."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else HOLE for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _literal(node.left), _literal(node.right)
        return None if left is None or right is None else left + right
    return None


def log_messages() -> list[str]:
    """The message text of every logging call in the project's code (not the tests')."""
    messages = []
    for path in _source_files((".py",)):
        if path.parts[len(ROOT.parts)] == "tests":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LOG_METHODS and node.args):
                text = _literal(node.args[0])
                if text is not None:
                    messages.append(text)
    return messages


def is_log_line(quoted: str, messages: list[str]) -> bool:
    """Whether one log call's literal text holds every piece of ``quoted`` (cut at "…"), in order."""
    pieces = [p.strip() for p in quoted.split("…") if p.strip()]
    for text in messages:
        at = 0
        for piece in pieces:
            at = text.find(piece, at)
            if at < 0:
                break
            at += len(piece)
        else:
            return True
    return False


def _section(markdown: str, heading: str) -> str:
    start = markdown.index(f"\n{heading}\n")
    level = heading.split(" ")[0]
    end = re.compile(rf"\n#{{1,{len(level)}}} ").search(markdown, start + len(heading) + 2)
    return markdown[start:end.start() if end else len(markdown)]


def troubleshooting_quotes() -> list[str]:
    rows = [line for line in _section(README.read_text(), "### Troubleshooting").splitlines()
            if line.startswith("|")]
    return [q for row in rows for q in re.findall(r'"([^"]+)"', row)]


def test_the_troubleshooting_table_quotes_log_lines():
    assert len(troubleshooting_quotes()) >= 5


@pytest.mark.parametrize("quoted", troubleshooting_quotes())
def test_each_quoted_log_line_is_one_the_code_can_print(quoted):
    assert is_log_line(quoted, log_messages()), f"no log call prints {quoted!r}"


def test_the_log_line_check_refuses_lines_the_code_never_prints():
    messages = log_messages()
    assert is_log_line("stream of … ended:", messages)
    assert not is_log_line("bad signature", messages)
    assert not is_log_line("refused: not loopback", messages)
    assert not is_log_line("ended: … stream of", messages)  # the pieces must come in order


# --- links --------------------------------------------------------------------------------------

def _without_code(markdown: str) -> str:
    return re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _without_code(path.read_text()), flags=re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def _broken(target: str, relative_to: Path) -> str | None:
    name, _, anchor = target.partition("#")
    path = (relative_to / name).resolve() if name else None
    if path is not None and not path.exists():
        return f"{target}: no such file"
    if anchor and (path or relative_to).suffix == ".md" and anchor not in anchors(path or relative_to):
        return f"{target}: no heading with anchor #{anchor}"
    return None


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_point_to_files_and_headings_that_exist(doc):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _without_code(doc.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        if target.startswith("#"):
            problem = None if target[1:] in anchors(doc) else f"{target}: no such heading"
        else:
            problem = _broken(target, doc.parent)
        broken += [problem] if problem else []
    assert broken == []


def test_docs_named_in_code_and_config_exist_with_their_headings():
    broken = []
    for path in _source_files((".py", ".js", ".sh", ".yaml", ".conf", "Makefile", "Dockerfile", ".toml")):
        for target in re.findall(r"\bdocs/[\w.-]+\.md(?:#[\w-]+)?", path.read_text(errors="replace")):
            problem = _broken(target, ROOT)
            broken += [f"{path.relative_to(ROOT)}: {problem}"] if problem else []
    assert broken == []


# --- the README's shape -------------------------------------------------------------------------

def test_the_readme_is_a_short_guide_with_a_table_of_contents():
    text = README.read_text()
    assert len(text.splitlines()) < 300
    contents = _section(text, "## Contents")
    sections = [h for h in re.findall(r"^## (.+)$", _without_code(text), flags=re.M) if h != "Contents"]
    assert [h for h in sections if f"(#{slug(h)})" not in contents] == []


def test_the_readme_marks_the_generated_configuration_table():
    text = README.read_text()
    begin = text.index("<!-- settings:begin")
    assert begin < text.index("| `PORT` |") < text.index("<!-- settings:end -->")


# --- the repository stands alone ----------------------------------------------------------------

FORBIDDEN = ["DESIGN" + " §", "DESIGN" + ".md", "reference" + " §", "../" + "shared", "shared/" + "reference"]


def test_nothing_in_the_repository_points_at_documents_outside_it():
    found = []
    for path in _source_files(("",)):
        data = path.read_bytes()
        if b"\0" in data[:4096]:
            continue  # images and other binaries
        text = data.decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}"
                      for bad in FORBIDDEN if bad.lower() in line.lower()]
    assert found == []
