"""Tiny, randomly initialised cross-encoders built in-process (seconds, no network) for tests and the
notebooks' tiny preset. Each is saved as a plain Hugging Face folder, exactly like a real checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

from mice.models.backbone import packaged_model_path

_WORDS = (
    "the a of to and in is for on with by as at from that this be are or an it not can return array "
    "value values data frame index column function matrix vector compute given input output default "
    "axis shape type sparse dense graph node edge tensor model layer file path string number integer "
    "float list dict key keys sum mean max min sort order plot figure line color label size"
).split()


def _bert_tokenizer_files(folder: Path) -> None:
    src = packaged_model_path()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, folder / name)


def _roberta_tokenizer(folder: Path):
    """A small byte-level BPE with RoBERTa's specials (`<s> q </s></s> d </s>`), trained in-process."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [" ".join(_WORDS[i:] + _WORDS[:i]) for i in range(len(_WORDS))]
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=512,
    )
    fast.save_pretrained(folder)
    return fast


def _tiny_modernbert(
    num_layers, hidden, heads, intermediate, num_labels, init_range, pooling, local_attention, global_every
):
    """`tiny_cross_encoder`'s random ModernBERT (the packaged BERT vocabulary's ids)."""
    from transformers import ModernBertConfig, ModernBertForSequenceClassification

    return ModernBertForSequenceClassification(
        ModernBertConfig(
            vocab_size=30522,
            hidden_size=hidden,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            max_position_embeddings=128,
            num_labels=num_labels,
            initializer_range=init_range,
            global_attn_every_n_layers=global_every,
            local_attention=local_attention,
            classifier_pooling=pooling,
            pad_token_id=0,
            cls_token_id=101,
            sep_token_id=102,
            bos_token_id=101,
            eos_token_id=102,
            norm_bias=True,
        )
    )


def tiny_cross_encoder(
    folder,
    family: str = "bert",
    num_layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    intermediate: int = 64,
    seed: int = 0,
    num_labels: int = 1,
    init_range: float = 0.2,
    pooling: str = "cls",
    local_attention: int = 16,
    global_every: int = 3,
) -> Path:
    """Build and save a tiny random `...ForSequenceClassification` model of `family`
    (bert|electra|roberta|modernbert).

    `init_range` is larger than HF's default so that random models give clearly distinct scores and a wrong
    knockout shows up far above test tolerances. ModernBERT only: `pooling` (cls|mean), `local_attention` (the
    whole sliding window, small so that test pairs exceed it) and a global layer every `global_every` layers;
    it uses the packaged BERT vocabulary (`[CLS] q [SEP] d [SEP]`, no token types).
    """
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        ElectraConfig,
        ElectraForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    common = dict(
        num_hidden_layers=num_layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=128,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=init_range,
    )
    torch.manual_seed(seed)
    if family == "bert":
        _bert_tokenizer_files(folder)
        model = BertForSequenceClassification(BertConfig(vocab_size=30522, **common))
    elif family == "electra":
        _bert_tokenizer_files(folder)
        model = ElectraForSequenceClassification(ElectraConfig(vocab_size=30522, embedding_size=16, **common))
    elif family == "roberta":
        tok = _roberta_tokenizer(folder)
        model = RobertaForSequenceClassification(
            RobertaConfig(
                vocab_size=len(tok),
                pad_token_id=tok.pad_token_id,
                bos_token_id=0,
                eos_token_id=2,
                type_vocab_size=1,
                **{**common, "max_position_embeddings": 130},
            )
        )
    elif family == "modernbert":
        _bert_tokenizer_files(folder)
        model = _tiny_modernbert(
            num_layers, hidden, heads, intermediate, num_labels, init_range, pooling, local_attention, global_every
        )
    else:
        raise ValueError(f"unknown family {family!r} (bert, electra, roberta, modernbert)")
    model.eval()
    model.save_pretrained(folder)
    return folder


PAIRS = [
    ("sort an array", "return a sorted copy of an array along the given axis"),
    ("mean of values", "compute the arithmetic mean along the specified axis of the input array"),
    ("plot a line", "plot y versus x as lines and or markers on the current figure"),
    ("graph nodes", "return a list of the nodes in the graph"),
    ("sparse matrix", "a compressed sparse row matrix format for efficient arithmetic and slicing"),
]
