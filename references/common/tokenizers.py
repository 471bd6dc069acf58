"""Tokenizers built in memory (no files, no hub), small but shaped like the real CLIP and T5 ones.

Tiny checkpoints need tokenizers whose special-token conventions match the real models, because the
pipelines depend on them: CLIP pools the hidden state at the first end-of-text token, and T5 pads with id 0
and ends with id 1. The vocabularies are small so the embedding tables stay tiny.
"""

from __future__ import annotations

import string
from typing import Any

from transformers import CLIPTokenizer, T5Tokenizer

CLIP_MAX_LENGTH = 77
CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"

T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"
T5_MAX_LENGTH = 512
T5_SPACE = "\u2581"  # "▁": SentencePiece's word-boundary marker

# Whole words the T5 vocabulary holds as single pieces, so typical test prompts tokenize into a few ids.
T5_WORDS = (
    "a", "an", "the", "of", "and", "with", "in", "on", "at", "to", "is",
    "photo", "picture", "image", "drawing", "painting", "cat", "dog", "bird", "house", "tree",
    "red", "green", "blue", "black", "white", "small", "large", "handwritten", "digit", "number",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "blurry", "noisy", "low", "quality",
)  # fmt: skip

_CHAR_SCORE = -10.0  # single characters: the fallback segmentation
_WORD_SCORE = -5.0  # whole words beat any character split (Unigram maximises the summed log-probability)


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values, in the same order as the real CLIP vocab."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    by_byte = dict(zip(printable, codes, strict=True))
    return [chr(by_byte[b]) for b in range(256)]


# A few BPE merges, in priority order, so that common prompt words become one or two tokens as with the real CLIP
# vocabulary (and a tokenizer whose merges are lost or reordered tokenizes differently).
CLIP_MERGES = (
    ("c", "a"), ("ca", "t</w>"), ("p", "h"), ("ph", "o"), ("o", "f</w>"), ("t", "h"), ("th", "e</w>"),
    ("a", "n"), ("an", "d</w>"), ("i", "n"), ("in", "g</w>"),
)  # fmt: skip


def clip_vocab(merges: tuple[tuple[str, str], ...] = CLIP_MERGES) -> dict[str, int]:
    """Byte-level vocabulary: 256 byte symbols, the same with the end-of-word suffix, the merged symbols, then
    bos and eos.

    A word splits into bytes, its last byte carrying "</w>", and then merges by CLIP_MERGES; so both variants of
    every byte are needed; that is also how the real CLIP vocabulary starts.
    """
    symbols = _bytes_to_unicode()
    merged = [left + right for left, right in merges]
    tokens = symbols + [s + "</w>" for s in symbols] + merged + [CLIP_BOS, CLIP_EOS]
    return {token: index for index, token in enumerate(tokens)}


def build_clip_tokenizer(merges: tuple[tuple[str, str], ...] = CLIP_MERGES) -> CLIPTokenizer:
    """A byte-level BPE CLIP tokenizer with a few merges; pad is end-of-text, as in FLUX.1's CLIP tokenizer.
    (The shipped digits model was trained with `merges=()`: its recipe keeps that.)"""
    return CLIPTokenizer(
        vocab=clip_vocab(merges),
        merges=list(merges),
        unk_token=CLIP_EOS,
        bos_token=CLIP_BOS,
        eos_token=CLIP_EOS,
        pad_token=CLIP_EOS,
        model_max_length=CLIP_MAX_LENGTH,
    )


def t5_vocab() -> list[tuple[str, float]]:
    """Unigram pieces with scores: pad/eos/unk at ids 0/1/2 like T5, then characters, then whole words."""
    pieces: list[tuple[str, float]] = [(T5_PAD, 0.0), (T5_EOS, 0.0), (T5_UNK, 0.0), (T5_SPACE, _CHAR_SCORE)]
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    for char in chars:
        pieces.append((T5_SPACE + char, _CHAR_SCORE))
        pieces.append((char, _CHAR_SCORE))
    pieces.extend((T5_SPACE + word, _WORD_SCORE) for word in T5_WORDS if len(word) > 1)
    return pieces


