"""The strategy contract: the registry, and what a strategy provides unless it changes it (phases, architectures,
initial models, private epochs, scores)."""

import pkgutil

import numpy as np
import pytest
import torch

from common.config import ConfigError, Settings, parse_run_config
from common.data import Split
from common.models import build_model, initial_model, load_record, to_record
from server_app.round import Phase
from server_app.strategies import STRATEGIES, register
from server_app.strategies.contract import NoSettings, Strategy
from server_app.strategies.fedavg import FedAvg
from tests.server_app.helpers import Nodes, strategy


def test_every_module_of_the_package_registers_its_strategy_under_its_file_name():
    import server_app.strategies as package

    modules = {m.name for m in pkgutil.iter_modules(package.__path__) if not m.ispkg} - {"contract"}
    assert {cls.__module__.rsplit(".", 1)[1] for cls in STRATEGIES.values()} == modules
    assert {name.replace("-", "_") for name in STRATEGIES} == modules
    assert all(STRATEGIES[name].name == name for name in STRATEGIES)
    assert {"fedavgm", "fedadam"} <= set(STRATEGIES)


def test_the_server_refuses_an_unregistered_strategy_naming_the_registered_ones():
    with pytest.raises(ConfigError) as err:
        parse_run_config({"strategy": "fedsgd"}, strategies=STRATEGIES)
    assert str(err.value) == (
        "run config 'strategy' = 'fedsgd': Value error, unknown strategy; allowed: "
        + ", ".join(repr(name) for name in STRATEGIES)
    )
    assert parse_run_config({"strategy": "fedprox"}, strategies=STRATEGIES).strategy == "fedprox"


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="strategy name 'fedavg' is taken by FedAvg"):
        register("fedavg")(FedAvg)


def test_every_strategy_declares_settings_that_its_defaults_satisfy():
    for cls in STRATEGIES.values():
        assert issubclass(cls.Settings, Settings) and cls.Settings() == cls.Settings()
    assert STRATEGIES["fedavg"].Settings is NoSettings


@pytest.mark.parametrize(
    "name, config, epochs",
    [
        (
            "two-stage",
            {
                "two-stage.num-teacher-rounds": 4,
                "num-student-rounds": 3,
                "local-epochs": 2,
                "two-stage.teacher-finetune-epochs": 5,
            },
            8 + 5 + 6,
        ),
        (
            "two-stage",
            {
                "two-stage.num-teacher-rounds": 4,
                "num-student-rounds": 3,
                "local-epochs": 2,
                "two-stage.ensemble-teacher": True,
            },
            8,
        ),
        ("fedmd", {"num-student-rounds": 3, "local-epochs": 2}, 2 + 6),
        ("fedavg", {"num-student-rounds": 3, "local-epochs": 2}, 6),
        ("fedprox", {"num-student-rounds": 3, "local-epochs": 2}, 6),
        ("fedavgm", {"num-student-rounds": 3, "local-epochs": 2}, 6),
        ("fedadam", {"num-student-rounds": 3, "local-epochs": 2}, 6),
        ("feddf", {"num-student-rounds": 3, "local-epochs": 2}, 6),
        ("fedgen", {"num-student-rounds": 3, "local-epochs": 2}, 6),
    ],
)
def test_each_strategy_plans_the_private_epochs_a_node_may_train(name, config, epochs):
    assert strategy(name, **config).private_epochs() == epochs


def test_one_phase_of_num_student_rounds_with_each_nodes_own_architecture():
    fedavg = strategy("fedavg", {1: ("a", "cnn"), 2: ("b", "mlp-32")}, **{"num-student-rounds": 4})
    (phase,) = fedavg.phases()
    assert phase == Phase("student", 4) and not phase.teacher
    assert (fedavg.architecture(1, phase), fedavg.architecture(2, phase), fedavg.architecture(3, phase)) == (
        "cnn",
        "mlp-32",
        "mlp-32",
    )
    assert fedavg.teacher_model() is None and fedavg.state() == {}


def test_two_phases_of_two_stage_the_teacher_one_with_the_runs_teacher_model():
    two_stage = strategy("two-stage", {1: ("a", "cnn")}, **{"num-student-rounds": 4, "two-stage.num-teacher-rounds": 2})
    teacher, student = two_stage.phases()
    assert (teacher, student) == (Phase("teacher", 2, teacher=True), Phase("student", 4))
    assert two_stage.architecture(1, teacher) == "mlp-128x64" and two_stage.architecture(1, student) == "cnn"
    assert two_stage.teacher_model() == "mlp-128x64"


def test_initial_models_are_seeded_one_per_architecture_among_the_connected_nodes():
    nodes = {1: ("a", "cnn"), 2: ("b", "mlp-32"), 3: ("c", "cnn")}
    first, again = strategy("fedavg", nodes, seed=5), strategy("fedavg", nodes, seed=5)
    (phase,) = first.phases()
    start = first.initial(phase, [1, 2, 3], None)
    assert list(start) == ["cnn", "mlp-32"]
    assert list(first.initial(phase, [2], None)) == ["mlp-32"]
    want = to_record(initial_model("cnn", "digits", 5)).to_torch_state_dict()
    got = again.initial(phase, [1, 3], None)["cnn"].to_torch_state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    other = strategy("fedavg", nodes, seed=6).initial(phase, [2], None)["mlp-32"]
    assert not np.array_equal(other.to_numpy_ndarrays()[0], start["mlp-32"].to_numpy_ndarrays()[0])


def test_score_is_each_global_models_loss_and_accuracy_on_the_test_set():
    fedavg = strategy("fedavg")
    arrays = to_record(initial_model("mlp-32", "digits", 1))
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(0))
    model = load_record(build_model("mlp-32", "digits"), arrays)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    # Labels that the model gets right on exactly the first four rows.
    y = torch.cat([predicted[:4], (predicted[4:] + 1) % 10])
    loss, accuracy = fedavg.score({"mlp-32": arrays}, Split(x, y))["mlp-32"]
    with torch.no_grad():
        expected = float(torch.nn.functional.cross_entropy(model(x), y))
    assert accuracy == pytest.approx(4 / 6) and loss == pytest.approx(expected, rel=1e-5)


def test_a_strategy_must_say_what_its_round_does():
    class Incomplete(Strategy):
        pass

    with pytest.raises(TypeError, match="abstract method '?round"):
        Incomplete(parse_run_config({}), NoSettings(), Nodes())
