"""The native tokenizer cache gives the ids and masks transformers gives, and is never trusted when damaged.

The reference side (Diffusers) tokenizes through transformers; the native side reads the tokenizer transformers
built from a cache (native_models/tokenizer_cache.py) so that a verify run need not import transformers. Any
difference in ids would be an encode divergence that is the harness's own fault, so every tokenizer folder the
project ships or builds is compared call for call on generated prompts, at the lengths the pipelines use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from native_models.components import load_tokenizer, load_transformers_tokenizer
from native_models.errors import RequestError
from native_models.prompt_tokenizer import PromptTokenizer
from native_models.tokenizer_cache import (
    cache_path,
    content_digest,
    export_tokenizer,
    load_cached_tokenizer,
    tokenizer_key,
)

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "references" / "checkpoints" / "flux-digits"

EDGE_PROMPTS = [
    "", " ", "a photo of a cat", "A PHOTO\tof   a\ncat", "<|startoftext|>", "<|endoftext|> red", "</s> <pad> <unk>",
    "cafe\u0301 caf\u00e9", "\u00a0non-breaking\u2003space", "emoji \U0001f431\U0001f3a8", "\u05e9\u05dc\u05d5\u05dd",
    "\u4e00\u5f20\u732b\u7684\u7167\u7247", "it's they're we've I'm you'll he'd", "x" * 600,
    " ".join(["handwritten digit seven"] * 60), "\x00\x01control\x7f", "a\r\nb", "  leading and trailing  ",
]
LENGTHS = (1, 2, 8, 77, 128, 512)


def _tokenizer_folders() -> dict[str, Path]:
    from references.flux.tiny import tiny_flux_checkpoint
    from references.qwenimage.tiny import tiny_qwenimage_checkpoint
    from references.wan.tiny import tiny_wan_checkpoint
    from references.zimage.tiny import tiny_zimage_checkpoint

    flux, wan = tiny_flux_checkpoint(seed=0), tiny_wan_checkpoint(seed=0)
    return {"flux-tiny/tokenizer": flux / "tokenizer", "flux-tiny/tokenizer_2": flux / "tokenizer_2",
            "wan-tiny/tokenizer": wan / "tokenizer", "flux-digits/tokenizer": DIGITS / "tokenizer",
            "flux-digits/tokenizer_2": DIGITS / "tokenizer_2",
            "qwenimage-tiny/tokenizer": tiny_qwenimage_checkpoint(seed=0) / "tokenizer",
            "zimage-tiny/tokenizer": tiny_zimage_checkpoint(seed=0) / "tokenizer"}


FOLDERS = ("flux-tiny/tokenizer", "flux-tiny/tokenizer_2", "wan-tiny/tokenizer", "flux-digits/tokenizer",
           "flux-digits/tokenizer_2", "qwenimage-tiny/tokenizer", "zimage-tiny/tokenizer")
QWEN_FOLDERS = ("qwenimage-tiny/tokenizer", "zimage-tiny/tokenizer")


@pytest.fixture(scope="module")
def folders() -> dict[str, Path]:
    return _tokenizer_folders()


@pytest.fixture(scope="module", params=FOLDERS)
def pair(request: pytest.FixtureRequest, folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[PromptTokenizer, object]:
    """(native tokenizer read back from a fresh cache, transformers' tokenizer) for one folder."""
    folder = folders[request.param]
    root = tmp_path_factory.mktemp("tokenizer-cache")
    load_cached_tokenizer(folder, load_transformers_tokenizer, root)  # cold: exports and writes the cache
    native = load_cached_tokenizer(folder, _refuse, root)  # warm: must not touch transformers
    assert isinstance(native, PromptTokenizer)
    return native, load_transformers_tokenizer(folder)


def _refuse(folder: Path) -> None:
    raise AssertionError(f"the warm cache went through transformers for {folder}")


def _assert_same(native: PromptTokenizer, reference: object, prompts: list[str], length: int | None) -> None:
    kwargs = {"padding": "max_length", "max_length": length, "truncation": True, "return_tensors": "pt"}
    try:
        theirs = reference(prompts, **kwargs)  # type: ignore[operator]
    except ValueError:  # a length below the tokenizer's special tokens: transformers cannot make the batch
        with pytest.raises(RequestError, match="cannot be cut"):
            native(prompts, **kwargs)
        return
    ours = native(prompts, **kwargs)
    assert torch.equal(ours.input_ids, theirs.input_ids), (prompts, length, ours.input_ids, theirs.input_ids)
    assert ours.input_ids.dtype == theirs.input_ids.dtype
    assert torch.equal(ours.attention_mask, theirs.attention_mask), (prompts, length)
    assert native(prompts, **kwargs, return_attention_mask=False).attention_mask is None


@pytest.mark.parametrize("length", [*LENGTHS, None])
def test_edge_prompts_tokenize_identically(pair: tuple[PromptTokenizer, object], length: int | None) -> None:
    native, reference = pair
    assert native.model_max_length == reference.model_max_length  # type: ignore[attr-defined]
    for prompt in EDGE_PROMPTS:
        _assert_same(native, reference, [prompt], length)
    _assert_same(native, reference, EDGE_PROMPTS, length)  # one batch, every length padded alike


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompts=st.lists(st.text(max_size=300), min_size=1, max_size=3), length=st.sampled_from(LENGTHS))
def test_generated_prompts_tokenize_identically(pair: tuple[PromptTokenizer, object], prompts: list[str],
                                                length: int) -> None:
    native, reference = pair
    _assert_same(native, reference, prompts, length)


