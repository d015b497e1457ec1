"""Test-wide strict modes: eight fake CPU devices and no implicit rank promotion."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")


import pytest  # noqa: E402
from helpers import prepared_data_dir, trained_workdir  # noqa: E402

# Modules whose tests train end to end, start subprocesses or several hosts, or inject
# faults: all `slow` (`make test-fast` leaves them out; `make test` runs everything).
SLOW_MODULES = {
    "test_distributed.py",
    "test_faults.py",
    "test_fuzz.py",
    "test_launch.py",
    "test_multihost.py",
    "test_progress.py",
    "test_user_errors.py",
    "test_workdir.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS data dir holding en_es_grammar/tiny, shared by every test module."""
    return prepared_data_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The tiny workdir trained once per session (see helpers.trained_workdir)."""
    return trained_workdir(tmp_path_factory)


# Modules whose module-scoped fixtures train or compile for minutes (every mesh's train
# step, the two-host runs, an imported model fine-tuned with shared compiled programs):
# under xdist each runs whole on one worker, so those fixtures are built once, not once
# per worker.
ONE_WORKER_MODULES = {
    "test_classification_e2e.py",
    "test_generation_e2e.py",
    "test_hf_classification.py",
    "test_marian_import.py",
    "test_multimodal_e2e.py",
    "test_multihost.py",
    "test_sharding.py",
}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`-n N` (`--dist load`) with the tests of ONE_WORKER_MODULES kept together."""
    if config.getvalue("dist") != "load":
        return None  # an explicit --dist choice is kept
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if os.path.basename(module) in ONE_WORKER_MODULES else nodeid

    return Scheduling(config, log)
