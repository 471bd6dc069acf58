"""The latent check in a run: the native decode stage's latents judged against the case's VAE signature.

A case whose weights draw pictures (`Case.expects_picture`) and that names how to get its VAE's signature
(`Case.latent_signature`) has the latents its native pipeline handed the VAE (`decode/latents` in the trace, in
the VAE's own space) normalised and judged by harness/noise/latent_check.py; the report's noise section then
counts the native output as flagged when the image detector or the latent check flags it. A signature that
cannot be had (no VAE weights, an encoder the signature code cannot run) is reported, and fails nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.noise.latent_check import LatentVerdict, combine, judge_latents, normalise
from harness.noise.latent_stats import LatentError
from harness.run.cases import Case
from harness.trace.keys import RecordKey
from harness.trace.memory import Trace

DECODE_LATENTS = RecordKey("decode", "latents")


def judge_trace_latents(trace: Trace, signature: Any) -> LatentVerdict | None:
    """The latent check's verdict on the latents a run handed its VAE (`decode/latents`, the VAE's own space;
    video latents (B, C, F, h, w): the first item's frames), or None when the trace holds none. Raises
    LatentError for latents the check cannot read."""
    raw = trace.get(DECODE_LATENTS)
    if raw is None:
        return None
    latents = normalise(raw, signature)
    if latents.ndim == 5:  # (B, C, F, h, w) video latents: frames of the first item
        latents = latents[0].transpose(1, 0, 2, 3)
    return judge_latents(latents, signature)


def with_latent_check(section: dict[str, Any], case: Case, checkpoint: Path | str, trace: Trace,
                      expects_picture: bool) -> dict[str, Any]:
    """`section` (a report's noise section) with native["latent"] added, and flagged/failed by it, when the case
    has a latent signature and the trace holds decode/latents; unchanged otherwise."""
    if case.latent_signature is None or not expects_picture or DECODE_LATENTS not in trace:
        return section
    try:
        verdict = judge_trace_latents(trace, case.latent_signature(Path(checkpoint)))
    except (LatentError, OSError, ValueError, ImportError, RuntimeError) as exc:  # SignatureError is a ValueError
        native = dict(section["native"], latent={"verdict": "unavailable", "reason": f"latent check: {exc}"})
        return dict(section, native=native)
    return section if verdict is None else combine(section, verdict, expects_picture)
