"""Logit queries on public data (FedMD, the ensemble teacher): which public rows a round uses, the queries."""

from typing import Literal

from flwr.app import ConfigRecord, Message, RecordDict
from pydantic import Field

from common.config import Settings
from common.protocol import CONFIG, QUERY_LOGITS
from common.seeds import Stream, stream_rng


class PublicDataSettings(Settings):
    """The settings of a method that uses the public data."""

    public_samples_per_round: int = Field(
        0, ge=0, description="public samples used per round, drawn by (`seed`, round); 0: all"
    )


class LogitsSettings(PublicDataSettings):
    """The settings of a method whose nodes send logits on the public data."""

    logits_dtype: Literal["float32", "float16"] = Field(
        "float32", description="how logits travel; `float16` halves their bytes"
    )


def public_subset(wanted: int, public_size: int, seed: int, phase_index: int, server_round: int) -> list[int]:
    """Indices of the public samples a round uses: all, or `wanted` of them drawn by (seed, phase, round)."""
    if wanted == 0 or wanted >= public_size:
        return list(range(public_size))
    rng = stream_rng(seed, Stream.PUBLIC_SUBSET, phase_index, server_round)
    return sorted(rng.choice(public_size, size=wanted, replace=False).tolist())


def logits_queries(nodes: list[int], config: dict, extra: dict[int, dict] | None = None) -> list[Message]:
    """`query.logits` to each of `nodes` with `config`, and the records `extra` holds for it."""
    extra = extra or {}
    return [
        Message(
            RecordDict({CONFIG: ConfigRecord(config), **extra.get(n, {})}), dst_node_id=n, message_type=QUERY_LOGITS
        )
        for n in nodes
    ]
