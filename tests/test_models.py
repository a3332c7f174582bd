import subprocess
import sys
from dataclasses import replace

import pytest

from agent import models


def test_fetch_is_idempotent_and_works_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKTURN_HOME", str(tmp_path))
    d = models.fetch("silero-vad", log=lambda m: None)  # a small real wheel from PyPI
    onnx = d / "silero_vad.onnx"
    assert onnx.stat().st_size > 1_000_000
    mtime = onnx.stat().st_mtime_ns
    # offline now: pip may not be called again
    monkeypatch.setattr(models, "_download", lambda *a, **k: pytest.fail("downloaded twice"))
    assert models.fetch("silero-vad", log=lambda m: None) == d
    assert onnx.stat().st_mtime_ns == mtime
    assert models.require("silero-vad") == d


def test_hash_mismatch_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKTURN_HOME", str(tmp_path / "home"))
    spec = models.REGISTRY["silero-vad"]
    bogus = tmp_path / "wheels" / spec.wheels[0].filename
    bogus.parent.mkdir()
    bogus.write_bytes(b"not the wheel")
    with pytest.raises(models.ModelError, match=r"sha256 mismatch .*silero_vad-6\.2\.3"):
        models.fetch("silero-vad", log=lambda m: None, wheel_dir=bogus.parent)
    assert not models.is_fetched("silero-vad")


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKTURN_HOME", str(tmp_path))
    wheel = models.Wheel("quickturn-no-such-package-xyz==9.9.9", "quickturn_no_such_package_xyz-9.9.9-py3-none-any.whl",
                         "0" * 64)
    spec = replace(models.REGISTRY["silero-vad"], name="broken", wheels=(wheel,))
    monkeypatch.setitem(models.REGISTRY, "broken", spec)
    with pytest.raises(models.ModelError, match="could not download quickturn_no_such_package_xyz-9.9.9"):
        models.fetch("broken", log=lambda m: None)


def test_missing_model_error_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKTURN_HOME", str(tmp_path))
    with pytest.raises(models.ModelError, match="quickturn models fetch piper-joe-medium"):
        models.require("piper-joe-medium")


def test_cli_models_list(tmp_path):
    out = subprocess.run([sys.executable, "-m", "agent.cli", "models", "list"], capture_output=True, text=True,
                         env={"QUICKTURN_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "smollm2-135m-instruct" in out.stdout and "no" in out.stdout
