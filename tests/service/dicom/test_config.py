"""The ``dicom`` configuration section: destinations and callers checked at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import ConfigError, load_config


def _load(tmp_path: Path, text: str) -> None:
    path = tmp_path / "triage.toml"
    path.write_text(f'bundle = "{tmp_path}"\n{text}')
    load_config(path, env={})


def test_a_valid_dicom_section_loads(tmp_path: Path) -> None:
    """Destinations and callers as a site writes them are accepted."""
    _load(
        tmp_path,
        """
[dicom]
port = 11112
allowed_callers = ["CR1@10.0.0.0/8", "PACS"]
[[dicom.destinations]]
name = "pacs"
ae_title = "PACS"
host = "10.0.0.5"
port = 104
kinds = ["SR", "SEG"]
sources = ["dicom"]
""",
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[[dicom.destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\n', "missing key"),
        ('[[dicom.destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\nport = 0\n', "port"),
        ('[[dicom.destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\nport = 1\n'
         'kinds = ["PDF"]\n', "kinds"),
        ('[[dicom.destinations]]\nname = "p"\nae_title = "P"\nhost = "h"\nport = 1\n'
         '[[dicom.destinations]]\nname = "p"\nae_title = "Q"\nhost = "h"\nport = 2\n',
         "more than once"),
        ('[dicom]\nallowed_callers = ["CR1@nowhere"]\n', "dicom.allowed_callers"),
        ('[dicom]\nae_title = "A_TITLE_LONGER_THAN_16"\n', "dicom.ae_title"),
        ('[dicom]\nsop_classes = ["CT"]\n', "not a UID"),
    ],
)  # fmt: skip
def test_bad_dicom_settings_are_refused_naming_the_key(
    tmp_path: Path, text: str, words: str
) -> None:
    """Each bad setting is a ConfigError naming the key and the problem."""
    with pytest.raises(ConfigError, match=words):
        _load(tmp_path, text)
