"""The checkpoint's own WordPiece tokenizer, loaded offline through transformers."""

from __future__ import annotations

import os
import pathlib

# transformers warns at import that PyTorch is absent; we only use its tokenizers.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def load_tokenizer(model_dir: str | os.PathLike):
    """Loads the tokenizer stored with a Hugging Face BERT checkpoint.

    Reads ``tokenizer.json`` (fast tokenizer) or, failing that, ``vocab.txt`` with the casing
    given in ``tokenizer_config.json``. Never downloads.

    Raises:
      FileNotFoundError: neither file is in ``model_dir``.
    """
    model_dir = pathlib.Path(model_dir)
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "vocab.txt").is_file():
        raise FileNotFoundError(
            f"No tokenizer in {model_dir}: expected tokenizer.json or vocab.txt.")
    from transformers import BertTokenizerFast  # Imported lazily: slow, and only needed here.
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    return BertTokenizerFast.from_pretrained(str(model_dir), local_files_only=True)