@pytest.mark.parametrize("name", QWEN_FOLDERS)
def test_qwen_padding_to_the_longest_and_chat_template_match_transformers(folders: dict[str, Path], name: str,
                                                                           tmp_path: Path) -> None:
    """Qwen-Image pads a call's prompts to the longest (`padding=True`) on the tokenizer's side (left for the
    tiny ones); Z-Image wraps each prompt in the tokenizer's chat template: the cached tokenizer does both as
    transformers does, warm (no transformers) included."""
    folder = folders[name]
    load_cached_tokenizer(folder, load_transformers_tokenizer, tmp_path)
    native = load_cached_tokenizer(folder, _refuse, tmp_path)
    reference = load_transformers_tokenizer(folder)
    assert isinstance(native, PromptTokenizer) and native.padding_side == reference.padding_side == "left"
    batches = [EDGE_PROMPTS, ["a cat", "a red fox in the snow at night"], ["<|im_start|>user\nhi<|im_end|>"]]
    for prompts in batches:
        for padding in (True, "longest"):
            theirs = reference(prompts, padding=padding, max_length=40, truncation=True, return_tensors="pt")
            ours = native(prompts, padding=padding, max_length=40, truncation=True, return_tensors="pt")
            assert torch.equal(ours.input_ids, theirs.input_ids) and torch.equal(ours.attention_mask,
                                                                                   theirs.attention_mask)
    for prompt in [*EDGE_PROMPTS, "{} {{x}} {% raw %}"]:
        messages = [{"role": "user", "content": prompt}]
        for thinking in (True, False):
            assert native.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                              enable_thinking=thinking) == reference.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking)


def test_legacy_vocab_and_merges_folder_is_rebuilt_like_transformers(tmp_path: Path) -> None:
    """Real FLUX.1 ships its CLIP tokenizer as vocab.json + merges.txt (no tokenizer.json): transformers builds
    the pipeline from its class, merges included, and the cache keeps exactly that."""
    from references.common.tokenizers import CLIP_BOS, CLIP_EOS, clip_vocab

    vocab = clip_vocab()
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("p", "h"), ("ph", "o")]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": CLIP_BOS, "eos_token": CLIP_EOS,
        "unk_token": CLIP_EOS, "pad_token": CLIP_EOS}), encoding="utf-8")
    reference = load_transformers_tokenizer(folder)
    native = load_cached_tokenizer(folder, load_transformers_tokenizer, tmp_path / "cache")
    assert isinstance(native, PromptTokenizer)
    assert reference(["cat dog photo"]).input_ids[0][1:4] == [vocab["cat</w>"], vocab["dog</w>"], vocab["pho"]]
    for prompt in [*EDGE_PROMPTS, "a cat and a dog", "CAT DOG PHOTO"]:
        _assert_same(native, reference, [prompt], 77)


