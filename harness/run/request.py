"""The one description of a generation that both sides (native and Diffusers reference) execute."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from native_models.limits import check_request_limits


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
    batch_size: int = 1  # images per prompt: the native side encodes the prompt this many times, Diffusers
    # gets num_images_per_prompt; one CPU generator draws the whole (B, C, h, w) noise at once on both sides

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        # types and bounds (native_models/limits.py): a huge size fails here, before either side allocates
        check_request_limits(
            height=self.height, width=self.width, steps=self.steps, seed=self.seed, frames=self.frames,
            batch_size=self.batch_size, guidance_scale=self.guidance_scale, true_cfg_scale=self.true_cfg_scale,
            max_sequence_length=self.max_sequence_length, prompt=self.prompt, negative_prompt=self.negative_prompt,
        )

    @property
    def do_true_cfg(self) -> bool:
        return self.true_cfg_scale > 1.0 and self.negative_prompt is not None

    def to_dict(self) -> dict:
        return asdict(self)
