"""torch's CPU threads for a ClientApp: node config `num-threads` on a deployed node (default: every core it may
use), one in simulation, where several ClientApps share the cores."""

import os
import sys

import torch
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

NUM_THREADS = "num-threads"  # node config: torch's CPU threads in a deployed ClientApp; default all its cores


def in_simulation() -> bool:
    """Whether this ClientApp runs under Flower's simulation engine: inside a Ray actor. The engine runs every
    simulated ClientApp in one (flwr/simulation/ray_transport/ray_actor.py, ClientAppActor); a deployed ClientApp
    process never imports ray, so it is not even loaded there."""
    ray = sys.modules.get("ray")
    if ray is None:
        return False
    try:
        return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    except Exception:  # a ray too unlike the one simulation installs: not Flower's simulation engine
        return False


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def num_threads(node_config: dict) -> int:
    """torch's CPU threads for this ClientApp: 1 in simulation, where several ClientApps share the cores; else
    node config `num-threads`, by default every core the node may use."""
    if in_simulation():
        return 1
    if NUM_THREADS not in node_config:
        return available_cores()
    value = node_config[NUM_THREADS]
    whole = isinstance(value, int) or (isinstance(value, str) and value.strip().isdecimal())
    if isinstance(value, bool) or not whole or int(value) < 1:
        raise ValueError(
            f"node config '{NUM_THREADS}' = {value!r}; allowed: a whole number of threads, 1 or more "
            f"(default: the {available_cores()} cores this node may use)"
        )
    return int(value)


# One thread on import, as before node config `num-threads`: the simulation engine imports this module in every Ray
# actor and in its own process, where the ServerApp runs (in a thread), so simulated runs compute as they always did.
# A deployed node raises it at its first message (threads_mod).
torch.set_num_threads(1)
_threads_set = False  # once per process: a deployed ClientApp process serves one message, a Ray actor many


def threads_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Check the node config's `num-threads` on every message; set torch's CPU threads (`num_threads`) before the
    first message this process serves."""
    global _threads_set
    threads = num_threads(context.node_config)
    if not _threads_set:
        torch.set_num_threads(threads)
        _threads_set = True
    return call_next(msg, context)
