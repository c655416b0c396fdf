"""client_app.threads: torch threads: one in simulation (inside a Ray actor), node config `num-threads` on a deployed
node, by default all its cores; set once per process, checked on every message."""

import os
import sys
from types import SimpleNamespace

import pytest
import torch
from flwr.app import Context, Message, RecordDict

import client_app.threads as threads_module
from client_app.app import app
from client_app.threads import available_cores, in_simulation, num_threads

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def fake_ray(initialized: bool, actor_id: str | None) -> SimpleNamespace:
    context = SimpleNamespace(get_actor_id=lambda: actor_id)
    return SimpleNamespace(is_initialized=lambda: initialized, get_runtime_context=lambda: context)


@pytest.fixture
def fresh_process(monkeypatch):
    """As if no message had been served yet in this process; torch's threads restored after."""
    threads = torch.get_num_threads()
    monkeypatch.setattr(threads_module, "_threads_set", False)
    yield
    torch.set_num_threads(threads)


def test_simulation_is_a_ray_actor_and_nothing_else(monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert not in_simulation()  # a deployed ClientApp process: ray is not even imported
    monkeypatch.setitem(sys.modules, "ray", fake_ray(initialized=False, actor_id=None))
    assert not in_simulation()
    monkeypatch.setitem(sys.modules, "ray", fake_ray(initialized=True, actor_id=None))
    assert not in_simulation()  # a Ray driver, not one of the simulation engine's actors
    monkeypatch.setitem(sys.modules, "ray", fake_ray(initialized=True, actor_id="a1b2"))
    assert in_simulation()
    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace())
    assert not in_simulation()  # something else named ray


def test_a_deployed_node_uses_its_num_threads_else_all_its_cores(monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert available_cores() == CORES
    assert num_threads({"partition-id": 0}) == CORES
    assert num_threads({"num-threads": 3}) == 3
    assert num_threads({"num-threads": "16"}) == 16  # a TOML string, as --node-config 'num-threads="16"' gives


def test_a_simulated_node_keeps_one_thread(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", fake_ray(initialized=True, actor_id="a1b2"))
    assert num_threads({"partition-id": 0, "num-partitions": 2}) == 1


@pytest.mark.parametrize("value", [0, -2, 1.5, 2.0, True, "four", "", "2 threads", None])
def test_num_threads_must_be_a_whole_number_of_1_or_more(monkeypatch, value):
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    with pytest.raises(ValueError) as refused:
        num_threads({"num-threads": value})
    assert str(refused.value) == (
        f"node config 'num-threads' = {value!r}; allowed: a whole number of threads, 1 or more "
        f"(default: the {CORES} cores this node may use)"
    )


def identify(node_config: dict) -> Message:
    context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})
    return app(Message(RecordDict(), dst_node_id=7, message_type="query.identify"), context)


def test_the_first_message_sets_the_threads_and_later_ones_only_check(task_identity, fresh_process, monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    torch.set_num_threads(1)
    assert not identify({"partition-id": 0, "num-threads": 2}).has_error()
    assert torch.get_num_threads() == 2
    assert not identify({"partition-id": 0, "num-threads": 1}).has_error()
    assert torch.get_num_threads() == 2  # once per process: a Ray actor serves many messages
    with pytest.raises(Exception, match=r"node config 'num-threads' = 0; allowed: a whole number of threads"):
        identify({"partition-id": 0, "num-threads": 0})


def test_a_bad_num_threads_on_the_first_message_is_refused_before_anything_runs(task_identity, fresh_process):
    with pytest.raises(Exception, match=r"node config 'num-threads' = 'many'; allowed"):
        identify({"partition-id": 0, "num-threads": "many"})
    assert not threads_module._threads_set
