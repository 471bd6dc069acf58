"""Parity cases: a named model family + tiny offline checkpoint + default request + reference runner.

`diffparity run CASE` and `pytest cases/` both start here. The harness declares no case: each family declares its
own in its `cases` module (references/<family>/cases.py) with `register_case`, and `CASES` imports those modules
the first time it is read (harness/families.py). A family's case module imports its reference code (Diffusers)
lazily, so that a usage error is answered without paying the ~5 s import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.families import FamilyRegistry
from harness.run.request import GenerationRequest
from harness.run.request_image import refit_synthetic
from harness.trace.memory import Trace

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
    # (height, width) sizes `diffparity calibrate` measures when the caller names none (empty: the default size)
    calibration_sizes: tuple[tuple[int, int], ...] = ()
    # (steps, height, width): per seed, one more true-CFG request at a corner the sizes miss (harness/golden/
    # calibrate.py), measured only when the caller names no sizes
    calibration_corners: tuple[tuple[int, int, int], ...] = ()
    # per seed, one more request per entry: the default request with these (field, value) pairs replaced, for a
    # path the sizes and corners miss (e.g. prompts of different lengths in one batch: padding masks), measured
    # only when the caller names no sizes
    calibration_variants: tuple[tuple[tuple[str, object], ...], ...] = ()
    # the fewest denoising steps the case's reference can run (Qwen-Image's terminal sigma shift needs 2); the
    # false-alarm campaign draws its step counts from here
    min_steps: int = 1
    # (checkpoint, request, trace, probe): the reference run with `probe.install(pipe)` called on the loaded
    # Diffusers pipeline before it runs (and `probe.remove()` after), so a drill (harness/drill/) can capture a
    # component call's inputs; it may stop the run early by raising. None: the case cannot be drilled
    run_reference_probe: Callable[[Path, GenerationRequest, Trace, Any], None] | None = None
    # (checkpoint) -> its VAE's latent signature (harness/noise/latent_stats.py LatentSignature): a case that
    # expects a picture then has its native decode/latents judged by the latent check too (harness/run/
    # latent_noise.py). None: the decoded image alone is judged
    latent_signature: Callable[[Path], Any] | None = None

    def request(self, **overrides: object) -> GenerationRequest:
        """The default request with the given non-None fields replaced. A case's own synthetic conditioning
        image follows a new size (harness/run/request_image.py `refit_synthetic`); a given image is kept."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        base = self.default_request
        height, width = changes.get("height", base.height), changes.get("width", base.width)
        if "image" not in changes and isinstance(height, int) and isinstance(width, int) and height > 0 < width:
            changes["image"] = refit_synthetic(base.image, height, width)
        return replace(base, **changes)


# name -> case, in declaration order (the families' order in references/families.py, then each module's)
CASES: FamilyRegistry[Case] = FamilyRegistry("cases")


def get_case(name: str) -> Case:
    if name not in CASES:
        raise CaseError(f"unknown case '{name}'; known cases: {', '.join(sorted(CASES))}")
    return CASES[name]


def register_case(case: Case) -> None:
    """Declare a case (in a family's `cases` module, or a test's throwaway model): it then shows in
    `diffparity list`, in the registered-case tests (cases/test_registered_cases.py) and in the gate."""
    if case.name in CASES and CASES[case.name] is not case:
        raise CaseError(f"case '{case.name}' is already declared")
    CASES[case.name] = case


def cases_for_family(family: str) -> list[Case]:
    """The cases of a registry family (`ConfigEntry.family`), in declaration order."""
    return [case for case in CASES.values() if case.family == family]
