"""Tests for binarybert_jax.data.download, offline: the URL table, and the unpacking and MRPC
formatting through a local fetch function."""

import pathlib
import urllib.error
import zipfile

import pytest

from binarybert_jax.data import download, glue, tasks

# The SST-2 slice shipped in the repository stands in for the downloaded archive's contents.
SLICE = pathlib.Path(__file__).resolve().parents[1] / "data" / "glue_slice"


def test_download_urls_cover_every_task():
    for spec in glue.all_tasks():
        urls = download.download_urls(spec)
        assert urls and all(u.startswith("https://dl.fbaipublicfiles.com/") for u in urls.values())
    assert set(download.download_urls(tasks.get_task("mrpc"))) == {"msr_paraphrase_train.txt",
                                                   "msr_paraphrase_test.txt", "dev_ids.tsv"}
    assert download.download_urls(tasks.get_task("sst2")) == {
        "SST-2.zip": "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"}
    assert download.download_urls(tasks.get_task("qqp"))["QQP-clean.zip"].endswith("/glue/data/QQP-clean.zip")


def _zip(path: pathlib.Path, members: dict[str, pathlib.Path]) -> pathlib.Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, source in members.items():
            zf.write(source, name)
    return path


def test_download_glue_unpacks_zip(tmp_path):
    archive = _zip(tmp_path / "SST-2.zip", {f"SST-2/{name}": SLICE / "SST-2" / name
                                            for name in ("train.tsv", "dev.tsv")})
    fetched = []

    def fetch(url, path):
        fetched.append(url)
        path.write_bytes(archive.read_bytes())

    task_dir = download.download_glue("sst-2", tmp_path / "glue", fetch=fetch)
    assert fetched == ["https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"]
    assert task_dir == tmp_path / "glue" / "SST-2"
    assert len(glue.read_examples(tmp_path / "glue", tasks.get_task("sst-2"), "dev")) == 872
    assert len(glue.read_examples(tmp_path / "glue", tasks.get_task("sst-2"), "train")) == 2000
    # Neither the archive nor a partial download stays behind.
    assert sorted(p.name for p in (tmp_path / "glue").iterdir()) == ["SST-2"]


def test_download_glue_refuses_members_outside_dest(tmp_path):
    archive = _zip(tmp_path / "evil.zip", {"SST-2/train.tsv": SLICE / "SST-2" / "train.tsv",
                                           "../outside.tsv": SLICE / "SST-2" / "dev.tsv"})
    dest = tmp_path / "glue"
    with pytest.raises(ValueError, match="'../outside.tsv' would extract outside"):
        download.download_glue("sst-2", dest,
                               fetch=lambda url, path: path.write_bytes(archive.read_bytes()))
    assert not (tmp_path / "outside.tsv").exists() and not (dest / "SST-2").exists()


def test_download_glue_builds_mrpc(tmp_path):
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    files = {
        "msr_paraphrase_train.txt": header + "1\t11\t12\tA \" b .\tA b .\n0\t21\t22\tC .\tD .\n"
                                    "1\t31\t32\tE .\tF .\n",
        "msr_paraphrase_test.txt": header + "0\t41\t42\tG .\tH .\n",
        "dev_ids.tsv": "21\t22\n",
    }

    def fetch(url, path):
        path.write_text(files[url.rsplit("/", 1)[1].replace("mrpc_", "")], encoding="utf-8")

    download.download_glue("mrpc", tmp_path, fetch=fetch)
    train = glue.read_split(tmp_path, tasks.get_task("mrpc"), "train")
    assert train.header_found
    assert [(ex.text_a, ex.label) for ex in train.examples] == [('A " b .', 1), ("E .", 1)]
    assert [ex.text_a for ex in glue.read_examples(tmp_path, tasks.get_task("mrpc"), "dev")] == ["C ."]
    test = glue.read_examples(tmp_path, tasks.get_task("mrpc"), "test")
    assert test == [glue.Example("mrpc-test-0", "G .", "H .", None)]


def test_download_failure_is_clear(tmp_path):
    def fetch(url, path):
        path.write_bytes(b"half a zip")
        raise urllib.error.URLError("no network")

    with pytest.raises(OSError, match="GLUE_DIR"):
        download.download_glue("rte", tmp_path, fetch=fetch)
    # The partial download is removed, so no later run takes it for complete.
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("*.zip"))
