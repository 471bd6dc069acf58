"""Z-Image text-to-image (Diffusers' ZImagePipeline): tiny checkpoint builder, reference runner, cases, faults."""
