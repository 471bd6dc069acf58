"""The one description of a generation that both sides (native and Diffusers reference) execute."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that decides a run's numbers, shared verbatim by the native and the reference side.

    `guidance_scale` feeds the DiT's guidance embedding (FLUX-dev style); `true_cfg_scale` > 1 together with a
    `negative_prompt` turns on classifier-free guidance with a second transformer pass, as Diffusers does.
    """

    prompt: str
    seed: int = 0
    steps: int = 4
    height: int = 64
    width: int = 64
    frames: int = 1  # video pipelines (Wan: 4k + 1 frames); image pipelines ignore it
    guidance_scale: float = 3.5
    negative_prompt: str | None = None
    true_cfg_scale: float = 1.0
    max_sequence_length: int = 512
    dtype: str = "fp32"
    device: str = "cpu"

    @property
    def do_true_cfg(self) -> bool:
        return self.true_cfg_scale > 1.0 and self.negative_prompt is not None

    def to_dict(self) -> dict:
        return asdict(self)
