"""Shared fixtures: a private matplotlib cache, and Flower's task identity for direct handler calls."""

import os
import tempfile

import pytest

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="fedkd-mpl-"))


@pytest.fixture
def task_identity():
    """Messages can only be built inside a task; direct handler calls pretend to be one."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 7
    yield
    TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = None
