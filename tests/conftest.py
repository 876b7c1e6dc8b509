"""Shared test fixtures: the parity references and GLUE slices in ``tests/fixtures``, the ``shared/``
folder beside the checkout (the few tests that need its full files skip without it), the real MiniLM
model."""

import os
import pathlib

# Keep tests on the CPU with two virtual devices available for the sharded-step tests; set before
# jax is imported anywhere. The suite compiles hundreds of small programs and runs each briefly, so
# compiling is most of its time, and LLVM's optimisation of the generated code buys nothing there:
# level 0 cuts a compile-bound test's time by about a quarter on a cold cache (the pipeline test:
# 95 s to 69 s). XLA's own passes, fusion and layout, still run; tests that compare two programs
# compile both the same way.
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=2 {FAST_COMPILE}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import hashlib  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Tests build the same small train steps several times (a run, its resume, a rerun): the
# persistent compilation cache turns the repeats into cache hits. The mains the tests start (in
# this process or as children) use it too, rather than the user's cache (launch/common.py's
# enable_compilation_cache reads BINARYBERT_JAX_CACHE), so a test run adds no programs to it.
TEST_JAX_CACHE = os.environ.get("BINARYBERT_TEST_JAX_CACHE",
                                os.path.join(tempfile.gettempdir(), "binarybert_jax_test_cache"))
os.environ["BINARYBERT_JAX_CACHE"] = TEST_JAX_CACHE
jax.config.update("jax_compilation_cache_dir", TEST_JAX_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
# The reference outputs the parity tests compare against and the GLUE slices the training tests
# read ship with the tests (tests/fixtures/README.md).
FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs several processes or a whole pipeline; CI runs it, "
                            "launch/test.sh --fast leaves it out")


@pytest.fixture(scope="package")
def shared_dir() -> pathlib.Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} (the shared/ folder beside the checkout) is absent")
    return SHARED


@pytest.fixture(scope="package")
def fixtures_dir() -> pathlib.Path:
    """``tests/fixtures``, its files checked against its SHA256SUMS once per test run."""
    sums = FIXTURES / "SHA256SUMS"
    for line in sums.read_text().splitlines():
        expected, name = line.split()
        path = FIXTURES / name
        if not path.is_file():
            pytest.fail(f"{path} is missing: it is listed in {sums}", pytrace=False)
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != expected:
            pytest.fail(f"{path} has SHA-256 {actual}, {sums} says {expected}: the fixture "
                        "changed; restore it from version control", pytrace=False)
    return FIXTURES


@pytest.fixture(scope="package")
def glue_dir(fixtures_dir) -> pathlib.Path:
    """GLUE slices in GLUE's layout: the header and first 64 rows of train.tsv and dev.tsv of MRPC/,
    STS-B/ and SST-2/ (no test.tsv), checked against SHA256SUMS."""
    return fixtures_dir / "glue"


def write_mrpc_test_file(glue_dir: pathlib.Path, out: pathlib.Path, rows: int) -> pathlib.Path:
    """The first ``rows`` MRPC dev pairs of ``glue_dir`` in the layout of GLUE's MRPC test.tsv (an
    index where dev has the label), for tests of unlabeled input: the slices hold no test split."""
    lines = (glue_dir / "MRPC" / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:rows + 1]
    body = [f"{i}\t{line.split(chr(9), 1)[1]}" for i, line in enumerate(lines)]
    out.write_text("\n".join(["index\t#1 ID\t#2 ID\t#1 String\t#2 String", *body]) + "\n",
                   encoding="utf-8")
    return out


@pytest.fixture(scope="package")
def tokenizer():
    """MiniLM's real tokenizer (the default backbone's)."""
    from binarybert_jax.assets import minilm_dir
    from binarybert_jax.tokenizer import load_tokenizer

    try:
        return load_tokenizer(minilm_dir())
    except FileNotFoundError as e:
        pytest.skip(str(e))


class CountingTokenizer:
    """The real tokenizer, counting its batch calls (so a cache hit is visible without timing)."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


@pytest.fixture(scope="package")
def minilm_dir():
    from binarybert_jax import assets
    return assets.minilm_dir()


# A small BERT for training tests: the real vocabulary (so the real tokenizer works), tiny widths.
def tiny_config(num_layers: int = 2):
    from binarybert_jax.model import BertConfig
    return BertConfig(vocab_size=30522, hidden_size=32, num_layers=num_layers, num_heads=4, head_dim=8,
                      intermediate_size=64, max_position=128, hidden_dropout=0.0, attention_dropout=0.0)


def run_config(tiny_pretrained, data_dir, task: str, /, **overrides):
    """A training config for the tiny model: 32 training and 16 dev examples, batch 4, 32 tokens;
    ``overrides`` are dotted keys (``"stage2.epochs"``) set last."""
    from configs import common
    c = common.base_config(task)
    common.shrink_for_local(c)
    c.pretrained = str(tiny_pretrained)
    c.data_dir = str(data_dir)
    c.train_limit, c.eval_limit, c.batch_size, c.eval_batch_size = 32, 16, 4, 8
    c.max_seq_length = 32
    c.stage2.learning_rate = 1e-3
    c.progress_bar = False
    for k, v in overrides.items():
        node = c
        *parents, leaf = k.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = v
    return c


def _write_tiny(directory, config, minilm_dir):
    import jax
    import jax.numpy as jnp
    from binarybert_jax import hf_import
    from binarybert_jax.model import BertModel
    init = jax.jit(BertModel(config, head="none").init)  # one program, not one per op
    params = init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    return hf_import.write_hf_checkpoint(directory, params, config, minilm_dir)


@pytest.fixture(scope="package")
def tiny_pretrained(tmp_path_factory, minilm_dir):
    """A 2-layer BERT in the Hugging Face layout (config.json + model.safetensors + MiniLM's tokenizer)."""
    return _write_tiny(tmp_path_factory.mktemp("tiny_hf"), tiny_config(2), minilm_dir)


@pytest.fixture(scope="package")
def tiny_pretrained_1layer(tmp_path_factory, minilm_dir):
    return _write_tiny(tmp_path_factory.mktemp("tiny_hf1"), tiny_config(1), minilm_dir)
