"""Reference side: runs the HuggingFace Diffusers pipeline with hooks, and builds tiny offline checkpoints.

One folder per model family (flux/, wan/: reference runner, tiny builder, cases, faults), listed in families.py;
common/ holds what every family's reference side is built from; checkpoints/ the shipped trained checkpoint.
"""
