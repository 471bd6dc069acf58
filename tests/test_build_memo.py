"""The per-process memory of component checks (native_models/build_memo.py): a folder checked once is not built
again, and anything that changes what a check reads (config.json, a header) is checked afresh."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from native_models import meta_build
from native_models.build_memo import BoundedMemo, config_key
from native_models.components import model_class
from native_models.errors import CheckpointError
from native_models.loader import CHECKED_COMPONENTS, check_component
from native_models.meta_build import BUILT_NUMEL, ConfigTooLarge, check_build_size


@pytest.fixture()
def vae(tiny_flux: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "vae"
    shutil.copytree(tiny_flux / "vae", folder)
    BUILT_NUMEL.clear()
    CHECKED_COMPONENTS.clear()
    return folder


class CountingBuilds:
    """Counts `from_config` calls of a class (each is one model build)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: type) -> None:
        self.count = 0
        original = cls.from_config.__func__

        def counted(klass: type, config: dict) -> object:
            self.count += 1
            return original(klass, config)

        monkeypatch.setattr(cls, "from_config", classmethod(counted))


def test_a_checked_component_is_not_built_again(vae: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cls = model_class("AutoencoderKL")
    builds = CountingBuilds(monkeypatch, cls)
    check_component(cls, vae)
    first = builds.count
    assert first == 2  # the size check's build and the header check's build
    check_component(cls, vae)
    assert builds.count == first


def test_an_edited_config_is_checked_afresh_and_its_error_raised_every_time(vae: Path) -> None:
    cls = model_class("AutoencoderKL")
    check_component(cls, vae)
    config = json.loads((vae / "config.json").read_text())
    config["latent_channels"] = config["latent_channels"] * 2
    (vae / "config.json").write_text(json.dumps(config))
    for _ in range(2):
        with pytest.raises(CheckpointError, match="shape"):
            check_component(cls, vae)


def test_a_remembered_size_is_compared_with_each_budget(vae: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same config passes against its own weights and fails against a checkpoint far smaller."""
    monkeypatch.setattr(meta_build, "BUILD_SLACK_NUMEL", 0)  # the tiny VAE is smaller than the slack
    cls = model_class("AutoencoderKL")
    config = json.loads((vae / "config.json").read_text())
    check_build_size(cls, config, vae, 10**9)
    assert BUILT_NUMEL.get(config_key(cls, config)) is not None
    with pytest.raises(ConfigTooLarge, match="would hold over"):
        check_build_size(cls, config, vae, 0)


def test_the_memory_keeps_only_the_most_recent_results() -> None:
    memo: BoundedMemo[int] = BoundedMemo(size=2)
    for key in ("a", "b", "c"):
        memo.put(key, 1)
    assert memo.get("a") is None and memo.get("b") == 1 and memo.get("c") == 1
    memo.put(None, 1)  # a config JSON cannot write canonically is never remembered
    assert memo.get(None) is None


def test_entries_carry_the_results_to_another_memory() -> None:
    memo: BoundedMemo[int] = BoundedMemo()
    memo.put("a", 1)
    memo.put("b", 2)
    other: BoundedMemo[int] = BoundedMemo()
    other.update(memo.entries())
    assert other.entries() == [("a", 1), ("b", 2)]
