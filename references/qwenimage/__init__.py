"""Qwen-Image text-to-image (Diffusers' QwenImagePipeline): tiny checkpoint builder, reference runner, cases, faults."""
