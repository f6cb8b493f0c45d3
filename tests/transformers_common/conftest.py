"""Markers that transformers' common test files and `transformers.testing_utils` put on tests (transformers registers
them in its own conftest, which the sdist does not ship)."""

import pytest

TRANSFORMERS_MARKERS = (
    "accelerate_tests: needs accelerate",
    "flash_attn_test: a FlashAttention 2 test (CUDA only)",
    "flash_attn_3_test: a FlashAttention 3 test (CUDA only)",
    "flash_attn_4_test: a FlashAttention 4 test (CUDA only)",
    "torch_compile_test: a torch.compile test",
    "slow: a slow test (transformers runs it only with RUN_SLOW=1)",
    "is_staging_test: needs the Hub's staging endpoint",
    "is_pipeline_test: a pipeline test",
    "is_agent_test: an agent test",
    "is_training_test: a training test",
    "is_tensor_parallel_test: a tensor-parallel test",
    "is_expert_parallel_test: an expert-parallel test",
    "is_fsdp_test: an FSDP test",
)


def pytest_configure(config):
    for marker in TRANSFORMERS_MARKERS:
        config.addinivalue_line("markers", marker)


def pytest_collection_modifyitems(config, items):
    # Some common tests assert that a FutureWarning is raised (e.g. for deprecated argument names): let them through
    # here, where the suite-wide setting ignores them.
    for item in items:
        if "transformers_common" in str(item.path):
            item.add_marker(pytest.mark.filterwarnings("default::FutureWarning"))
