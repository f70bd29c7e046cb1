"""Settings for transformers' common tests (fetched at test time by hf_common_suite.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

# marks that transformers' test files use and register in their own conftest.py / pyproject.toml
TRANSFORMERS_MARKS = (
    "accelerate_tests", "all_flash_attn_test", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test",
    "torch_compile_test", "torch_export_test", "generate", "is_training_test", "is_tensor_parallel_test",
    "is_expert_parallel_test", "is_fsdp_test", "bitsandbytes",
)


def pytest_configure(config: pytest.Config) -> None:
    for mark in TRANSFORMERS_MARKS:
        config.addinivalue_line("markers", f"{mark}: a mark of transformers' own test suite")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """The models here are tiny: a second thread only adds synchronisation (and stalls on a busy 2-core runner)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
