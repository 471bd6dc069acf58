"""Native, stage-based diffusion runtime: models written here, loaded from Diffusers-format checkpoints."""
