"""requirements.lock agrees with pyproject.toml and is complete: a fresh machine gets exactly what was tested."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

from tests.script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
upgrade_lock = load_script("upgrade_lock")


def locked() -> dict[str, str]:
    return upgrade_lock.read_pins((ROOT / "requirements.lock").read_text())


def direct_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"] + project["optional-dependencies"]["test"]]


@pytest.mark.parametrize("requirement", direct_requirements(), ids=str)
def test_every_direct_dependency_is_locked_inside_its_range(requirement: Requirement) -> None:
    pins = locked()
    name = upgrade_lock.normalise(requirement.name)
    assert name in pins, f"{requirement} (pyproject.toml) is not in requirements.lock"
    assert requirement.specifier.contains(Version(pins[name]), prereleases=True), (
        f"requirements.lock has {name}=={pins[name]}, outside pyproject.toml's {requirement}")


def test_lock_is_closed_under_the_locked_packages_own_requirements() -> None:
    """Every requirement of every locked package (for this platform, no extras) is itself locked, in range:
    nothing transitive is left for pip to resolve on a fresh machine."""
    pins = locked()
    problems = []
    for name, version in pins.items():
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{name}=={version} is locked but not installed (run ./setup.sh)")
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            dependency = upgrade_lock.normalise(requirement.name)
            if dependency not in pins:
                problems.append(f"{name} requires {requirement}, which is not locked")
            elif not requirement.specifier.contains(Version(pins[dependency]), prereleases=True):
                problems.append(f"{name} requires {requirement}; the lock has {pins[dependency]}")
    assert not problems, "\n".join(problems)


def test_the_environment_is_the_lock() -> None:
    """The suite runs in the environment the lock describes (setup.sh installs it); a drift names the package."""
    drift = []
    for name, version in locked().items():
        installed = importlib.metadata.version(name)
        if Version(installed) != Version(version) and Version(installed).public != version:
            drift.append(f"{name}: locked {version}, installed {installed}")
    assert not drift, "run ./setup.sh to install the lock:\n" + "\n".join(drift)


def test_setup_takes_torch_from_the_lock() -> None:
    """One place names the torch version: setup.sh reads it from the lock instead of pinning its own."""
    setup = (ROOT / "setup.sh").read_text()
    assert not re.search(r"torch==\d", setup), "setup.sh pins a torch version of its own"
    assert "requirements.lock" in setup and '-c "$LOCK"' in setup
    assert Version(locked()["torch"]).local is None, "lock torch without a build label: ==X admits +cpu and CUDA"


def test_lock_text_from_a_freeze() -> None:
    freeze = "Jinja2==3.1.6\ntorch==2.13.0+cpu\n-e /work/main\ndiffparity==0.1.0\n# comment\n"
    text = upgrade_lock.lock_text(freeze)
    assert upgrade_lock.read_pins(text) == {"jinja2": "3.1.6", "torch": "2.13.0"}
    assert upgrade_lock.changes({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "1"}) == [
        f"  {'b':28s} {'2':>16s} -> 3", f"  {'c':28s} {'(new)':>16s} -> 1"]
