"""What every family's reference side is built from: the tiny-checkpoint build-once cache (tiny_build), hooks on
Diffusers instances that record and force intermediates (instance_hooks, reference_pipeline), tiny tokenizers
(tokenizers)."""
