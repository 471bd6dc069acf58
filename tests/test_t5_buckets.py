"""T5's relative-position buckets at the token lengths real pipelines use (FLUX.1-dev and Wan 2.1: 512).

With the published configs (32 buckets, max_distance 128), a key at distance >= 128 from its query falls in the
last, shared bucket of its direction: a run at 128 tokens never reaches it, one at 512 does for most pairs. An
off-by-one there (a bucket index 16 or 32 out of the table's range, a clamp at the wrong edge) passes every short
test and breaks a real run, so the native buckets are checked against transformers' at 512 tokens, and the native
T5 and UMT5 encoders at 512 tokens against transformers' with the published bucket settings.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from numerics import assert_fp32_close
from transformers.models.t5.modeling_t5 import T5Attention
from transformers.models.umt5.modeling_umt5 import UMT5Attention

from native_models.loader import load_component
from native_models.models.t5_encoder import T5EncoderModel, UMT5EncoderModel, relative_position_bucket

LENGTH = 512
BUCKETS, MAX_DISTANCE = 32, 128  # google/t5-v1_1-xxl and google/umt5-xxl


def offsets(length: int) -> torch.Tensor:
    positions = torch.arange(length)
    return positions[None, :] - positions[:, None]  # (L, L): key - query, as both encoders compute it


def test_native_buckets_match_t5_and_umt5_at_512_tokens() -> None:
    relative = offsets(LENGTH)
    native = relative_position_bucket(relative, BUCKETS, MAX_DISTANCE)
    t5 = T5Attention._relative_position_bucket(relative, bidirectional=True, num_buckets=BUCKETS,
                                               max_distance=MAX_DISTANCE)
    umt5_config = transformers.UMT5Config(relative_attention_num_buckets=BUCKETS,
                                          relative_attention_max_distance=MAX_DISTANCE, is_decoder=False)
    umt5 = UMT5Attention(umt5_config, has_relative_attention_bias=True)._relative_position_bucket(relative)
    assert torch.equal(native, t5) and torch.equal(native, umt5)
    far = relative.abs() >= MAX_DISTANCE
    assert far.float().mean() > 0.5  # most (query, key) pairs at 512 tokens are past max_distance
    # the far pairs share the last bucket of their direction, and no bucket leaves the table
    assert set(native[far & (relative > 0)].unique().tolist()) == {BUCKETS - 1}
    assert set(native[far & (relative < 0)].unique().tolist()) == {BUCKETS // 2 - 1}
    assert int(native.min()) == 0 and int(native.max()) == BUCKETS - 1
    # every bucket is used at this length but BUCKETS // 2: "distance 0, key after the query" cannot happen
    assert set(native.unique().tolist()) == set(range(BUCKETS)) - {BUCKETS // 2}


@pytest.mark.parametrize("name", ["t5", "umt5"])
def test_encoders_match_transformers_at_512_tokens(name: str, tmp_path) -> None:
    config_cls, reference_cls, native_cls = {
        "t5": (transformers.T5Config, transformers.T5EncoderModel, T5EncoderModel),
        "umt5": (transformers.UMT5Config, transformers.UMT5EncoderModel, UMT5EncoderModel),
    }[name]
    config = config_cls(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=BUCKETS, relative_attention_max_distance=MAX_DISTANCE,
                        feed_forward_proj="gated-gelu", dropout_rate=0.0)
    torch.manual_seed(0)
    reference_cls(config).save_pretrained(tmp_path)
    reference = reference_cls.from_pretrained(tmp_path).eval()
    native = load_component(native_cls, tmp_path)
    ids = torch.randint(2, 64, (1, LENGTH), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(ids).last_hidden_state  # (1, 512, 32)
        got = native(ids).last_hidden_state
    assert_fp32_close(f"{name} at {LENGTH} tokens", got, expected)
