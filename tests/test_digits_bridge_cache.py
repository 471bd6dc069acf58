"""The digits -> photo latent bridge is fitted once and then read from $DIFFPARITY_CACHE, bit for bit; a damaged
entry is fitted again, and the key follows the VAE files it was fitted from."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from references.flux import digits_bridge


@pytest.fixture()
def counted_fit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[int]]:
    """fit_bridge_uncached replaced by a counted stand-in (the real fit encodes 1,797 digits twice)."""
    calls: list[int] = []
    weight = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))

    def fit() -> tuple[torch.Tensor, torch.Tensor, float]:
        calls.append(1)
        return weight.clone(), weight[0].clone() / 3, 0.123456789

    monkeypatch.setenv("DIFFPARITY_CACHE", str(tmp_path))
    monkeypatch.setattr(digits_bridge, "fit_bridge_uncached", fit)
    digits_bridge.fit_bridge.cache_clear()
    yield calls
    digits_bridge.fit_bridge.cache_clear()


def test_a_stored_fit_is_read_back_bit_for_bit(counted_fit: list[int]) -> None:
    first = digits_bridge.fit_bridge()
    digits_bridge.fit_bridge.cache_clear()  # a later process
    second = digits_bridge.fit_bridge()
    assert len(counted_fit) == 1
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]) and first[2] == second[2]
    assert second[0].dtype == torch.float32


def test_a_damaged_entry_is_fitted_again(counted_fit: list[int], tmp_path: Path) -> None:
    digits_bridge.fit_bridge()
    (entry,) = (tmp_path / "digits_bridge").glob("*.json")
    entry.write_text('{"weight": [1')
    digits_bridge.fit_bridge.cache_clear()
    digits_bridge.fit_bridge()
    assert len(counted_fit) == 2 and entry.read_text().startswith('{\n  "weight"')


def test_the_key_follows_the_vae_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import references.flux.photo_vae as photo_vae

    before = digits_bridge.bridge_key()
    copy = tmp_path / "photo-vae"
    copy.mkdir()
    for file in photo_vae.PHOTO_VAE_CHECKPOINT.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    monkeypatch.setattr(photo_vae, "PHOTO_VAE_CHECKPOINT", copy)
    assert digits_bridge.bridge_key() == before
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("}", ', "edited": 1}', 1))
    assert digits_bridge.bridge_key() != before
