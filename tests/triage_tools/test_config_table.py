"""The README's configuration table: generated from the configuration, regenerated in place."""

from __future__ import annotations

from pathlib import Path

from service.config import reference_markdown
from triage_tools import config_table


def test_readme_config_table_is_current() -> None:
    """The README's configuration table is exactly what reference_markdown() renders."""
    committed = config_table.region(config_table.README.read_text())
    assert committed == "\n" + reference_markdown(), (
        f"the configuration table in README.md is stale; regenerate it with "
        f"`{config_table.COMMAND}`"
    )


def test_config_table_main_rewrites_a_stale_region(tmp_path: Path) -> None:
    """The regenerate command replaces only the marked region, and --check reports staleness."""
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{config_table.BEGIN}\nold\n{config_table.END}\noutro\n")
    assert config_table.main(["--readme", str(readme), "--check"]) == 1
    assert config_table.main(["--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{config_table.END}\noutro\n")
    assert config_table.region(text) == "\n" + reference_markdown()
    assert config_table.main(["--readme", str(readme), "--check"]) == 0
