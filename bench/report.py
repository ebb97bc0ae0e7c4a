"""Where every bench writes its results: JSON under docs/ (or where ``--json`` says)."""

from __future__ import annotations

import json
from pathlib import Path


def save_report(path: str, report: dict | list) -> None:
    """Write the bench's JSON (``--json ""``: none)."""
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2, default=str, ensure_ascii=False) + "\n")
    print(f"saved {path}")
