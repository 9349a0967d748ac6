"""Regenerate the configuration key table of the README from :mod:`service.config`.

Run ``python -m triage_tools.config_table`` after changing a key (its default, its doc, or a
new one); it rewrites the README between the two marker comments below, with
:func:`service.config.reference_markdown`. ``--check`` only reports a stale table (exit 1),
and a test fails while the committed table differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.config import reference_markdown

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN = "<!-- config-table:begin -->"
END = "<!-- config-table:end -->"
COMMAND = "python -m triage_tools.config_table"


def _bounds(text: str) -> tuple[int, int]:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {BEGIN} ... {END} were not found (in that order)")
    return start + len(BEGIN), end


def region(text: str) -> str:
    """The text between the markers (the table as committed)."""
    start, end = _bounds(text)
    return text[start:end]


def render(text: str) -> str:
    """``text`` with the region between :data:`BEGIN` and :data:`END` replaced by the table."""
    start, end = _bounds(text)
    return text[:start] + "\n" + reference_markdown() + text[end:]


def main(argv: list[str] | None = None) -> int:
    """Rewrite the README's table in place (``--check``: exit 1 when stale, write nothing)."""
    parser = argparse.ArgumentParser(
        prog=COMMAND, description="Regenerate the README configuration table."
    )
    parser.add_argument("--readme", type=Path, default=README, help="default: %(default)s")
    parser.add_argument("--check", action="store_true", help="only report a stale table")
    args = parser.parse_args(argv)
    path: Path = args.readme
    text = path.read_text()
    updated = render(text)
    if updated == text:
        print(f"{path}: configuration table is current")
        return 0
    if args.check:
        print(f"{path}: configuration table is stale; run {COMMAND}", file=sys.stderr)
        return 1
    path.write_text(updated)
    print(f"{path}: configuration table rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
