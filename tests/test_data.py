"""The data root and the registry check."""

import shutil
from pathlib import Path

import pytest

from shapeprior.data import verify

REGISTRY = Path(__file__).resolve().parents[1] / "data_samples" / "registry.json"


def test_shared_data_match_the_registry(data_root):
    res = verify(data_root, REGISTRY, datasets=["tcia_mr_dicom", "msd_hippocampus"],
                 hashes=False)
    for name, r in res.items():
        assert not r["missing"] and not r["changed"], (name, r)
        assert r["ok"] > 20
    assert verify(data_root, REGISTRY, datasets=["tcia_mr_dicom"],
                  hashes=True)["tcia_mr_dicom"]["changed"] == []


def test_verify_reports_missing_and_changed_files(data_root, tmp_path):
    src = data_root / "tcia_mr_dicom"
    shutil.copytree(src, tmp_path / "tcia_mr_dicom")
    victims = sorted((tmp_path / "tcia_mr_dicom" / "Study3_HCropVolume").iterdir())
    victims[0].unlink()
    data = bytearray(victims[1].read_bytes())
    data[-1] ^= 0xFF                                   # same size, other content
    victims[1].write_bytes(bytes(data))
    victims[2].write_bytes(victims[2].read_bytes()[:-10])     # truncated
    quick = verify(tmp_path, REGISTRY, datasets=["tcia_mr_dicom"])["tcia_mr_dicom"]
    # without hashes, sizes alone: the truncated file is found, the flipped byte is not
    assert len(quick["missing"]) == 1 and quick["changed"] == [
        str(victims[2].relative_to(tmp_path / "tcia_mr_dicom"))]
    full = verify(tmp_path, REGISTRY, datasets=["tcia_mr_dicom"], hashes=True)["tcia_mr_dicom"]
    assert len(full["missing"]) == 1 and len(full["changed"]) == 2
    with pytest.raises(ValueError, match="tcia_mr_dicomm.*not in the registry"):
        verify(tmp_path, REGISTRY, datasets=["tcia_mr_dicomm"])


def test_the_data_root_is_the_environment_variable_when_set(tmp_path, monkeypatch):
    from shapeprior.data import ENV_VAR, data_root

    monkeypatch.setenv(ENV_VAR, str(tmp_path / "elsewhere"))
    assert data_root() == tmp_path / "elsewhere"
    monkeypatch.delenv(ENV_VAR)
    assert data_root() != tmp_path / "elsewhere"
