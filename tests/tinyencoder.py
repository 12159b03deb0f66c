"""A tiny random BERT sentence encoder, made offline (test helper).

transformers' BertConfig with two layers, random weights from a fixed seed, a WordPiece
tokenizer trained with `tokenizers` on tests/tinyllm.py's corpus, exported to ONNX with
torch.onnx (dynamic batch and sequence axes) and laid out as sentence-transformers saves a
model: tokenizer.json, config.json, model.onnx, 1_Pooling/config.json (mean pooling) and
modules.json with a Normalize module. What `modelservice serve FOLDER` detects as an
embedding model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.tinyllm import CORPUS

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = 256
HIDDEN = 32
MAX_LENGTH = 64
SEED = 4321


def make_tiny_encoder(folder: Path) -> Path:
    """Write the encoder folder into `folder` and return it."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        CORPUS, trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=SPECIAL,
                                          show_progress=False)
    )  # fmt: skip
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": MAX_LENGTH, "tokenizer_class": "BertTokenizerFast"})
    )
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        pad_token_id=tok.token_to_id("[PAD]"),
    )
    torch.manual_seed(SEED)
    model = BertModel(config, add_pooling_layer=False).eval()
    config.save_pretrained(folder)
    ids = torch.tensor([[cls, 5, 6, sep]])
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}

    class Encoder(torch.nn.Module):  # keyword arguments: BertModel's positions change
        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state  # fmt: skip

    torch.onnx.export(
        Encoder().eval(), args, str(folder / "model.onnx"), input_names=names,
        output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False,
    )  # fmt: skip
    pooling = folder / "1_Pooling"
    pooling.mkdir(exist_ok=True)
    (pooling / "config.json").write_text(
        json.dumps({"word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": False,
                    "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
                    "pooling_mode_lasttoken": False})
    )  # fmt: skip
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"},
    ]  # fmt: skip
    (folder / "modules.json").write_text(json.dumps(modules))
    return folder