def build_t5_tokenizer() -> T5Tokenizer:
    """A T5 Unigram tokenizer (ids: pad 0, eos 1, unk 2) with no sentinel tokens.

    `extra_ids=0` matters: the default adds 100 `<extra_id_*>` tokens, which would outgrow a tiny embedding table.
    """
    return T5Tokenizer(
        vocab=t5_vocab(),
        eos_token=T5_EOS,
        unk_token=T5_UNK,
        pad_token=T5_PAD,
        extra_ids=0,
        model_max_length=T5_MAX_LENGTH,
    )


# ---- Wan 2.1: a UMT5 (google/umt5-xxl) style tokenizer, deliberately not the T5 one above ----

UMT5_MAX_LENGTH = 512  # WanPipeline's default max_sequence_length
UMT5_EXTRA_IDS = 3  # UMT5 appends sentinel tokens after its pieces; a few keep that trait at a tiny size

# Words of typical video prompts (and of Wan's default negative prompt) held as single pieces.
UMT5_WORDS = (
    "a", "the", "of", "and", "in", "on", "with", "is", "through", "slowly", "fast",
    "video", "camera", "pans", "zoom", "shot", "scene", "frame", "motion", "static", "still",
    "cat", "dog", "bird", "fish", "car", "boat", "river", "forest", "city", "street", "night", "sunset", "rain",
    "walks", "runs", "flies", "swims", "drives", "dances", "jumps",
    "bright", "dark", "red", "blue", "golden", "misty",
    "blurred", "blurry", "overexposed", "worst", "low", "quality", "jpeg", "artifacts", "subtitles", "ugly",
)  # fmt: skip
# Letters beyond ASCII, as a multilingual vocabulary has them (UMT5 covers 100+ languages).
UMT5_EXTRA_CHARS = "àáâäçèéêëíîïñóôöúûüßœæøå中日月水火猫犬鳥"


def umt5_vocab() -> list[tuple[str, float]]:
    """Unigram pieces with scores: pad/eos/unk at ids 0/1/2, then characters (ASCII and some multilingual),
    then whole words. A different vocabulary and size from `t5_vocab`, so a wrong tokenizer shows up as
    different ids."""
    pieces: list[tuple[str, float]] = [(T5_PAD, 0.0), (T5_EOS, 0.0), (T5_UNK, 0.0), (T5_SPACE, _CHAR_SCORE)]
    chars = string.ascii_lowercase + string.digits + string.punctuation + string.ascii_uppercase + UMT5_EXTRA_CHARS
    for char in chars:
        pieces.append((T5_SPACE + char, _CHAR_SCORE))
        pieces.append((char, _CHAR_SCORE))
    pieces.extend((T5_SPACE + word, _WORD_SCORE) for word in UMT5_WORDS if len(word) > 1)
    return pieces


def build_umt5_tokenizer() -> T5Tokenizer:
    """Wan 2.1's tokenizer kind: a T5 Unigram tokenizer as google/umt5-xxl's (pad 0, eos 1 appended to every
    prompt, no bos added, sentinel `<extra_id_*>` tokens after the pieces), with a tiny vocabulary."""
    return T5Tokenizer(
        vocab=umt5_vocab(),
        eos_token=T5_EOS,
        unk_token=T5_UNK,
        pad_token=T5_PAD,
        extra_ids=UMT5_EXTRA_IDS,
        model_max_length=UMT5_MAX_LENGTH,
    )


# ---- Qwen-Image and Z-Image: Qwen2-style byte-level BPE tokenizers (Qwen2.5-VL's and Qwen3's kind) ----

QWEN_ENDOFTEXT, QWEN_IM_START, QWEN_IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
QWEN_MAX_LENGTH = 32768  # real Qwen tokenizers' model_max_length (131072 for some; the pipelines pass their own)

