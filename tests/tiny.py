"""Tiny random models for tests: a WordPiece tokenizer trained on the sentences
below and 2-layer BERT / RoBERTa / MPNet encoders saved as safetensors.

Both helpers write ordinary Hugging Face folders, so tests go through the same
`utils.models.load_model_and_tokenizer` path as real checkpoints.  Building
one folder takes well under a second; `tests/conftest.py` builds them once per
session (fixture ``tiny_models``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PreTrainedTokenizerFast

ARCHS = ("bert", "roberta", "mpnet")

# Shapes of every tiny model.  intermediate_size is deliberately not a
# multiple of hidden_size so that MLP weights are visibly non-square.
HIDDEN = 32
LAYERS = 2
HEADS = 4
INTERMEDIATE = 37
MAX_POSITIONS = 64  # RoBERTa/MPNet start positions at pad_token_id + 1, so 62 tokens fit
MAX_LENGTH = MAX_POSITIONS - 2

# Special tokens in RoBERTa/MPNet id order (<s>=0, <pad>=1, </s>=2, <unk>=3):
# MPNet hard-codes padding_idx=1, so pad must be id 1 for every arch.
SPECIAL = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]
CLS_ID, PAD_ID, SEP_ID = 0, 1, 2

CORPUS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A charming and often affecting journey through a small town.",
    "The film was not good, and the acting was even worse than expected.",
    "She said the movie is one of the best she has seen this year.",
    "Two men are playing guitar while a woman sings on the stage.",
    "Is the capital of France larger than the capital of Spain?",
    "Stock prices fell sharply after the company reported weak earnings.",
    "Every student who reads the book will pass the final exam.",
    "The cat sat quietly on the warm mat by the open window.",
    "He did not think that the plan would work, but it did.",
    "Children were running in the park under a bright blue sky.",
    "The committee approved the new budget on Tuesday morning.",
]


def train_wordpiece(vocab_size: int = 200) -> Tokenizer:
    """A lowercasing BERT-style WordPiece tokenizer trained on `CORPUS` (~200 tokens)."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    assert [tok.token_to_id(t) for t in SPECIAL[:3]] == [CLS_ID, PAD_ID, SEP_ID]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
    )
    tok.decoder = decoders.WordPiece()
    return tok


def tiny_tokenizer(tmp_dir, arch: str = "bert") -> PreTrainedTokenizerFast:
    """Train the WordPiece tokenizer, wrap it for transformers and save it to `tmp_dir`.

    BERT gets ``token_type_ids``; RoBERTa and MPNet, like their real
    tokenizers, only ``input_ids`` and ``attention_mask`` (MPNet's forward
    has no token_type_ids argument).
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    names = ["input_ids", "token_type_ids", "attention_mask"] if arch == "bert" else ["input_ids", "attention_mask"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_wordpiece(),
        cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
        bos_token="[CLS]", eos_token="[SEP]",
        model_input_names=names,
        model_max_length=MAX_LENGTH,
    )
    tokenizer.save_pretrained(str(tmp_dir))
    return tokenizer


def tiny_config(arch: str, vocab_size: int, num_labels: int | None = None):
    """Config of a tiny random `arch` encoder (shapes from the module constants)."""
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=PAD_ID,
        bos_token_id=CLS_ID,
        eos_token_id=SEP_ID,
    )
    if arch == "roberta":
        kwargs["type_vocab_size"] = 1
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    return AutoConfig.for_model(arch, **kwargs)


def tiny_model_dir(tmp_dir, arch: str, num_labels: int | None = None, seed: int = 0) -> Path:
    """Write a tiny random `arch` model (config, model.safetensors, tokenizer) to `tmp_dir`.

    With ``num_labels=None`` the folder holds a bare encoder, like the
    sentence-transformers checkpoints behind ``minilm``/``mpnet``: the
    classification head is created at load time.  With an int it holds a
    full ``*ForSequenceClassification`` checkpoint, head included.
    Returns the folder path.
    """
    folder = Path(tmp_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(folder, arch)
    config = tiny_config(arch, len(tokenizer), num_labels)
    torch.manual_seed(seed)
    cls = AutoModel if num_labels is None else AutoModelForSequenceClassification
    model = cls.from_config(config)
    model.save_pretrained(str(folder))  # safetensors by default
    return folder
