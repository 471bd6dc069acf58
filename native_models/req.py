"""`Req`: the one request batch that every stage of a native pipeline reads from and writes to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:  # PIL is imported only by the families that take an image (~35 ms a process otherwise)
    import PIL.Image


class Recorder(Protocol):
    """Where stages report intermediates (the harness passes a `Trace`). Tensors must be in canonical layout."""

    def record(self, stage: str, field: str, tensor: torch.Tensor, step: int | None = None) -> None: ...


@dataclass
class Req:
    """A batch of prompts moving through the stages.

    Request fields are set by the caller from `SamplingParams`; the rest are filled in stage by stage. Stages
    declare which fields they read and write (see `PipelineStage`), so a stage fed a wrong kind of value fails
    with an error naming itself and the field instead of a shape error deep inside a model.
    """

    # --- request (from SamplingParams) ---
    prompt: list[str]
    height: int
    width: int
    num_inference_steps: int
    seed: int = 0
    negative_prompt: list[str] | None = None
    guidance_scale: float = 3.5
    true_cfg_scale: float = 1.0
    max_sequence_length: int = 512
    num_frames: int = 1  # video families; image families ignore it
    image: PIL.Image.Image | None = None  # image-conditioned families: the conditioning image (RGB, validated)
    true_cfg_scale_2: float | None = None  # two-expert families: the low-noise expert's CFG scale (None: as the first)
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    # --- filled by stages ---
    generator: torch.Generator | None = None
    prompt_embeds: list[torch.Tensor] | None = None  # one tensor per text encoder, in encoder order
    negative_prompt_embeds: list[torch.Tensor] | None = None
    # per text encoder, the (B, L) 1/0 mask of real tokens in its embeddings (LLM encoders whose prompts keep
    # their own lengths: Qwen-Image, Z-Image), or None where the embeddings have no padding to mask
    prompt_masks: list[torch.Tensor | None] | None = None
    negative_prompt_masks: list[torch.Tensor | None] | None = None
    latents: torch.Tensor | None = None  # in the DiT's layout (packed tokens for FLUX)
    raw_latent_shape: tuple[int, ...] | None = None  # spatial (B, C, h, w) or (B, C, T, h, w), to unpack
    sigmas: list[float] | None = None  # the sigma schedule handed to the scheduler (without terminal)
    timesteps: torch.Tensor | None = None
    output: torch.Tensor | None = None  # decoded frames (B, C, H, W), or videos (B, C, F, H, W), in [0, 1]
    image_embeds: torch.Tensor | None = None  # image encoder tokens (B, L_img, D) in the model dtype
    condition: torch.Tensor | None = None  # conditioning channels concatenated to the latents (B, C_cond, T, h, w)
    experts: dict[int, int] = field(default_factory=dict)  # denoising step -> index of the transformer that ran

    # --- instrumentation ---
    recorder: Recorder | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return len(self.prompt)

    @property
    def do_true_cfg(self) -> bool:
        return self.true_cfg_scale > 1.0 and self.negative_prompt is not None

    def record(self, stage: str, name: str, tensor: torch.Tensor, step: int | None = None) -> None:
        """Report an intermediate to the recorder, if one is attached (no cost otherwise)."""
        if self.recorder is not None:
            self.recorder.record(stage, name, tensor, step)
