"""The registry maps a checkpoint to its model family."""

from __future__ import annotations


def test_registry_trusts_the_pipeline_class_over_the_folder_name() -> None:
    """A Wan checkpoint copied into a folder named 'flux-...' is still Wan: model_index.json decides."""
    import native_models.pipelines.flux  # noqa: F401 - registers FLUX
    import native_models.pipelines.wan  # noqa: F401 - registers Wan
    from native_models.registry import get_configs

    assert get_configs("/data/flux-experiments/wan-copy", "WanPipeline").family == "wan"
    assert get_configs("/data/my-model", "FluxPipeline").family == "flux"