def test_warm_load_reads_the_cache_and_a_changed_folder_is_a_new_key(folders: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "tokenizer"
    shutil.copytree(folders["flux-tiny/tokenizer"], folder)
    root = tmp_path / "cache"
    key = tokenizer_key(folder)
    assert not cache_path(key, root).exists()
    load_cached_tokenizer(folder, load_transformers_tokenizer, root)
    assert cache_path(key, root).is_file()
    assert isinstance(load_cached_tokenizer(folder, _refuse, root), PromptTokenizer)

    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["model_max_length"] = 33
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert tokenizer_key(folder) != key
    with pytest.raises(AssertionError, match="went through transformers"):
        load_cached_tokenizer(folder, _refuse, root)  # stale entry not used
    changed = load_cached_tokenizer(folder, load_transformers_tokenizer, root)
    assert changed.model_max_length == 33


DAMAGE = {
    "garbage": b"\x00\xff not json",
    "truncated": None,  # the real file cut in half
    "empty object": b"{}",
    "other format": json.dumps({"format": "something/9", "settings": {}, "backend": "{}"}).encode(),
    "backend not a tokenizer": None,
    "settings of wrong types": None,
    "deep nesting": b"[" * 100000 + b"]" * 100000,
    "one vocabulary entry changed": None,  # still a valid tokenizer: only the sha256 tells
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_cache_file_is_rebuilt_not_trusted(folders: dict[str, Path], tmp_path: Path, damage: str) -> None:
    folder = folders["flux-tiny/tokenizer_2"]
    root = tmp_path / "cache"
    load_cached_tokenizer(folder, load_transformers_tokenizer, root)
    path = cache_path(tokenizer_key(folder), root)
    good = path.read_bytes()
    document = json.loads(good)
    if damage == "truncated":
        data = good[: len(good) // 2]
    elif damage == "backend not a tokenizer":
        data = json.dumps({**document, "backend": '{"model": "nonsense"}'}).encode()
    elif damage == "settings of wrong types":
        settings = {**document["settings"], "pad_token_id": "0"}
        data = json.dumps({**document, "settings": settings,
                           "sha256": content_digest(settings, document["backend"])}).encode()
    elif damage == "one vocabulary entry changed":
        backend = json.loads(document["backend"])
        vocab = backend["model"]["vocab"]  # Unigram: [piece, score] pairs
        vocab[5][1] = vocab[5][1] + 7.0
        data = json.dumps({**document, "backend": json.dumps(backend)}).encode()
        Tokenizer.from_str(json.loads(data)["backend"])  # it parses: only the hash can tell
    else:
        data = DAMAGE[damage]
    path.write_bytes(data)
    with pytest.raises(AssertionError, match="went through transformers"):
        load_cached_tokenizer(folder, _refuse, root)
    rebuilt = load_cached_tokenizer(folder, load_transformers_tokenizer, root)
    assert isinstance(rebuilt, PromptTokenizer)
    assert path.read_bytes() == good
    _assert_same(rebuilt, load_transformers_tokenizer(folder), ["a red cat"], 16)


def test_unwritable_cache_still_tokenizes(folders: dict[str, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder would go")
    native = load_cached_tokenizer(folders["flux-tiny/tokenizer"], load_transformers_tokenizer, blocker)
    assert isinstance(native, PromptTokenizer)
    _assert_same(native, load_transformers_tokenizer(folders["flux-tiny/tokenizer"]), ["a cat"], 77)


def test_cache_off_uses_transformers(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFPARITY_TOKENIZER_CACHE", "off")
    tokenizer = load_tokenizer(folders["flux-tiny/tokenizer"])
    assert not isinstance(tokenizer, PromptTokenizer)
    assert type(tokenizer).__module__.startswith("transformers.")


def test_tokenizer_that_tokenizes_in_python_is_not_cached(folders: dict[str, Path]) -> None:
    """A class overriding the call path does work the Rust backend does not see: it stays transformers'."""
    reference = load_transformers_tokenizer(folders["flux-tiny/tokenizer"])

    class Shouting(type(reference)):  # type: ignore[misc]
        def _encode_plus(self, text, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            upper = [t.upper() for t in text] if isinstance(text, list) else text.upper()
            return super()._encode_plus(upper, *args, **kwargs)

    shouting = Shouting.from_pretrained(str(folders["flux-tiny/tokenizer"]), local_files_only=True)
    assert export_tokenizer(shouting) is None
    assert export_tokenizer(reference) is not None


def test_warm_verify_does_not_import_transformers(folders: dict[str, Path]) -> None:
    """With the tokenizer cache warm, `golden verify` imports neither Diffusers nor transformers."""
    for name in ("flux-tiny/tokenizer", "flux-tiny/tokenizer_2"):
        load_tokenizer(folders[name])  # warm the user's cache, as any earlier run does
    code = ("import sys, io, contextlib\nfrom harness.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    code = main(['golden', 'verify', 'flux-tiny', '--no-forcing'])\n"
            "print('EXIT', code, sorted({m.split('.')[0] for m in sys.modules} & {'diffusers', 'transformers'}))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.stdout.strip().splitlines()[-1] == "EXIT 0 []", proc.stdout + proc.stderr
