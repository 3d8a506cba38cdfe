"""MiniLM's WordPiece tokenizer through the `tokenizers` library alone.

`transformers.AutoTokenizer` gives the same ids, but importing transformers loads
scikit-learn and scipy (transformers 5.19: its generation utilities import
`sklearn.metrics` when scikit-learn is installed), which serving must not pull in
(`inference.py`). The transformers tokenizer of this model is itself built from the
folder's `tokenizer.json`; that file also asks for padding and truncation to 128 tokens,
which transformers applies only on request, so both are switched off here.
`tests/test_length_serving_imports.py` checks the ids against transformers.
"""

from __future__ import annotations

import pathlib


class WordPiece:
    """The subset of a transformers tokenizer that `embed.Encoder` and
    `finetune.input_ids` call: `tok(texts, add_special_tokens=False)["input_ids"]` and
    the special token ids."""

    def __init__(self, model_dir: str | pathlib.Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(pathlib.Path(model_dir) / "tokenizer.json"))
        self._tok.no_padding()
        self._tok.no_truncation()
        self.cls_token_id = self._id("[CLS]")
        self.sep_token_id = self._id("[SEP]")
        self.pad_token_id = self._id("[PAD]")

    def _id(self, token: str) -> int:
        value = self._tok.token_to_id(token)
        if value is None:
            raise ValueError(f"the tokenizer has no {token} token")
        return value

    def __call__(self, texts: list[str], add_special_tokens: bool = True, truncation: bool = False) -> dict:
        if truncation:
            raise ValueError("WordPiece does not truncate; cut the text before")
        encoded = self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encoded]}
