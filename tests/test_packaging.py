"""Packaging: installable beside current torch releases, licensed as it says."""

from __future__ import annotations

import configparser
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, Requirement]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in config["options"]["install_requires"].splitlines() if line.strip()]
    return {Requirement(line).name: Requirement(line) for line in lines}


def test_torch_requirement_admits_current_releases_without_a_cap() -> None:
    torch = _requirements()["torch"]
    for version in ("2.13.0", "2.14.1", "2.15.0", "3.0.0"):
        assert torch.specifier.contains(version), (str(torch), version)
    assert not any(spec.operator in ("<", "<=", "==", "~=") for spec in torch.specifier), str(torch)


def test_albumentations_is_the_mit_release_not_albumentationsx() -> None:
    requirements = _requirements()
    assert "albumentationsx" not in requirements
    assert str(requirements["albumentations"].specifier) == "==2.0.8"


def test_license_file_matches_the_declared_license() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["metadata"]["license"] == "MIT"
    assert config["metadata"]["license_files"].strip() == "LICENSE"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
