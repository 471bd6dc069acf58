"""`ComposedPipeline`: a native pipeline is an ordered list of stages over native modules.

The concrete pipeline class for a checkpoint is found from `model_index.json`'s `_class_name`, among the
`EntryClass` attributes of the modules in `native_models.pipelines` (one module per model family).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from native_models.components import is_known_class, load_native_component
from native_models.configs import PipelineConfig
from native_models.errors import CheckpointError
from native_models.limits import check_batch_limits
from native_models.loader import read_json, read_model_index
from native_models.parallel.mesh import SINGLE, ParallelMesh
from native_models.req import Req
from native_models.stages.base import TENSOR, FieldKind, PipelineStage
from native_models.stages.condition_latents import ConditionLatentStage
from native_models.stages.decoding import DecodingStage, ReplicaDecodingStage
from native_models.stages.denoising import DenoisingStage
from native_models.stages.image_encoding import ImageEncodingStage
from native_models.stages.latent_preparation import LatentPreparationStage
from native_models.stages.text_encoding import TextEncodingStage
from native_models.stages.timestep_preparation import TimestepPreparationStage


class ComposedPipeline:
    """Loads the required native modules of a checkpoint and runs its stages in order.

    Subclasses set `pipeline_name` (the Diffusers pipeline class they mirror), `_required_config_modules`
    (and `_optional_config_modules`, loaded when model_index.json names them) and implement
    `create_pipeline_stages`.
    """

    pipeline_name: ClassVar[str] = ""
    _required_config_modules: ClassVar[tuple[str, ...]] = ()
    # Loaded when model_index.json names them (Diffusers' optional components: `transformer_2` of a two-expert
    # Wan, the image encoder of Wan 2.1 I2V, absent from Wan 2.2 I2V); a null entry counts as absent.
    _optional_config_modules: ClassVar[tuple[str, ...]] = ()
    # Components split across ranks when the pipeline runs on a parallel mesh (their class declares `_tp_plan` /
    # `_sp_plan`, native_models/parallel); every other component is loaded whole on every rank.
    _parallel_modules: ClassVar[tuple[str, ...]] = ("transformer",)
    # Component name -> "module:Class" built instead of the class MODEL_CLASSES maps its Diffusers class to: a
    # reduced variant the pipeline needs no more of (Wan text-to-video: the VAE without its encoder).
    _native_classes: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        checkpoint: Path,
        config: PipelineConfig,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        modules: dict[str, Any] | None = None,
        mesh: ParallelMesh = SINGLE,
    ) -> None:
        self.checkpoint = Path(checkpoint)
        self.config = config
        self.dtype = dtype
        self.device = torch.device(device)
        self.mesh = mesh
        self.configure(config, self.checkpoint)
        self.modules: dict[str, Any] = modules if modules is not None else self.load_modules()
        self.stages: list[tuple[str, PipelineStage]] = []
        self.create_pipeline_stages()

    @classmethod
    def configure(cls, config: PipelineConfig, checkpoint: Path) -> None:
        """Copy static model facts from the components' config.json files into `config` (no weights read).

        Called before any weight loads, so a request the model cannot run is rejected in milliseconds.
        """

    # ---- modules ----
    def load_modules(self) -> dict[str, Any]:
        """Build every required module named in model_index.json with its native class."""
        components = read_model_index(self.checkpoint)
        for name, (_, class_name) in components.items():
            if not is_known_class(class_name):
                raise CheckpointError(f"model_index.json names unknown class '{class_name}' for component '{name}'")
        missing = [name for name in self._required_config_modules if name not in components]
        if missing:
            raise CheckpointError(
                f"{self.checkpoint / 'model_index.json'} lacks required component(s) {', '.join(missing)}"
            )
        optional = self.optional_modules(components)
        return {
            name: load_native_component(
                name, components[name][1], self.checkpoint, self.dtype, self.device,
                mesh=self.mesh if name in self._parallel_modules else None,
                native_class=self._native_classes.get(name),
            )
            for name in (*self._required_config_modules, *optional)
        }

    def optional_modules(self, components: dict[str, tuple[str, str]]) -> list[str]:
        """The optional components to load: those model_index.json names (a family may leave some unused)."""
        return [name for name in self._optional_config_modules if name in components]

    def get_module(self, name: str) -> Any:
        return self.modules[name]

    def has_module(self, name: str) -> bool:
        """Whether component `name` was loaded (an optional component may be absent)."""
        return name in self.modules

    # ---- stages ----
    def add_stage(self, name: str, stage: PipelineStage) -> None:
        if any(existing == name for existing, _ in self.stages):
            raise ValueError(f"stage name '{name}' is already used in {type(self).__name__}")
        self.stages.append((name, stage))

    def create_pipeline_stages(self) -> None:
        raise NotImplementedError

    def add_standard_t2i_stages(self) -> None:
        """Text encoding, latent preparation, timestep preparation, denoising, decoding."""
        self.add_text_encoding_stage()
        self.add_latent_preparation_stage()
        self.add_stage("timestep_preparation", TimestepPreparationStage(self.get_module("scheduler"), self.config))
        self.add_denoising_stage()
        self.add_decoding_stage()

    def add_standard_ti2v_stages(self, image_encoding: bool = True, condition_sample_mode: str = "argmax") -> None:
        """Text encoding, image encoding (unless `image_encoding` is False: a DiT without an image path),
        latent preparation, conditioning latents, timestep preparation, denoising, decoding.

        Needs `image_encoder` and `image_processor` modules for image encoding. The conditioning latents are
        prepared after the initial noise is drawn (the reference's RNG order); the denoising stage then also
        reads `condition` (and `image_embeds`), which the family's `prepare_model_input` / conditioning kwargs use.
        """
        self.add_text_encoding_stage()
        extra_reads: dict[str, FieldKind] = {"condition": TENSOR}
        if image_encoding:
            self.add_stage("image_encoding", ImageEncodingStage(
                self.get_module("image_encoder"), self.get_module("image_processor"), self.config))
            extra_reads["image_embeds"] = TENSOR
        self.add_latent_preparation_stage()
        self.add_stage("condition_latent_preparation",
                       ConditionLatentStage(self.get_module("vae"), self.config, sample_mode=condition_sample_mode))
        self.add_stage("timestep_preparation", TimestepPreparationStage(self.get_module("scheduler"), self.config))
        self.add_denoising_stage(extra_reads)
        self.add_decoding_stage()

    def add_decoding_stage(self) -> None:
        """The VAE decodes on the first rank only, unless it is split across ranks (`_parallel_modules`): whole
        on every rank, it would decode the same frames on each (ReplicaDecodingStage)."""
        replica = self.mesh.rank != 0 and "vae" not in self._parallel_modules
        stage = ReplicaDecodingStage if replica else DecodingStage
        self.add_stage("decoding", stage(self.get_module("vae"), self.config))

    def add_text_encoding_stage(self) -> None:
        encoders = [
            (spec, self.get_module(spec.tokenizer), self.get_module(spec.encoder)) for spec in self.config.text_encoders
        ]
        self.add_stage("text_encoding", TextEncodingStage(encoders, self.config))

    def add_latent_preparation_stage(self) -> None:
        self.add_stage(
            "latent_preparation", LatentPreparationStage(self.config, self.vae_scale_factor(), self.latent_channels())
        )

    def add_denoising_stage(self, extra_reads: dict[str, FieldKind] | None = None) -> None:
        """The denoising stage over `transformer`, and `transformer_2` as a second expert when it was loaded."""
        transformer_2 = self.get_module("transformer_2") if self.has_module("transformer_2") else None
        self.add_stage("denoising", DenoisingStage(
            self.get_module("transformer"), self.get_module("scheduler"), self.config,
            transformer_2=transformer_2, extra_reads=extra_reads,
        ))

    def latent_channels(self) -> int:
        """Channels of the spatial latent the VAE decodes."""
        return int(self.get_module("vae").latent_channels)

    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along height and width."""
        return int(self.get_module("vae").vae_scale_factor)

    def forward(self, batch: Req, on_stage: Callable[[str], None] | None = None) -> Req:
        check_batch_limits(batch)  # sizes, steps, seed: bounded before any stage allocates
        self.config.check_request(batch)
        for name, stage in self.stages:
            if on_stage is not None:
                on_stage(name)
            batch = stage(batch)
        return batch


def discover_pipelines() -> dict[str, type[ComposedPipeline]]:
    """pipeline_name -> class, from the `EntryClass` of every module in `native_models.pipelines`."""
    import native_models.pipelines as package

    found: dict[str, type[ComposedPipeline]] = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        entries = getattr(module, "EntryClass", None)
        if entries is None:
            continue
        for entry in entries if isinstance(entries, list | tuple) else [entries]:
            found[entry.pipeline_name] = entry
    return found


def pipeline_class_for(checkpoint: Path) -> type[ComposedPipeline]:
    """The native pipeline class mirroring the checkpoint's Diffusers pipeline class."""
    class_name = read_json(checkpoint / "model_index.json").get("_class_name")
    if not isinstance(class_name, str):
        raise CheckpointError(f"{checkpoint / 'model_index.json'} has no _class_name")
    pipelines = discover_pipelines()
    if class_name not in pipelines:
        known = ", ".join(sorted(pipelines)) or "none"
        raise CheckpointError(f"no native pipeline for '{class_name}' (native pipelines: {known})")
    return pipelines[class_name]
