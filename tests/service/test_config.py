"""Configuration: TOML < environment < flags, typed parsing, and errors naming key and source."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from service import config as config_module
from service.config import (
    ConfigError,
    ServiceConfig,
    env_name,
    key_types,
    load_config,
    parse_set_flags,
    reference_markdown,
    validate,
    with_overrides,
)


def _toml(tmp_path: Path, text: str) -> Path:
    """Write ``text`` as ``triage.toml`` under ``tmp_path``."""
    path = tmp_path / "triage.toml"
    path.write_text(text)
    return path


def test_defaults_and_precedence(tmp_path: Path) -> None:
    """Flags beat the environment, which beats the file, which beats the defaults."""
    path = _toml(
        tmp_path,
        'bundle = "from-file"\n[server]\nport = 6001\nmax_in_flight = 7\n'
        '[inference]\nproviders = ["CUDA", "CPU"]\nmax_batch = 4\n',
    )
    env = {"TRIAGE_SERVER__PORT": "6002", "TRIAGE_INFERENCE__MAX_BATCH": "16", "HOME": "/x"}
    config = load_config(path, env=env, overrides={"server.port": 6003})
    assert config.bundle == "from-file"
    assert config.server.port == 6003  # flag
    assert config.inference.max_batch == 16  # env
    assert config.server.max_in_flight == 7  # file
    assert config.inference.providers == ("CUDA", "CPU")  # file list
    assert config.decode.max_pixels == 40_000_000  # default
    assert config.policy.defer_cost is None


def test_env_parsing() -> None:
    """Environment values are parsed by the key's type (lists, booleans, optional numbers)."""
    env = {
        "TRIAGE_BUNDLE": "/b",
        "TRIAGE_INFERENCE__PROVIDERS": "TensorRT, CPU",
        "TRIAGE_SERVER__REFLECTION": "no",
        "TRIAGE_POLICY__DEFER_COST": "0.3",
        "TRIAGE_SECURITY__TOKENS": "a,b",
    }
    config = load_config(None, env=env)
    assert config.inference.providers == ("TensorRT", "CPU")
    assert config.server.reflection is False
    assert config.policy.defer_cost == 0.3  # parsed from "0.3", not computed: exact
    assert config.security.tokens == ("a", "b")


def test_every_key_has_an_env_name_and_documentation() -> None:
    """Each key maps to TRIAGE_<SECTION>__<KEY> and has a row in the generated reference table."""
    table = reference_markdown()
    for key in key_types():
        assert env_name(key) == "TRIAGE_" + key.upper().replace(".", "__")
        assert f"| `{key}` |" in table, key


def _config_fields() -> list[tuple[str, dataclasses.Field[object]]]:
    """Every (dotted key, field) of the configuration, found from the dataclasses themselves."""
    hints = typing.get_type_hints(ServiceConfig)
    out: list[tuple[str, dataclasses.Field[object]]] = []
    for top in dataclasses.fields(ServiceConfig):
        section = hints[top.name]
        if dataclasses.is_dataclass(section):
            out += [(f"{top.name}.{f.name}", f) for f in dataclasses.fields(section)]
        else:
            out.append((top.name, top))
    return out


def test_every_field_has_a_doc() -> None:
    """Every field of every section (and the top-level bundle) is declared with a non-empty doc."""
    fields = _config_fields()
    assert [key for key, _ in fields] == list(key_types())
    for key, f in fields:
        assert config_module.knob_of(f).doc.strip(), key


@pytest.mark.parametrize(
    ("key", "value", "shown", "reason"),
    [
        ("decode.reduce_min_scale", 0.5, 0.5, "must be >= 1.0"),
        ("logging.level", "LOUD", "LOUD", "must be one of ['DEBUG', 'INFO', 'WARNING', 'ERROR',"),
        ("security.tokens", ("s3cret ",), "<redacted>", "tokens must be non-empty without spaces"),
    ],
)
def test_field_check_names_its_key(key: str, value: object, shown: object, reason: str) -> None:
    """A field's own check refuses a bad value under that field's key (secrets redacted)."""
    problems = validate(with_overrides(ServiceConfig(bundle="/b"), **{key: value}))
    assert [(k, v) for k, v, _ in problems] == [(key, shown)]
    assert problems[0][2].startswith(reason)
    assert "s3cret" not in repr(problems)


def test_cross_field_rules(tmp_path: Path) -> None:
    """TLS files must come as a pair, mutual TLS needs TLS, and min_defer_cost <= max_defer_cost."""
    pem = tmp_path / "ca.pem"
    pem.write_text("x")
    config = with_overrides(
        ServiceConfig(bundle="/b"),
        **{
            "security.tls_cert": str(pem),
            "security.tls_client_ca": str(pem),
            "policy.min_defer_cost": 0.6,
            "policy.max_defer_cost": 0.4,
        },
    )
    assert validate(config) == [
        ("policy.min_defer_cost", 0.6, "must not exceed policy.max_defer_cost (0.4)"),
        (
            "security.tls_key",
            str(pem),
            "security.tls_cert and security.tls_key must be set together",
        ),
        (
            "security.tls_client_ca",
            str(pem),
            "mutual TLS needs security.tls_cert and security.tls_key",
        ),
    ]


@pytest.mark.parametrize(
    ("env", "overrides", "expected"),
    [
        (
            {"TRIAGE_SERVER__PORT": "70000"},
            {},
            "server.port = 70000 (from env TRIAGE_SERVER__PORT)",
        ),
        ({"TRIAGE_SERVER__PORT": "abc"}, {}, "server.port = 'abc' (from env TRIAGE_SERVER__PORT)"),
        ({}, {"inference.max_batch": 0}, "inference.max_batch = 0 (from command line)"),
        ({"TRIAGE_INFERENCE__STREAMS": "65"}, {}, "inference.streams = 65 (from env"),
        ({}, {"inference.providers": "GPU"}, "unknown provider"),
        ({}, {"policy.defer_cost": "0.95", "policy.max_defer_cost": "0.5"}, "policy.defer_cost"),
        ({"TRIAGE_SERVR__PORT": "1"}, {}, "TRIAGE_SERVR__PORT: unknown key"),
        ({}, {"server.nope": 1}, "server.nope (from the command line): unknown key"),
        ({}, {"security.tls_cert": "/nonexistent.pem"}, "security.tls_cert"),
    ],
)
def test_errors_name_key_and_source(
    env: dict[str, str], overrides: dict[str, object], expected: str
) -> None:
    """Invalid values are reported with the key, the value and where it came from."""
    base = {"bundle": "/b", **overrides}
    with pytest.raises(ConfigError) as info:
        load_config(None, env=env, overrides=base)
    assert expected in str(info.value)


def test_file_errors(tmp_path: Path) -> None:
    """Unknown keys and bad TOML in the file are reported with the file name."""
    with pytest.raises(ConfigError, match=r"server.prot \(in .*triage.toml\): unknown key"):
        load_config(_toml(tmp_path, 'bundle = "b"\n[server]\nprot = 1\n'), env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_toml(tmp_path, "[server\n"), env={})
    with pytest.raises(ConfigError, match=r"bundle = '' .*a model bundle folder is required"):
        load_config(None, env={})


def test_set_flags() -> None:
    """``--set SECTION.KEY=VALUE`` items become dotted overrides; malformed ones are refused."""
    assert parse_set_flags(["server.port=1", "decode.reduce=false"]) == {
        "server.port": "1",
        "decode.reduce": "false",
    }
    with pytest.raises(ConfigError):
        parse_set_flags(["server.port"])
