"""FLUX.1: the Diffusers reference runner (runner), component builders (components), the tiny random checkpoint
(tiny), the trained digits checkpoint (digits), the parity cases (cases) and the faults (faults)."""
