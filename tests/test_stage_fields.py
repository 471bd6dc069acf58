"""Stages check the fields they read: the classic native-port mistakes fail with one line naming stage + field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from native_models.errors import StageFieldError
from native_models.pipelines.flux import FluxPipelineConfig
from native_models.req import Req
from native_models.stages.decoding import DecodingStage
from native_models.stages.denoising import DenoisingStage


def ready_batch() -> Req:
    """A batch as the denoising stage expects it (values are placeholders: the checks run before any model)."""
    return Req(
        prompt=["a cat"],
        height=64,
        width=64,
        num_inference_steps=2,
        latents=torch.zeros(1, 16, 64),
        raw_latent_shape=(1, 16, 8, 8),
        sigmas=[1.0, 0.5],
        timesteps=torch.tensor([1000.0, 500.0]),
        prompt_embeds=[torch.zeros(1, 32), torch.zeros(1, 8, 32)],
    )


def denoising_stage() -> DenoisingStage:
    return DenoisingStage(transformer=torch.nn.Identity(), scheduler=None, config=FluxPipelineConfig())


def test_numpy_sigmas_named() -> None:
    batch = ready_batch()
    batch.sigmas = np.array([1.0, 0.5])  # type: ignore[assignment]
    with pytest.raises(StageFieldError) as info:
        denoising_stage()(batch)
    message = str(info.value)
    assert message == "stage DenoisingStage: field 'sigmas' (input) must be a non-empty list of Python floats, " \
                      "got numpy.ndarray"
    assert "\n" not in message


def test_bare_tensor_instead_of_embedding_list_named() -> None:
    batch = ready_batch()
    batch.prompt_embeds = torch.zeros(1, 8, 32)  # type: ignore[assignment]
    with pytest.raises(StageFieldError, match=r"DenoisingStage: field 'prompt_embeds' .* list of torch.Tensor .* "
                                              r"got torch.Tensor"):
        denoising_stage()(batch)


def test_missing_raw_latent_shape_named_in_decoding() -> None:
    batch = ready_batch()
    batch.raw_latent_shape = None
    stage = DecodingStage(vae=torch.nn.Identity(), config=FluxPipelineConfig())
    with pytest.raises(StageFieldError, match=r"stage DecodingStage: field 'raw_latent_shape' .* missing \(None\)"):
        stage(batch)


def test_negative_embeds_checked_only_when_present() -> None:
    batch = ready_batch()
    batch.negative_prompt_embeds = [np.zeros(3)]  # type: ignore[list-item]
    with pytest.raises(StageFieldError, match="negative_prompt_embeds"):
        denoising_stage()(batch)

