"""Fetches GLUE tasks into the official TSV layout that ``glue`` reads, and SQuAD's official JSON files.

The URLs are those of GLUE's ``download_glue_data.py``: one zip per task from GLUE's server, and
MRPC built from SentEval's copy of the Microsoft corpus (GLUE cannot host it). The result is
``<dest>/<TaskSpec.directory>/{train,dev,test}.tsv``; point ``$GLUE_DIR`` (or a run's
``data_dir``) at ``dest`` afterwards. Nothing else in the package downloads: a run without
network reads TSVs that are already there.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from types import MappingProxyType

from binarybert_jax.data import squad
from binarybert_jax.data import tasks
from binarybert_jax.data.glue import GLUE_DIR_ENV, TaskSpec

logger = logging.getLogger(__name__)

_GLUE_DATA_URL = "https://dl.fbaipublicfiles.com/glue/data/"

# Zips that unpack to <dest>/<TaskSpec.directory>/. QQP is the cleaned release and QNLI its v2,
# the versions the GLUE leaderboard uses.
GLUE_ZIP_URLS: Mapping[str, str] = MappingProxyType({
    "cola": _GLUE_DATA_URL + "CoLA.zip",
    "sst-2": _GLUE_DATA_URL + "SST-2.zip",
    "sts-b": _GLUE_DATA_URL + "STS-B.zip",
    "qqp": _GLUE_DATA_URL + "QQP-clean.zip",
    "mnli": _GLUE_DATA_URL + "MNLI.zip",
    "qnli": _GLUE_DATA_URL + "QNLIv2.zip",
    "rte": _GLUE_DATA_URL + "RTE.zip",
    "wnli": _GLUE_DATA_URL + "WNLI.zip",
})

# GLUE cannot host MRPC: the script builds it from SentEval's copy of the Microsoft corpus,
# moving the pairs listed in dev_ids.tsv from train to dev.
MRPC_URLS: Mapping[str, str] = MappingProxyType({
    "msr_paraphrase_train.txt":
        "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_train.txt",
    "msr_paraphrase_test.txt":
        "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_test.txt",
    "dev_ids.tsv": _GLUE_DATA_URL + "mrpc_dev_ids.tsv",
})


def download_urls(task: TaskSpec) -> dict[str, str]:
    """The files :func:`download_glue` fetches for a task: file name -> URL."""
    if task.name == "mrpc":
        return dict(MRPC_URLS)
    url = GLUE_ZIP_URLS[task.name]
    return {url.rsplit("/", 1)[1]: url}


def _urlretrieve(url: str, path: pathlib.Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
        shutil.copyfileobj(response, out)


def _safe_extract(zip_path: pathlib.Path, dest: pathlib.Path) -> None:
    """Extracts a zip, refusing members that would land outside ``dest``."""
    dest_resolved = dest.resolve()
    with zipfile.ZipFile(zip_path) as zf:
        for member in zf.namelist():
            target = (dest / member).resolve()
            if dest_resolved != target and dest_resolved not in target.parents:
                raise ValueError(f"{zip_path}: member {member!r} would extract outside {dest}.")
        zf.extractall(dest)


def format_mrpc(mrpc_dir: str | os.PathLike) -> None:
    """Builds MRPC's train/dev/test.tsv from SentEval's files, as GLUE's script does.

    Reads ``msr_paraphrase_train.txt``, ``msr_paraphrase_test.txt`` and ``dev_ids.tsv`` in
    ``mrpc_dir``. The train file's header (with its byte-order mark) is copied to train.tsv and
    dev.tsv; pairs whose ids are in dev_ids.tsv go to dev.tsv; test.tsv gets an index column
    in place of the quality label.
    """
    mrpc_dir = pathlib.Path(mrpc_dir)
    with open(mrpc_dir / "dev_ids.tsv", encoding="utf-8") as f:
        dev_ids = {tuple(line.strip().split("\t")) for line in f if line.strip()}
    with open(mrpc_dir / "msr_paraphrase_train.txt", encoding="utf-8") as src, \
            open(mrpc_dir / "train.tsv", "w", encoding="utf-8") as train, \
            open(mrpc_dir / "dev.tsv", "w", encoding="utf-8") as dev:
        header = src.readline()
        train.write(header)
        dev.write(header)
        for row in src:
            if not row.strip():
                continue
            label, id1, id2, s1, s2 = row.strip().split("\t")
            out = dev if (id1, id2) in dev_ids else train
            out.write(f"{label}\t{id1}\t{id2}\t{s1}\t{s2}\n")
    with open(mrpc_dir / "msr_paraphrase_test.txt", encoding="utf-8") as src, \
            open(mrpc_dir / "test.tsv", "w", encoding="utf-8") as test:
        src.readline()
        test.write("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
        rows = (row for row in src if row.strip())
        for index, row in enumerate(rows):
            _, id1, id2, s1, s2 = row.strip().split("\t")
            test.write(f"{index}\t{id1}\t{id2}\t{s1}\t{s2}\n")


def _get_atomically(fetch: Callable[[str, pathlib.Path], None], url: str, path: pathlib.Path,
                    offline_hint: str) -> None:
    """``fetch(url, path)`` into ``path.part`` then renamed, so an interrupted download leaves no
    file that a later run would take for complete."""
    tmp = path.with_name(path.name + ".part")
    try:
        fetch(url, tmp)
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise OSError(f"Could not download {url} ({e}). Without network access, put {offline_hint}.") from e
    os.replace(tmp, path)


def download_glue(task: str, dest: str | os.PathLike, *,
                  fetch: Callable[[str, pathlib.Path], None] | None = None) -> pathlib.Path:
    """Downloads one GLUE task into ``dest/<directory>/`` in the official TSV layout.

    Args:
      task: a GLUE task's name (as ``tasks.get_task`` takes it).
      dest: the GLUE root to fill (created if needed); use it as ``$GLUE_DIR`` afterwards.
      fetch: ``fetch(url, path)`` writes the resource at ``url`` to ``path``; defaults to an
        HTTPS download. Tests pass a local copy function.

    Returns:
      The task directory, ``dest/<directory>``.

    Raises:
      OSError: a download failed (no network, moved URL); the message suggests ``$GLUE_DIR``.
      FileNotFoundError: the archive did not contain the expected directory.
    """
    task = tasks.get_glue_task(task)
    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    fetch = fetch or _urlretrieve
    task_dir = dest / task.directory

    def get(url: str, path: pathlib.Path) -> None:
        _get_atomically(fetch, url, path, f"the GLUE TSVs in a directory and set ${GLUE_DIR_ENV} to it")

    if task.name == "mrpc":
        task_dir.mkdir(exist_ok=True)
        for name, url in MRPC_URLS.items():
            get(url, task_dir / name)
        format_mrpc(task_dir)
    else:
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            (name, url), = download_urls(task).items()
            zip_path = pathlib.Path(tmp) / name
            get(url, zip_path)
            _safe_extract(zip_path, dest)
    if not (task_dir / "train.tsv").is_file():
        raise FileNotFoundError(f"{task_dir / 'train.tsv'} missing after downloading "
                                f"{task.name}; the archive layout has changed.")
    logger.info("Downloaded %s into %s.", task.name, task_dir)
    return task_dir


def download_squad(version: str, dest: str | os.PathLike, *, splits=squad.SPLITS,
                   fetch: Callable[[str, pathlib.Path], None] | None = None) -> list[pathlib.Path]:
    """Downloads SQuAD ``version``'s official JSON files (``train-v1.1.json``, ``dev-v1.1.json``...)
    from rajpurkar.github.io into ``dest``; use ``dest`` as ``$SQUAD_DIR`` afterwards.

    Args:
      version: ``1.1`` or ``2.0``.
      dest: the directory to fill (created if needed).
      splits: which of ``train`` and ``dev``.
      fetch: as for :func:`download_glue`.
    Returns:
      The files written.
    Raises:
      ValueError: an unknown version or split.
      OSError: a download failed; the message says how to work offline.
    """
    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for split in splits:
        if (version, split) not in squad.FILE_NAMES:
            raise ValueError(f"SQuAD version {version!r} split {split!r}; allowed versions "
                             f"{squad.VERSIONS}, splits {squad.SPLITS}")
        name = squad.FILE_NAMES[(version, split)]
        _get_atomically(fetch or _urlretrieve, squad.URLS[name], dest / name,
                        f"the official SQuAD files in a directory and set ${squad.SQUAD_DIR_ENV} to it")
        out.append(dest / name)
    logger.info("Downloaded SQuAD %s (%s) into %s.", version, ", ".join(splits), dest)
    return out


__all__ = ["GLUE_ZIP_URLS", "MRPC_URLS", "download_glue", "download_squad", "download_urls", "format_mrpc"]
