"""Tiny random models and data for tests: a WordPiece tokenizer trained on the sentences
below, 2-layer BERT / RoBERTa / MPNet encoders saved as safetensors, and GLUE-format files
of those sentences' words (`write_glue`).

Both helpers write ordinary Hugging Face folders, so tests go through the same
`utils.models.load_model_and_tokenizer` path as real checkpoints.  Building
one folder takes well under a second; `tests/conftest.py` builds them once per
session (fixture ``tiny_models``).
"""

from __future__ import annotations

import random
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
VOCAB = 100  # vocabulary of models built without a tokenizer (tests/test_lora_common.py)

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


def tiny_config(arch: str = "bert", vocab_size: int = VOCAB, num_labels: int | None = None,
                dropout: float | None = None):
    """Config of a tiny random `arch` encoder (shapes from the module constants); `dropout` sets
    the hidden and attention dropout (0: train-mode forwards are deterministic), None keeps the
    architecture's default."""
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
    if dropout is not None:
        kwargs.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
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


# ---------------------------------------------------------------- tiny GLUE files

WORDS = sorted({w.strip(".,?").lower() for s in CORPUS for w in s.split()})


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + " ."


def write_glue(root, n_train: int = 48, n_dev: int = 21, seed: int = 0) -> Path:
    """A GLUE folder with MRPC (pairs, header with BOM), CoLA (no header), RTE (text labels),
    STS-B (regression) and MNLI (two dev files) in the classic layout; sentences of `CORPUS`'s
    words, labels random but fixed by `seed`."""
    rng = random.Random(seed)
    root = Path(root)

    def write(folder, name, header, rows):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_text(header + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")

    for split, n in (("train", n_train), ("dev", n_dev)):
        write("MRPC", f"{split}.tsv", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n",
              [(str(rng.randint(0, 1)), str(i), str(i + 1), _sentence(rng), _sentence(rng)) for i in range(n)])
        write("CoLA", f"{split}.tsv", "",
              [("src", str(rng.randint(0, 1)), "", _sentence(rng)) for _ in range(n)])
        write("STS-B", f"{split}.tsv",
              "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n",
              [(str(i), "g", "f", "2012", "0", "n", "n", _sentence(rng), _sentence(rng), f"{rng.uniform(0, 5):.3f}")
               for i in range(n)])
    head = "index\tsentence1\tsentence2\tgold_label\n"
    labels = ("entailment", "neutral", "contradiction")
    for name, n in (("train.tsv", n_train), ("dev_matched.tsv", n_dev), ("dev_mismatched.tsv", n_dev - 4)):
        write("MNLI", name, head, [(str(i), _sentence(rng), _sentence(rng), rng.choice(labels)) for i in range(n)])
    for split, n in (("train", n_train), ("dev", n_dev)):
        write("RTE", f"{split}.tsv", "index\tsentence1\tsentence2\tlabel\n",
              [(str(i), _sentence(rng), _sentence(rng), rng.choice(("entailment", "not_entailment")))
               for i in range(n)])
    return root
