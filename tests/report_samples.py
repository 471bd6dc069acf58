"""Sample report.json documents and frames for the report renderer tests, with known colours and values.

The frames are flat colour fields (exact 8-bit values) so a screenshot can be searched for them pixel by pixel.
"""

from __future__ import annotations

from typing import Any

import torch

NATIVE_LEFT = (200, 20, 150)  # the left half of every native and reference frame
NATIVE_RIGHT = (20, 170, 60)
SIDE = 32
HOT = (8, 16, 8, 16)  # rows 8..16, columns 8..16: the only pixels where reference differs from native (by 0.2)


def sample_frames(batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, 32, 32) native and reference frames in [0, 1]: two flat halves, differing in one square."""
    native = torch.zeros(batch, 3, SIDE, SIDE, dtype=torch.float32)
    for channel in range(3):
        native[:, channel, :, : SIDE // 2] = NATIVE_LEFT[channel] / 255
        native[:, channel, :, SIDE // 2 :] = NATIVE_RIGHT[channel] / 255
    reference = native.clone()
    r0, r1, c0, c1 = HOT
    reference[:, 0, r0:r1, c0:c1] += 0.2
    return native, reference


def _record(stage: str, field: str, step: int | None, rel_l2: float, cos: float, passed: bool = True,
            mode: str | None = None, floor_multiple: float | None = None, metric: str = "rel_l2") -> dict[str, Any]:
    record: dict[str, Any] = {
        "stage": stage, "field": field, "step": step, "shape": [1, 16, 8, 8],
        "metrics": {"max_abs": rel_l2 * 3, "mean_abs": rel_l2 / 2, "rel_l2": rel_l2, "cos": cos, "ref_rms": 1.0,
                    "nonfinite": 0},
        "tolerance": {"metric": metric, "threshold": 1e-5},
        "passed": passed,
    }
    if mode is not None:
        record["mode"] = mode
    if floor_multiple is not None:
        record["floor_multiple"] = floor_multiple
    return record


NOISE_REASON = "pixel_noise 0.91 >= 0.35"  # the native reason of a flagged sample (noise_flagged=True)


def _noise_side(flagged: bool) -> dict[str, Any]:
    value = 0.91 if flagged else 0.02
    return {
        "verdict": "flagged" if flagged else "ok",
        "flagged": flagged,
        "reason": NOISE_REASON if flagged else "no check fired; closest: pixel_noise 0.02 vs 0.35",
        "checks": [{"name": "near_constant", "fired": False, "value": 0.3, "threshold": 0.01, "margin": -29.0},
                   {"name": "pixel_noise", "fired": flagged, "value": value, "threshold": 0.35,
                    "margin": value / 0.35 - 1},
                   {"name": "smooth_noise", "fired": False, "value": [3.9, -8.4], "threshold": [2.6, 3.5, -3.5, -1.25],
                    "margin": -1.4}],
    }


def sample_noise(flagged: bool = False, expects_picture: bool = True) -> dict[str, Any]:
    """report["noise"] as harness/noise/detector.py `noise_section` writes it; a flagged native output fails a run
    that expects a picture."""
    fails = flagged and expects_picture
    note = ("the native output is flagged as noise while the reference is a picture" if flagged
            else "both outputs look like pictures")
    return {"native": _noise_side(flagged), "reference": _noise_side(False), "fails_run": fails, "note": note}


def sample_report(steps: int = 6, with_drift: bool = True, failing: bool = True, noise_flagged: bool = False,
                  ) -> dict[str, Any]:
    """A report with free and forced records, a drift section as part A designs it, and a failing decode.

    Every record's threshold is rel_l2 1e-5: the transformer output runs at 0.03x-0.18x of it, the latents at
    0.01x-0.06x, and a failing decode/latents at 3e4x. The noise section passes unless `noise_flagged`."""
    records = []
    for mode in ("free", "forced"):
        records.append(_record("encode", "prompt_embeds", None, 2e-7, 1 - 1e-12, mode=mode, floor_multiple=1.5))
        records.append(_record("timesteps", "sigmas", None, 0.0, 1.0, mode=mode, floor_multiple=0.0))
        for step in range(steps):
            records.append(_record("denoise", "transformer_output", step, 3e-7 * (step + 1), 1 - 1e-12, mode=mode,
                                   floor_multiple=2.0))
            records.append(_record("denoise", "latents", step, 1e-7 * (step + 1), 1 - 1e-12, mode=mode,
                                   floor_multiple=1.2))
        bad = failing and mode == "forced"
        records.append(_record("decode", "latents", None, 0.3 if bad else 1e-7, 0.95 if bad else 1.0,
                               passed=not bad, mode=mode, floor_multiple=3e4 if bad else 1.0))
    report: dict[str, Any] = {
        "schema_version": 1,
        "case": "flux-tiny",
        "seed": 7,
        "verdict": "fail" if failing or noise_flagged else "pass",
        "first_divergence": {"stage": "decode", "field": "latents", "step": None} if failing else None,
        "first_divergence_detail": ("decode/latents: rel_l2 0.3 > tolerance 1e-05 (max_abs 0.9, cos 0.950000)"
                                    if failing else None),
        "records": records,
        "request": {"prompt": "a <b>cat</b> | dog", "seed": 7, "steps": steps, "height": 32, "width": 32,
                    "dtype": "fp32", "device": "cpu"},
        "checkpoint": "/tmp/ckpt",
        "environment": {"python": "3.11.7", "torch": "2.13.0+cpu", "cuda": None, "device": "cpu", "dtype": "fp32",
                        "attention_backend": "math", "tf32_matmul": False, "torch_threads": 1,
                        "platform": "Linux", "diffusers": "0.42.1"},
        "timings_s": {"native": 0.3},
        "tolerances": {"source": "golden/tolerances/flux-tiny.fp32.cpu.json", "calibrated_records": 19,
                       "rule": "threshold = 3 x the calibrated floor (golden/tolerances/flux-tiny.fp32.cpu.json)"},
        "noise": sample_noise(noise_flagged),
        "difference_max_255": 51.0,
        "image_metrics": {"frames": [{"frame": 0, "psnr": 29.1, "ssim": 0.98, "mad_255": 0.8}]},
    }
    if with_drift:
        rel = {f: [k * (s + 1) for s in range(steps)] for f, k in (("latents", 1e-7), ("transformer_output", 3e-7))}
        report["drift"] = {
            "steps": list(range(steps)),
            "free": {f: {"rel_l2": v, "cos": [1.0] * steps} for f, v in rel.items()},
            "forced": {f: {"rel_l2": [x / 10 for x in v], "cos": [1.0] * steps} for f, v in rel.items()},
            "growth": {"latents": [None, *[(s + 2) / (s + 1) for s in range(steps - 1)]]},
        }
    return report
