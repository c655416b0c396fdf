"""Logit queries on public data: which rows a round uses, and the query messages."""

from flwr.app import ArrayRecord

from common.protocol import CONFIG, QUERY_LOGITS, TEACHER
from server_app.strategies.kit.logits import LogitsSettings, PublicDataSettings, logits_queries, public_subset
from tests.server_app.helpers import weights


def test_public_subsets_follow_seed_phase_and_round():
    a, b = public_subset(5, 100, seed=1, phase_index=0, server_round=3), public_subset(5, 100, 1, 0, 4)
    assert len(a) == 5 and a == sorted(set(a)) and a != b
    assert a == public_subset(5, 100, 1, 0, 3)
    assert a != public_subset(5, 100, 1, 1, 3) and a != public_subset(5, 100, 2, 0, 3)
    assert all(0 <= i < 100 for i in a)


def test_all_public_rows_when_none_or_too_many_are_wanted():
    assert public_subset(0, 7, 1, 0, 1) == list(range(7))
    assert public_subset(7, 7, 1, 0, 1) == list(range(7))
    assert public_subset(9, 7, 1, 0, 1) == list(range(7))


def test_a_query_goes_to_each_node_with_the_config_and_its_own_records(task_identity):
    teacher = weights(1.0)
    messages = logits_queries([4, 2], {"indices": [0, 3]}, {2: {TEACHER: teacher}})
    assert [m.metadata.dst_node_id for m in messages] == [4, 2]
    assert all(m.metadata.message_type == QUERY_LOGITS == "query.logits" for m in messages)
    assert [dict(m.content[CONFIG]) for m in messages] == [{"indices": [0, 3]}] * 2
    assert TEACHER not in messages[0].content and isinstance(messages[1].content[TEACHER], ArrayRecord)


def test_the_settings_of_public_data_and_of_logits_and_their_defaults():
    assert PublicDataSettings().public_samples_per_round == 0
    settings = LogitsSettings.model_validate({"public-samples-per-round": 5, "logits-dtype": "float16"})
    assert (settings.public_samples_per_round, settings.logits_dtype) == (5, "float16")
