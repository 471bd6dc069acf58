"""Why each surviving mutant of scripts/mutation.sh survives: the classification docs/mutation-report.md shows.

Rules match a survivor by its function and its changed source line (not by mutmut's mutant number, which shifts
when a function changes), first match wins. Classes:

- `equivalent`: cannot change the numbers of any run the harness makes (the reason says why: same value, a
  no-op on the CPU, an input-validation path, an unreachable branch).
- `below-floor`: changes the numbers, by less than the calibrated tolerance (the report measures by how much).
- `blind-spot`: changes behaviour on a valid input that no parity case exercises (the reason says why it is
  left).

A survivor no rule matches is reported as `unclassified`: a new survivor needs a look, not a default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EQUIVALENT, BELOW_FLOOR, BLIND_SPOT, UNCLASSIFIED = "equivalent", "below-floor", "blind-spot", "unclassified"


@dataclass(frozen=True)
class Rule:
    function: str  # regex on the mutant's function key (module-less, without __mutmut_N)
    removed: str  # regex searched in the first removed source line
    added: str  # regex searched in the first added source line ("" matches anything)
    cls: str
    reason: str
    changed: str = ""  # regex on "<removed fragment> -> <added fragment>" (the lines minus their common ends)


MESSAGE = ("error message only: the text of an exception raised for invalid input (or a TypeError while "
           "formatting it); nothing is computed on a valid input")
GUARD = "input validation: changes which invalid inputs are refused; every accepted input computes the same numbers"
CPU = ("device argument: a no-op when every tensor is on the CPU, as in every run here (on CUDA it would leave a "
       "tensor on the CPU; not measured, no GPU in this task)")

RULES: tuple[Rule, ...] = (
    # --- error paths and validation -----------------------------------------------------------------------------
    Rule(r".", r"^raise |^f?\"[^\"]*\"[,)]*$", "", EQUIVALENT, MESSAGE),
    Rule(r"FlowMatchEulerConfigǁcheck_values", r".", "", EQUIVALENT,
         GUARD + " (the type and range checks of a scheduler config: they refuse hostile configs, a mutant "
                 "lets some through or refuses an edge value such as exactly the maximum)"),
    Rule(r"FluxConfigǁvalidate", r"getattr\(self, name\) < 1", "", EQUIVALENT,
         GUARD + " (`< 2` / `<= 1` also refuse a config with a single head or channel; no FLUX checkpoint has one)"),
    Rule(r"FluxConfigǁvalidate", r"^odd = ", "", EQUIVALENT, GUARD + " (odd rotary axes accepted)"),
    Rule(r"FluxConfigǁfrom_dict", r"^unknown = ", "", EQUIVALENT,
         GUARD + " (unknown config keys accepted silently; the unit test tests/test_flux_transformer.py::"
                 "test_unsupported_config_raises, outside the parity selection, covers it)"),
    Rule(r"FluxConfigǁfrom_dict", r"\"axes_dims_rope\" in values", "", EQUIVALENT,
         "container type only: axes_dims_rope stays the JSON list instead of a tuple; it is only summed, iterated "
         "and measured, so every number is the same"),
    Rule(r"FluxTransformer2DModelǁrotary", r"^for name, ids in", "", EQUIVALENT, MESSAGE),
    Rule(r"FluxTransformer2DModelǁrotary|x_rotary_cos_sin|x_apply_rotary", r"\.ndim != 2 or|!= x.shape\[-1\] or",
         r" and ", EQUIVALENT, GUARD + " (malformed position ids / rotary tables)"),
    Rule(r"FlowMatchEulerConfigǁfrom_dict", r"num_train_timesteps < 1", "", EQUIVALENT,
         GUARD + " (`< 2` / `<= 1` also refuse num_train_timesteps=1, which no FLUX scheduler uses)"),
    Rule(r"FlowMatchEulerConfigǁfrom_dict", r"ignored", "", EQUIVALENT,
         "metadata only: `ignored` keeps the config keys that do not affect FLUX sampling and is never read by the "
         "schedule or the step"),
    Rule(r"FlowMatchEulerSchedulerǁ__init__", r"= None$", r"= \"\"$", EQUIVALENT,
         GUARD + " (the 'step called before set_timesteps' check no longer fires; every run sets the schedule "
                 "first)"),
    Rule(r"FlowMatchEulerSchedulerǁcompute_mu", r" is None or ", "", EQUIVALENT, GUARD),
    Rule(r"FlowMatchEulerSchedulerǁ_stretch_to_terminal", r"^if one_minus_t\[-1\] == 0", "", EQUIVALENT,
         GUARD + " (the refusal of a last sigma of 1, where Diffusers divides 0 by 0)"),
    Rule(r"FlowMatchEulerSchedulerǁset_schedule", r"\.ndim != 1 or", "", EQUIVALENT, GUARD),
    Rule(r"FlowMatchEulerSchedulerǁstep", r"is None or self.num_inference_steps is None", "", EQUIVALENT, GUARD),
    Rule(r"FlowMatchEulerSchedulerǁstep", r"0 <= step_index < ", "", EQUIVALENT,
         GUARD + " (index N is accepted and then fails on sigmas[N + 1] with an IndexError)"),
    Rule(r"FluxPipelineConfigǁcheck_request", r"^multiple = ", "", EQUIVALENT,
         GUARD + " (sizes divisible by 8 but not 16 are accepted; the latent shape still floors to 16, as "
                 "Diffusers does for such sizes)"),
    Rule(r"FluxPipelineConfigǁcheck_request", r"max_sequence_length > 512", r"> 513", EQUIVALENT,
         GUARD + " (513 accepted; FluxPipeline refuses it)"),
    Rule(r"FluxPipelineConfigǁcheck_request", r"max_sequence_length > 512", r">= 512", BLIND_SPOT,
         "refuses FLUX's default T5 length 512 with a RequestError (loud, not a numeric change). A parity case at "
         "512 tokens would kill it, but today it fails encode/prompt_embeds in fp32 (rel_l2 3.8e-6 > calibrated "
         "2.47e-6; the calibration was measured at 128 tokens); left to the calibration work"),
    Rule(r"FluxPipelineConfigǁprepare_rotary_kwargs", r"^assert ", "", EQUIVALENT,
         "assertion only (a type-checker hint; the stage checks these fields before it runs)"),
    Rule(r"FluxPipelineǁconfigure", r"not isinstance\(blocks, list\) or not blocks", "", EQUIVALENT,
         GUARD + " (an empty block_out_channels list is accepted; no VAE has one)"),
    Rule(r"FluxPipelineǁconfigure", r"vae_scale_factor = 2 \*\* \(len\(blocks\) - 1\)", "", EQUIVALENT,
         GUARD + " (config.vae_scale_factor only feeds check_request's size check; the latent shape takes the "
                 "factor from the loaded VAE)"),
    Rule(r"FluxPipelineǁconfigure", r"guidance_embeds\", False\)", r"\", (None|)\)\)", EQUIVALENT,
         "same value: a missing key gives None, and bool(None) is False, the original default"),
    Rule(r"FluxPipelineǁconfigure", r"guidance_embeds\", False\)", r"True\)\)", EQUIVALENT,
         "default of a key every Diffusers-written transformer config contains (save_pretrained writes all keys); "
         "a hand-written config without it would pass guidance to a DiT without a guidance embedder, which raises"),
    Rule(r"FlowMatchEulerSchedulerǁset_schedule", r"shape\[0\] < 1", "", EQUIVALENT,
         GUARD + " (`< 2` / `<= 1` would refuse an installed one-step schedule; the guard's one-step case "
                 "checks that)"),
    # --- device arguments (CPU) ---------------------------------------------------------------------------------
    # the changed part is a device expression, replaced by None or deleted
    Rule(r".", r"device", "", EQUIVALENT, CPU, changed=r"^[^>]*device[^>]*-> (None)?$"),
    # --- same value -----------------------------------------------------------------------------------------------
    Rule(r"Rotaryǁapply", r"self.interleaved\)", "", EQUIVALENT,
         "same value in every correct run: apply_rotary's default interleaved=True is what FLUX uses (only the "
         "harness's rotary_style_swapped fault sets False, and would then go unnoticed)"),
    Rule(r"TimeTextEmbeddingǁforward", r"TIMESTEP_CHANNELS\)", "", EQUIVALENT,
         "same value: timestep_embedding's default dim is 256 = TIMESTEP_CHANNELS"),
    Rule(r"x_joint_attention", r"\.to\(q\.dtype\)", r"\.to\(None\)", EQUIVALENT,
         "no-op cast: the attention kernel returns q's dtype"),
    Rule(r"x_joint_attention", r"flatten\(2, 3\)", r"flatten\(2, \)", EQUIVALENT,
         "same value: flatten(2) of a 4-D tensor is flatten(2, 3)"),
    Rule(r"(Double|Single)StreamBlockǁforward", r"\.clip\(-FP16_MAX, FP16_MAX\)",
         r"clip\(None, FP16_MAX\)|clip\(-FP16_MAX, None\)|clip\(-FP16_MAX, \)", EQUIVALENT,
         "same value on every finite float16 tensor: all finite float16 values lie in [-65504, 65504], so a "
         "one-sided clip differs from the two-sided one only on +-inf"),
    Rule(r"FinalLayerǁforward", r"\.to\(x\.dtype\)", r"\.to\(None\)", EQUIVALENT,
         "no-op cast: the conditioning vector is computed in the model's dtype, which is x's"),
    Rule(r"FluxTransformer2DModelǁ__init__", r"patch_size\*\*2", r"patch_size\*\*3", EQUIVALENT,
         "same value: validate() requires patch_size == 1, and 1**3 == 1**2"),
    Rule(r"FluxTransformer2DModelǁrotary", r"ROPE_THETA\)", r"axes_dims_rope, \)", EQUIVALENT,
         "same value: rotary_cos_sin's default theta is 10000.0 = ROPE_THETA"),
    Rule(r"FluxTransformer2DModelǁrotary", r"dim=0\)", r"img_ids\), \)", EQUIVALENT,
         "same value: torch.cat's default dim is 0"),
    Rule(r"x_rotary_freqs_dtype", r"_NO_FLOAT64_DEVICES", r"and False", EQUIVALENT,
         "same value on the CPU (float64 either way); it differs only on mps/npu/neuron"),
    Rule(r"x_rotary_cos_sin", r"dim=-1\)", r"dim=\+1\)", EQUIVALENT, "same value: the tables are 2-D, dim 1 is -1"),
    Rule(r"x_timestep_embedding", r"^half = dim // 2", r"dim / 2", EQUIVALENT,
         "same value: arange(0, 128.0) and / 128.0 give the same float32 numbers as with the integer 128"),
    Rule(r"x_timestep_embedding", r"torch\.arange\(0, half", r"arange\(half,|dtype=None|half, device", EQUIVALENT,
         "same value: arange(half) == arange(0, half); the int64 arange times the Python float is promoted to "
         "float32 exactly as the float32 arange is (bit-identical: test_timestep_embedding_matches_diffusers)"),
    Rule(r"x_timestep_embedding", r"half - downscale_freq_shift", "", EQUIVALENT,
         "same value: every caller (FLUX, Wan) uses downscale_freq_shift = 0"),
    Rule(r"x_timestep_embedding", r"if flip_sin_to_cos else", r"or True", EQUIVALENT,
         "same value: every caller uses flip_sin_to_cos = True"),
    Rule(r"x_timestep_embedding", r"dim=-1\)", r"dim=\+1\)", EQUIVALENT, "same value: emb is 2-D, dim 1 is -1"),
    Rule(r"x_timestep_embedding", r"if dim % 2 == 1|functional\.pad", "", EQUIVALENT,
         "unreachable: the odd-width padding; every caller asks for 256 channels"),
    Rule(r"FlowMatchEulerSchedulerǁ_training_sigma_range", r"np\.linspace\(1, t_count, t_count", "", EQUIVALENT,
         "same value: only the first and last training sigma are kept, and linspace's endpoints are exact for any "
         "number of points"),
    Rule(r"FlowMatchEulerSchedulerǁ_time_shift", r"\*\* 1\.0", r"\* 1\.0", EQUIVALENT,
         "same value: x ** 1.0 and x * 1.0 are both exactly x in IEEE arithmetic"),
    Rule(r"FlowMatchEulerSchedulerǁset_schedule", r"\.to\(torch\.float32\)", r"\.to\(None\)", EQUIVALENT,
         "no-op cast for the harness: the installed schedules are the reference's float32 records"),
    Rule(r"FlowMatchEulerSchedulerǁstep", r"sample\.to\(torch\.float32\)", r"sample\.to\(None\)", EQUIVALENT,
         "same value: in fp32 a no-op; in bf16, bf16 + bf16 is computed in float and rounded once, exactly like "
         "float32(sample) + bf16 then .to(bf16), because the float32 sum of two bf16 numbers is exact or the "
         "smaller is below half a bf16 ulp (test_step_loop_bit_identical[bf16] agrees bit for bit)"),
    Rule(r"x_flux_image_ids|FluxPipelineConfigǁprepare_rotary_kwargs", r"dtype", "", EQUIVALENT,
         "same value: position ids are small integers, exact in every dtype, and rotary_cos_sin converts them to "
         "float32 first", changed=r"^[^>]*dtype[^>]*-> (None)?$"),
    Rule(r"FluxPipelineConfigǁprepare_guidance", r"dtype=torch\.float32", "", EQUIVALENT,
         "same value: torch.full's default dtype is float32", changed=r"^[^>]*float32[^>]*-> (None)?$"),
)


def _mid_word(text: str, cut: int) -> bool:
    """True when position `cut` of `text` falls inside an identifier."""
    def ident(ch: str) -> bool:
        return ch.isalnum() or ch == "_"

    return 0 < cut < len(text) and ident(text[cut - 1]) and ident(text[cut])


def changed_fragments(before: str, after: str) -> str:
    """"<part of before> -> <part of after>": both lines without their common prefix and suffix, widened to whole
    identifiers (so `device` -> `None` reads as such, not as `devic` -> `Non`)."""
    start = 0
    while start < min(len(before), len(after)) and before[start] == after[start]:
        start += 1
    while start > 0 and (_mid_word(before, start) or _mid_word(after, start)):
        start -= 1
    end = 0  # length of the common suffix, not overlapping the prefix
    while end < min(len(before), len(after)) - start and before[-1 - end] == after[-1 - end]:
        end += 1
    while end > 0 and (_mid_word(before, len(before) - end) or _mid_word(after, len(after) - end)):
        end -= 1
    return f"{before[start:len(before) - end]} -> {after[start:len(after) - end]}"


def classify(function_key: str, removed: list[str], added: list[str]) -> tuple[str, str]:
    """(class, reason) of one survivor; `function_key` is mutmut's key without module and __mutmut_N."""
    first_removed = removed[0] if removed else ""
    first_added = added[0] if added else ""
    changed = changed_fragments(first_removed, first_added)
    for rule in RULES:
        if (re.search(rule.function, function_key) and re.search(rule.removed, first_removed)
                and (not rule.added or re.search(rule.added, first_added))
                and (not rule.changed or re.search(rule.changed, changed))):
            return rule.cls, rule.reason
    return UNCLASSIFIED, "no rule matches: look at this mutant"
