"""Reference side: runs the HuggingFace Diffusers pipeline with hooks, and builds tiny offline checkpoints."""
