"""The node config keys fedkd reads (`flower-supernode --node-config '...'`; Flower's simulation sets
`partition-id` and `num-partitions` itself). This list is the one source of docs/reference/node-config.md
(`python -m server_app.reference_docs`); a test keeps it equal to the keys client_app/ and common/ read."""

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeKey:
    """One node config key, as the reference documents it."""

    key: str
    allowed: str
    default: str
    meaning: str


KEYS = (
    NodeKey(
        "data-path",
        "a path on the node's host",
        "none: the node reads its partition of the run's `dataset`",
        "the node's data: an `.npz`, CSV or parquet file, an image folder or a `save_to_disk` directory "
        "([data](../data.md#node-files)); a file that cannot be read or does not fit the run's task makes the node "
        "refused by name",
    ),
    NodeKey(
        "name",
        "any string",
        "`data-path`, else `partition-<partition-id>`",
        "the node's stable name: seeded sampling, `history.json`, the DP ledger and the node's seed stream use it",
    ),
    NodeKey(
        "state-dir",
        "a writable directory",
        "none: nothing kept on disk",
        "keeps the node's local teacher (and FedMD's model), its DP ledger and its decoded data across messages "
        "and SuperNode restarts",
    ),
    NodeKey(
        "model",
        "a model name, as for run config `model`",
        "the run's `models` entry of the node's partition, else run config `model`",
        "the node's architecture ([models](../models.md))",
    ),
    NodeKey(
        "num-threads",
        "a whole number ≥ 1",
        "every core the ClientApp process may run on",
        "torch's CPU threads in a deployed ClientApp; simulated ClientApps always use 1 "
        "([hardware](../hardware.md#threads))",
    ),
    NodeKey(
        "dp-max-epsilon",
        "a finite number > 0",
        "none: the run's `dp-epsilon`",
        "the most ε this node spends in a run, whatever the run asks; the node refuses runs without DP "
        "([privacy](../privacy.md))",
    ),
    NodeKey(
        "partition-id",
        "a whole number from 0 to `num-partitions` − 1",
        "set by Flower's simulation",
        "without `data-path`: which partition of the run's `dataset` the node holds",
    ),
    NodeKey(
        "num-partitions",
        "a whole number ≥ 1",
        "set by Flower's simulation",
        "without `data-path`: how many partitions the run's `dataset` is split into",
    ),
)
