"""The files of a new model family, as templates over its name (`${family}`, `${Camel}`).

Each file compiles and imports as written, so a scaffolded family registers at once and `diffparity gate FAMILY`
can say what is missing: every place where model code goes is a TODO block (harness/scaffold/markers.py) whose
stub raises NotImplementedError naming the block, and the names outside the blocks (`${Camel}Pipeline`,
`build_tiny_${family}`, `run_${family}_reference`, `DEFAULT_REQUEST`, `FAMILY_FAULTS`, `SIZES`...) are what a
block's replacement must keep defining. The order of BLOCKS is the order of docs/adding-a-model.md.
"""

from __future__ import annotations

from string import Template

# block id -> the step of docs/adding-a-model.md that fills it
BLOCKS = {
    "native-pipeline": 2,
    "tiny-builder": 3,
    "reference-runner": 3,
    "case": 4,
    "faults": 5,
    "case-tests": 6,
}

PIPELINE = '''"""${Camel}: the family's sampling defaults, config and native pipeline.

They mirror Diffusers' ${Camel}Pipeline.

Written by `diffparity scaffold ${family}`. Each `TODO(scaffold:...)` block is a step of
docs/adding-a-model.md and `diffparity gate ${family}` lists the blocks still left. The code after
the block uses ${Camel}SamplingParams, ${Camel}PipelineConfig and ${Camel}Pipeline:
keep those names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from native_models.configs import PipelineConfig, SamplingParams
from native_models.pipeline import ComposedPipeline
from native_models.registry import register_configs


# TODO(scaffold:native-pipeline) begin: the native pipeline: sampling defaults, the config's model callbacks, stages
@dataclass
class ${Camel}SamplingParams(SamplingParams):
    """The real checkpoint's defaults: those of Diffusers' ${Camel}Pipeline.__call__."""


@dataclass
class ${Camel}PipelineConfig(PipelineConfig):
    """What the standard stages ask of the model: text encoders (TextEncoderSpec), latent shape and packing, sigmas
    and mu, conditioning and rotary kwargs, timestep scaling, guidance, decode scale and shift."""


class ${Camel}Pipeline(ComposedPipeline):
    pipeline_name = "${Camel}Pipeline"  # model_index.json's _class_name: the Diffusers class
    _required_config_modules = ("text_encoder", "tokenizer", "transformer", "vae", "scheduler")

    @classmethod
    def configure(cls, config: PipelineConfig, checkpoint: Path) -> None:
        raise NotImplementedError("TODO(scaffold:native-pipeline): the ${family} pipeline is not "
                                  "written yet (native_models/pipelines/${family}.py)")

    def create_pipeline_stages(self) -> None:
        self.add_standard_t2i_stages()
# TODO(scaffold:native-pipeline) end


EntryClass = ${Camel}Pipeline

register_configs(
    ${Camel}SamplingParams,
    ${Camel}PipelineConfig,
    hf_model_paths=[],  # Hugging Face ids of the real checkpoints, e.g. "org/${Camel}-1.0"
    model_detectors=[lambda name: name == ${Camel}Pipeline.pipeline_name],  # model_index.json's _class_name
)
'''

PACKAGE = '''"""${Camel}: the family's reference side (Diffusers, hooks only), tiny checkpoint, cases and faults.

Written by `diffparity scaffold ${family}`; listed in references/families.py.
"""
'''

TINY = '''"""A tiny random-weight ${Camel} checkpoint in the Diffusers folder format, built offline and cached.

Parity needs a checkpoint both sides load, with every stage of the real architecture but small enough for a CPU.
references/flux/tiny.py is the worked example; references/common/tiny_build.py gives per-component seeding
(`seed_component`), no constant parameter (`randomise_constant_parameters`), the build record (`save_checkpoint`)
and the build-once cache. Import Diffusers inside the build function: finding the cached folder must not cost it.
"""

from __future__ import annotations

from pathlib import Path

from references.common.tiny_build import build_once, checkpoint_folder

BUILD_VERSION = 1  # bump when the recipe changes, so folders cached by an older recipe are not reused


# TODO(scaffold:tiny-builder) begin: build_tiny_${family}(out_dir, seed) writes a tiny pipeline folder
def build_tiny_${family}(out_dir: Path, seed: int = 0) -> Path:
    """Write a complete ${Camel}Pipeline folder (safetensors) with random weights determined by `seed`."""
    raise NotImplementedError("TODO(scaffold:tiny-builder): the tiny ${family} checkpoint is not built yet "
                              "(references/${family}/tiny.py)")
# TODO(scaffold:tiny-builder) end


def tiny_${family}_checkpoint(seed: int = 0) -> Path:
    """The cached tiny checkpoint for `seed`, built once on first use (atomically)."""
    return build_once(checkpoint_folder("${family}", BUILD_VERSION, seed, None),
                      lambda folder: build_tiny_${family}(folder, seed=seed))
'''

