"""Shared test fixtures: the ``shared/`` folder beside the checkout, and the real MiniLM model."""

import os
import pathlib

# Keep tests on the CPU with two virtual devices available for the sharded-step tests; set before
# jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} (the shared/ folder beside the checkout) is absent")
    return SHARED


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir) -> pathlib.Path:
    return shared_dir / "fixtures"


@pytest.fixture(scope="session")
def glue_dir(shared_dir) -> pathlib.Path:
    return shared_dir / "data" / "glue"


@pytest.fixture(scope="session")
def minilm_dir():
    from binarybert_jax import assets
    return assets.minilm_dir()
