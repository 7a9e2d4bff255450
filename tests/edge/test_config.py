"""Device configs: typed validation, key paths in errors, the committed JSON Schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lineqc.edge.config import SCHEMA_FILE, ConfigError, load_config, parse_config, schema_text

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware_config"


def _minimal(tmp: Path) -> dict:
    (tmp / "bundle").mkdir()
    (tmp / "key.pub").write_bytes(b"k" * 32)
    (tmp / "frames").mkdir()
    return {
        "device": {"id": "d1", "site": "s", "line": "l"},
        "camera": {"source": "frames"},
        "model": {"bundle": "bundle", "public_key": "key.pub"},
        "outbox": {"path": "outbox.sqlite"},
    }


def test_committed_schema_equals_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text() == schema_text(), "run: lineqc edge schema --write"


@pytest.mark.parametrize("name", sorted(p.name for p in FIRMWARE.glob("*.yaml")))
def test_example_configs_are_valid(name: str) -> None:
    doc = yaml.safe_load((FIRMWARE / name).read_text())
    cfg = parse_config(doc, base=FIRMWARE, check_files=False)
    assert cfg.device.id and cfg.topic_root.startswith("lineqc/v1/")


def test_examples_cover_every_source_kind() -> None:
    sources = [yaml.safe_load(p.read_text())["camera"]["source"] for p in FIRMWARE.glob("*.yaml")]
    assert any(s.startswith("csi://") for s in sources)
    assert any(s.startswith(("/dev/video", "v4l2://")) for s in sources)
    assert any(s.startswith("rtsp://") for s in sources)
    assert any(s.startswith("dataset://") for s in sources)
    assert any(s.startswith("gige://") for s in sources)


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    doc = _minimal(tmp_path)
    path = tmp_path / "dev.yaml"
    path.write_text(yaml.safe_dump(doc))
    cfg = load_config(path)
    assert cfg.model.bundle == tmp_path / "bundle"
    assert cfg.camera.source == str(tmp_path / "frames")
    assert cfg.outbox.path == tmp_path / "outbox.sqlite"
    assert cfg.client_id == "lineqc-d1"


def test_every_error_is_reported_with_its_key_path(tmp_path: Path) -> None:
    doc = _minimal(tmp_path)
    doc["mqtt"] = {"port": 70000, "tls": {"ca_file": "missing-ca.pem"}, "colour": "red"}
    doc["camera"]["fps"] = -1
    doc["device"]["id"] = "has space"
    doc["model"]["public_key"] = "nope.pub"
    path = tmp_path / "dev.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    errors = info.value.errors
    text = "\n".join(errors)
    assert "mqtt.tls.ca_file: file not found" in text
    assert "mqtt.port:" in text and "mqtt.colour: Extra inputs are not permitted" in text
    assert "camera.fps:" in text and "device.id:" in text
    assert "model.public_key: file not found" in text
    assert len(errors) == 6


def test_check_config_cli(lineqc, tmp_path: Path) -> None:
    doc = _minimal(tmp_path)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(doc))
    ok = lineqc("edge", "check-config", str(good))
    assert "OK" in ok.stdout
    doc["mqtt"] = {"tls": {"ca_file": "ca.pem"}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    proc = lineqc("edge", "check-config", str(bad), check=False)
    assert proc.returncode != 0
    assert f"{bad}: mqtt.tls.ca_file: file not found" in proc.stderr
    (tmp_path / "junk.yaml").write_text("device: [unclosed")
    junk = lineqc("edge", "check-config", str(tmp_path / "junk.yaml"), check=False)
    assert junk.returncode != 0 and "not valid YAML" in junk.stderr


def test_cross_field_rules(tmp_path: Path) -> None:
    doc = _minimal(tmp_path)
    doc["actuator"] = {"kind": "hook"}
    doc["mqtt"] = {"password": "a", "password_file": "key.pub"}
    with pytest.raises(ConfigError) as info:
        parse_config(doc, base=tmp_path)
    text = "\n".join(info.value.errors)
    assert "actuator: kind 'hook' needs hook" in text
    assert "mqtt: give password or password_file, not both" in text


def test_mqtt_protocol_spellings(tmp_path: Path) -> None:
    doc = _minimal(tmp_path)
    assert parse_config(doc, base=tmp_path).mqtt.protocol == 5  # the default
    for given, expected in ((5, 5), ("5", 5), ("3.1.1", "3.1.1")):
        doc["mqtt"] = {"protocol": given}
        assert parse_config(doc, base=tmp_path).mqtt.protocol == expected
    doc["mqtt"] = {"protocol": 4}
    with pytest.raises(ConfigError) as info:
        parse_config(doc, base=tmp_path)
    assert info.value.errors[0].startswith("mqtt.protocol: ")


def test_an_unwritable_outbox_is_a_config_error_not_a_crash(lineqc, tmpfs, tmp_path: Path) -> None:
    """check-config refuses an outbox that cannot be written, with its key and reason, and
    `edge run` stops with the same clear message instead of a traceback."""
    read_only_folder = tmpfs("ro,size=64k")  # not writable, even for root
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "a-folder.sqlite").mkdir()
    cases = {
        str(read_only_folder / "outbox.sqlite"): f"{read_only_folder} is not writable",
        str(tmp_path / "a-file" / "outbox.sqlite"): f"{tmp_path / 'a-file'} is not a folder",
        str(tmp_path / "a-folder.sqlite"): "not a file",
    }
    doc = _minimal(tmp_path)
    for outbox, why in cases.items():
        doc["outbox"] = {"path": outbox}
        path = tmp_path / "dev.yaml"
        path.write_text(yaml.safe_dump(doc))
        check = lineqc("edge", "check-config", str(path), check=False)
        assert check.returncode == 1 and f"{path}: outbox.path: " in check.stderr, check.stderr
        assert why in check.stderr
        run = lineqc("edge", "run", "--config", str(path), check=False)
        assert run.returncode == 2 and "outbox.path: " in run.stderr and why in run.stderr
        assert "Traceback" not in run.stderr
