"""Wan 2.1 T2V: the Diffusers reference runner (runner), the tiny random checkpoint (tiny), the parity case
(cases) and the faults (faults)."""
