"""``triage orthanc config`` and ``triage orthanc follow`` on the command line: what the config
writer writes, and one-line refusals (exit 2) of bad flags."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from integrations.orthanc.metadata import USER_METADATA
from service.config import load_config
from triage_tools.cli import main


def test_config_writes_orthanc_json_with_ports_modality_stable_age_and_user_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The written orthanc.json has the asked ports, AE titles and StableAge, the triage SCP as
    a modality, every metadata name the sidecar records, and a storage folder that exists."""
    out = tmp_path / "o"
    args = ["orthanc", "config", "--out", str(out), "--http-port", "8100", "--dicom-port", "4300"]
    args += ["--triage-dicom", "10.0.0.5:11113", "--ae-title", "PACS1", "--stable-age", "3"]
    assert main(args) == 0
    config = json.loads((out / "orthanc.json").read_text())
    assert (config["HttpPort"], config["DicomPort"], config["DicomAet"]) == (8100, 4300, "PACS1")
    assert config["StableAge"] == 3 and config["RemoteAccessAllowed"] is False
    assert config["DicomModalities"]["triage"] == ["CXRTRIAGE", "10.0.0.5", 11113]
    assert USER_METADATA.items() <= config["UserMetadata"].items()
    assert config["LuaScripts"] == []  # no auto-forwarding unless asked
    assert Path(config["StorageDirectory"]).is_dir()
    assert "Orthanc " + str(out / "orthanc.json") in capsys.readouterr().out


def test_config_writes_a_triage_configuration_the_server_loads_for_the_dicom_route(
    tmp_path: Path,
) -> None:
    """triage-dicom.toml loads as a ``triage serve`` configuration: the SCP on the asked port and
    Orthanc's DICOM port as the destination of results of studies that came by DICOM only."""
    out = tmp_path / "o"
    assert main(["orthanc", "config", "--out", str(out), "--triage-dicom", "127.0.0.1:11120"]) == 0
    toml = out / "triage-dicom.toml"
    assert tomllib.loads(toml.read_text())["dicom"]["port"] == 11120
    config = load_config(toml, overrides={"bundle": str(tmp_path)})
    assert config.dicom.port == 11120
    (dest,) = config.dicom.destinations
    assert (dest["ae_title"], dest["port"], dest["sources"]) == ("ORTHANC", 4242, ["dicom"])


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--triage-dicom", "nohostport"], "--triage-dicom"),
        (["--triage-server", "host:99999"], "--triage-server"),
        (["--http-port", "0"], "--http-port"),
        (["--stable-age", "0"], "--stable-age"),
        (["--ae-title", "A" * 17], "--ae-title"),
        (["--plugin", "/nonexistent/libOrthancPython.so"], "--plugin"),
    ],
)
def test_config_refuses_bad_flags_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], named: str
) -> None:
    """A bad flag is refused with exit 2 and one line naming it; nothing is written."""
    assert main(["orthanc", "config", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err
    assert not (tmp_path / "o" / "orthanc.json").exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--orthanc", "127.0.0.1:8042"], "--orthanc"),
        (["--orthanc", "http://x", "--workers", "0"], "--workers"),
        (["--orthanc", "http://x", "--poll-seconds", "0"], "--poll-seconds"),
        (["--orthanc", "http://x", "--retry-seconds", "5", "--retry-max-seconds", "1"], "--retry"),
    ],
)
def test_follow_refuses_bad_flags_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], named: str
) -> None:
    """A bad flag is refused with exit 2 and one line naming it, before anything connects."""
    assert main(["orthanc", "follow", "--state", str(tmp_path / "s"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--studies", "0"], "--studies"),
        (["--study", "/nonexistent.dcm"], "--study"),
    ],
)
def test_bench_refuses_bad_flags_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], named: str
) -> None:
    """``triage bench orthanc`` refuses a bad flag with exit 2 and one line, starting nothing."""
    assert main(["bench", "orthanc", "--bundle", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err