# The words of QwenImagePipeline's prompt template (P:175), each one vocabulary token as in the real Qwen vocabulary:
# the template then tokenizes into exactly the 34 tokens QwenImagePipeline drops (3 special + 31 text tokens).
QWEN_IMAGE_TEMPLATE_WORDS = (
    "system", "Describe", " the", " image", " by", " detailing", " color", " shape", " size", " texture",
    " quantity", " text", " spatial", " relationships", " of", " objects", " and", " background", "user",
    "assistant",
)  # fmt: skip
# The role names of the chat template, one token each as in the real Qwen vocabulary
QWEN_CHAT_WORDS = ("system", "user", "assistant")
# Words of typical test prompts, each one token with and without the leading space (a prompt's first word has none).
QWEN_PROMPT_WORDS = (
    "a", "an", "the", "photo", "picture", "painting", "of", "cat", "dog", "fox", "bird", "house", "tree", "river",
    "red", "blue", "green", "golden", "small", "large", "in", "on", "at", "with", "snow", "forest", "city", "night",
    "sunset", "blurry", "low", "quality", "ugly", "watermark", "sitting", "running", "under", "sky", "lantern",
    "mountain", "lake", "portrait", "girl", "boy", "old", "man", "woman", "street", "neon", "sign", "reading",
    "Hello", "World",
)  # fmt: skip

# A Qwen3-style chat template for one plain conversation: `<|im_start|>{role}\n{content}<|im_end|>\n` per message and
# the assistant header on add_generation_prompt; `enable_thinking=False` appends the empty think block Qwen3's own
# template appends (ZImagePipeline passes enable_thinking=True, so it does not).
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def _byte_symbols(text: str) -> list[str]:
    """`text` as GPT-2 byte-level symbols (space -> 'Ġ', newline -> 'Ċ'), one per UTF-8 byte."""
    table = _bytes_to_unicode()
    return [table[b] for b in text.encode("utf-8")]


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Classic BPE: merge the best-ranked adjacent pair (leftmost on ties) until none of the pairs is a merge."""
    while len(symbols) > 1:
        candidates = [(ranks[pair], i) for i, pair in enumerate(zip(symbols[:-1], symbols[1:], strict=True))
                      if pair in ranks]
        if not candidates:
            break
        _, i = min(candidates)
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2:]
    return symbols


def qwen_bpe(words: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocabulary and merges under which every word of `words` is one token.

    Merges are added word by word at the lowest priority, joining the first two pieces the current merges leave
    until the word is one piece; a merge added later never applies while an earlier one can, so words made whole
    earlier stay whole. Deterministic: the same words give the same vocabulary and merges."""
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        pieces = _bpe(_byte_symbols(word), ranks)
        while len(pieces) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            pieces = _bpe(_byte_symbols(word), ranks)
    merges = sorted(ranks, key=ranks.__getitem__)
    tokens = _bytes_to_unicode() + [left + right for left, right in merges]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return vocab, merges


def build_qwen_tokenizer(words: tuple[str, ...], padding_side: str = "right") -> Any:
    """A Qwen2Tokenizer (the class Qwen2.5-VL and Qwen3 checkpoints name) with a tiny byte-level BPE vocabulary:
    every word of `words` one token, any other text falls back to byte tokens. Special tokens as the real ones:
    `<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (eos), no bos; a Qwen3-style chat template."""
    from transformers import Qwen2Tokenizer

    vocab, merges = qwen_bpe(words)
    for special in (QWEN_ENDOFTEXT, QWEN_IM_START, QWEN_IM_END):
        vocab[special] = len(vocab)
    return Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token=QWEN_IM_END,
        pad_token=QWEN_ENDOFTEXT, extra_special_tokens=[QWEN_IM_START, QWEN_IM_END],
        model_max_length=QWEN_MAX_LENGTH, padding_side=padding_side, chat_template=QWEN_CHAT_TEMPLATE,
    )  # fmt: skip


def qwen_words(template_words: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Template words, then the prompt words with and without their leading space."""
    words = list(template_words)
    for word in QWEN_PROMPT_WORDS:
        words += [word, " " + word]
    return tuple(dict.fromkeys(words))