RUNNER = '''"""Runs Diffusers' ${Camel}Pipeline unmodified and records every stage into a Trace.

Instance-level hooks only (references/common/instance_hooks.py: `PipelineRecorder`, `PipelineForcer`), run through
references/common/reference_pipeline.py `run_reference_pipeline`; records keyed as the native stages record them
(stage/field/step, canonical spatial layouts). references/flux/runner.py is the worked example.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.run.request import GenerationRequest
from harness.trace.memory import Trace


# TODO(scaffold:reference-runner) begin: run_${family}_reference records the Diffusers run (and forces it)
def run_${family}_reference(checkpoint: Path, request: GenerationRequest, trace: Trace,
                            progress: Callable[[int, int], None] | None = None,
                            force_from: Trace | None = None) -> None:
    """Run Diffusers' ${Camel}Pipeline for `request`, recording every stage into `trace`; with
    `force_from` (another reference trace of the request) teacher-forced from it, for calibration."""
    raise NotImplementedError("TODO(scaffold:reference-runner): the ${family} reference runner is "
                              "not written yet (references/${family}/runner.py)")
# TODO(scaffold:reference-runner) end
'''

CASES = '''"""The ${Camel} parity cases, registered on import.

Reference code and the builder are imported when a case runs, not here, so `diffparity list` and a usage error
never pay for importing Diffusers.
"""

from __future__ import annotations

from pathlib import Path

from harness.run.cases import Case, ProgressCallback, register_case
from harness.run.request import GenerationRequest
from harness.trace.memory import Trace


def _tiny_checkpoint() -> Path:
    from references.${family}.tiny import tiny_${family}_checkpoint

    return tiny_${family}_checkpoint(seed=0)


def _run_reference(checkpoint: Path, request: GenerationRequest, trace: Trace,
                   progress: ProgressCallback | None = None) -> None:
    from references.${family}.runner import run_${family}_reference

    run_${family}_reference(checkpoint, request, trace, progress)


def _run_reference_forced(checkpoint: Path, request: GenerationRequest, trace: Trace, baseline: Trace) -> None:
    from references.${family}.runner import run_${family}_reference

    run_${family}_reference(checkpoint, request, trace, force_from=baseline)


# TODO(scaffold:case) begin: the case's description and default request (small: it runs in CI on a CPU)
DESCRIPTION = "${Camel} architecture, tiny random weights"
DEFAULT_REQUEST = GenerationRequest(prompt="a photo of a cat", seed=0, steps=4, height=64, width=64)
# TODO(scaffold:case) end

register_case(Case(
    name="${family}-tiny",
    family="${family}",
    description=DESCRIPTION,
    build_checkpoint=_tiny_checkpoint,
    run_reference=_run_reference,
    run_reference_forced=_run_reference_forced,
    default_request=DEFAULT_REQUEST,
))
'''

FAULTS = '''"""Documented ways to break the native ${Camel} pipeline, and the record where parity must catch each.

Each `Fault` (harness/verdicts/faults.py) mutates a built pipeline through instance attributes only and names its
expected first divergence; `diffparity faults ${family}-tiny` runs them all. references/flux/faults.py and
references/wan/faults.py are the worked examples; the generic helpers (`drop_weight`, `swap_qk_norm_weights`,
`wrap_after`) live in harness/verdicts/faults.py.
"""

from __future__ import annotations

from harness.verdicts.faults import Fault, register

# TODO(scaffold:faults) begin: at least one Fault(..., families=("${family}",)) in FAMILY_FAULTS
FAMILY_FAULTS: tuple[Fault, ...] = ()
# TODO(scaffold:faults) end

for _fault in FAMILY_FAULTS:
    register(_fault)
'''

CASE_TESTS = '''"""${Camel} parity: the native pipeline against Diffusers' ${Camel}Pipeline, stage by stage.

Free-running and teacher-forced (`pytest cases/ -k ${family}`). Tolerances: the case's stored calibration
when there is one (golden/tolerances/), else the defaults.
"""

from __future__ import annotations

import pytest

from harness.report.build import describe_failure
from harness.run.cases import get_case
from harness.run.parity import run_parity

# TODO(scaffold:case-tests) begin: the sizes (height, width), seeds and precisions parity must hold at
SIZES: list[tuple[int, int]] = []
SEEDS = [0, 1]
DTYPES = ["fp32", "bf16"]
# TODO(scaffold:case-tests) end


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_${family}_tiny_parity(size: tuple[int, int], seed: int, dtype: str) -> None:
    case = get_case("${family}-tiny")
    result = run_parity(case, case.request(height=size[0], width=size[1], seed=seed, dtype=dtype))
    first = result.comparison.first_divergence
    assert result.passed, describe_failure(first) if first else "no records compared"
    assert {record.stage for record in result.comparison.records} == {"encode", "timesteps", "latents", "denoise",
                                                                        "decode"}
    assert result.comparison.forced_records, "the teacher-forced run compared nothing"
'''


def family_files(family: str) -> dict[str, str]:
    """Repository-relative path -> text of every new file of `family`."""
    names = {"family": family, "Camel": "".join(part.capitalize() for part in family.split("_"))}
    files = {
        f"native_models/pipelines/{family}.py": PIPELINE,
        f"references/{family}/__init__.py": PACKAGE,
        f"references/{family}/tiny.py": TINY,
        f"references/{family}/runner.py": RUNNER,
        f"references/{family}/cases.py": CASES,
        f"references/{family}/faults.py": FAULTS,
        f"cases/test_{family}.py": CASE_TESTS,
    }
    return {path: Template(text).substitute(names) for path, text in files.items()}
