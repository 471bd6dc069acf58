"""Parity cases: a named model family + tiny offline checkpoint + default request + reference runner.

`diffparity run CASE` and `pytest cases/` both start here. Reference code (Diffusers) is imported lazily so
that a usage error is answered without paying the ~5 s import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from harness.request import GenerationRequest
from harness.trace import Trace

ProgressCallback = Callable[[int, int], None]


class CaseError(Exception):
    """An unknown case name or a request the case cannot take."""


@dataclass(frozen=True)
class Case:
    name: str
    family: str
    description: str
    build_checkpoint: Callable[[], Path]
    run_reference: Callable[[Path, GenerationRequest, Trace, ProgressCallback | None], None]
    default_request: GenerationRequest
    video: bool = False
    # True when the checkpoint draws real pictures (trained or real weights): a native output the noise
    # detector flags then fails the run. Random-weight tiny checkpoints draw noise by design.
    expects_picture: bool = False
    # (checkpoint, request, trace, baseline): the reference teacher-forced from `baseline`, another reference
    # trace of the request; `diffparity calibrate` measures local floors with it (None: free floors only)
    run_reference_forced: Callable[[Path, GenerationRequest, Trace, Trace], None] | None = None

    def request(self, **overrides: object) -> GenerationRequest:
        """The default request with the given non-None fields replaced."""
        return replace(self.default_request, **{k: v for k, v in overrides.items() if v is not None})


def _tiny_flux_checkpoint() -> Path:
    from references.tiny_flux import tiny_flux_checkpoint

    return tiny_flux_checkpoint(seed=0)


def _flux_digits_checkpoint() -> Path:
    from references.digits import flux_digits_checkpoint

    try:
        return flux_digits_checkpoint()
    except FileNotFoundError as exc:
        raise CaseError(str(exc)) from None


def _run_flux_reference(
    checkpoint: Path, request: GenerationRequest, trace: Trace, progress: ProgressCallback | None = None
) -> None:
    from references.flux_runner import run_flux_reference

    run_flux_reference(checkpoint, request, trace, progress)


def _run_flux_reference_forced(checkpoint: Path, request: GenerationRequest, trace: Trace, baseline: Trace) -> None:
    from references.flux_runner import run_flux_reference

    run_flux_reference(checkpoint, request, trace, force_from=baseline)


def _tiny_wan_checkpoint() -> Path:
    from references.tiny_wan import TinyWanConfig, tiny_wan_checkpoint

    # 4 DiT heads (not the builder's default 2): heads split by TP = 2, then by Ulysses SP = 2 within a TP shard
    return tiny_wan_checkpoint(seed=0, config=TinyWanConfig(dit_heads=4))


def _run_wan_reference(
    checkpoint: Path, request: GenerationRequest, trace: Trace, progress: ProgressCallback | None = None
) -> None:
    from references.wan_runner import run_wan_reference

    run_wan_reference(checkpoint, request, trace, progress)


def _run_wan_reference_forced(checkpoint: Path, request: GenerationRequest, trace: Trace, baseline: Trace) -> None:
    from references.wan_runner import run_wan_reference

    run_wan_reference(checkpoint, request, trace, force_from=baseline)


CASES: dict[str, Case] = {
    "flux-tiny": Case(
        name="flux-tiny",
        family="flux",
        description="FLUX.1-dev architecture, tiny random weights (2 double + 2 single blocks, hidden 32)",
        build_checkpoint=_tiny_flux_checkpoint,
        run_reference=_run_flux_reference,
        run_reference_forced=_run_flux_reference_forced,
        default_request=GenerationRequest(
            prompt="a photo of a cat", seed=0, steps=4, height=64, width=64, guidance_scale=3.5,
            max_sequence_length=128,
        ),
    ),
    "flux-digits": Case(
        name="flux-digits",
        family="flux",
        description="FLUX.1 format trained here on scikit-learn's digits (references/checkpoints/flux-digits)",
        build_checkpoint=_flux_digits_checkpoint,
        run_reference=_run_flux_reference,
        run_reference_forced=_run_flux_reference_forced,
        expects_picture=True,
        # Trained at 32 px with T5 length 16 (FluxPipeline gives T5 no mask: another length changes every
        # token's embedding); no guidance embedding, so guidance_scale is unused; true CFG on the empty prompt.
        default_request=GenerationRequest(
            prompt="a handwritten digit 7", seed=0, steps=20, height=32, width=32, guidance_scale=1.0,
            negative_prompt="", true_cfg_scale=3.0, max_sequence_length=16,
        ),
    ),
    "wan-tiny": Case(
        name="wan-tiny",
        family="wan",
        description="Wan 2.1 T2V architecture, tiny random weights (UMT5 2 layers, DiT 2 layers x 4 heads x 16, "
                    "causal 3D VAE), UniPC, true CFG",
        build_checkpoint=_tiny_wan_checkpoint,
        run_reference=_run_wan_reference,
        run_reference_forced=_run_wan_reference_forced,
        video=True,
        # 5 frames -> 2 latent frames of 6x10 (30 DiT tokens); true CFG as WanPipeline samples by default
        default_request=GenerationRequest(
            prompt="a cat walks through the misty forest", seed=0, steps=4, height=48, width=80, frames=5,
            negative_prompt="blurry, low quality", true_cfg_scale=5.0, max_sequence_length=64,
        ),
    ),
}


def get_case(name: str) -> Case:
    if name not in CASES:
        raise CaseError(f"unknown case '{name}'; known cases: {', '.join(sorted(CASES))}")
    return CASES[name]


def register_case(case: Case) -> None:
    """Declare a case from outside this module (a family's own module, a test's throwaway model): it then shows
    in `diffparity list`, in the registered-case tests (cases/test_registered_cases.py) and in the gate."""
    if case.name in CASES and CASES[case.name] is not case:
        raise CaseError(f"case '{case.name}' is already declared")
    CASES[case.name] = case


def cases_for_family(family: str) -> list[Case]:
    """The cases of a registry family (`ConfigEntry.family`), in declaration order."""
    return [case for case in CASES.values() if case.family == family]
