"""Shared fixtures: private matplotlib and Hugging Face caches, no hub access, and Flower's task identity for direct
handler calls."""

import os
import tempfile

import pytest

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="fedkd-mpl-"))
# The tests build their datasets on disk; `datasets` converts them in a cache of this test run's own, and never
# asks the hub (out of reach here) for anything. Flower's processes inherit both.
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="fedkd-hf-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def task_identity():
    """Messages can only be built inside a task; direct handler calls pretend to be one."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 7
    yield
    TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = None
