"""A ServerApp that drives fedkd's teacher phase with Flower's stock loop, for the latency and load benchmarks.

`Strategy.start` sends a train and then an evaluate exchange per round through
`Grid.send_and_receive` (3 s between pulls in deployment); fedkd's ClientApp answers both. It samples
`fraction-train` of the nodes to train and `fraction-evaluate` (at least `min-evaluate-nodes`) to evaluate.
Round times go to <output-dir>/stock-rounds.json.
"""

import json
import time
from collections.abc import Iterable

from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from common.data import builtin_task
from common.models import initial_model, to_record
from common.protocol import ARRAYS, CONFIG, MODEL, NUM_EXAMPLES, TRAIN_SUPERVISED
from common.task import Task
from server_app.outputs import write_json
from server_app.settings import parse

app = ServerApp()


class StockFedAvg(FedAvg):
    """Flower's FedAvg, its train messages addressed to fedkd's `train.supervised` handler for `model`."""

    def __init__(self, model: str, task: Task, **kwargs) -> None:
        # The record and metric names of fedkd's ClientApp.
        super().__init__(arrayrecord_key=ARRAYS, configrecord_key=CONFIG, weighted_by_key=NUM_EXAMPLES, **kwargs)
        self.model, self.task = model, task

    def _construct_messages(self, record: RecordDict, node_ids: list[int], message_type: str) -> Iterable[Message]:
        # fedkd's nodes build the model for the task every message carries, and refuse a message without one.
        record[self.configrecord_key].update({MODEL: self.model, **self.task.to_config()})
        action = TRAIN_SUPERVISED if message_type == MessageType.TRAIN else message_type
        return super()._construct_messages(record, node_ids, action)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run `two-stage.num-teacher-rounds` stock FedAvg rounds of the teacher; record when each ended."""
    cfg, settings = parse(context.run_config)
    task = builtin_task(cfg.dataset)
    strategy = StockFedAvg(
        settings.teacher_model,
        task,
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_train_nodes,
        min_evaluate_nodes=cfg.min_evaluate_nodes,
        min_available_nodes=cfg.min_train_nodes,
    )
    ends: list[float] = []

    def mark(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        ends.append(time.perf_counter())
        return MetricRecord({"round": server_round})

    strategy.start(
        grid,
        to_record(initial_model(settings.teacher_model, task, cfg.seed)),
        num_rounds=settings.num_teacher_rounds,
        timeout=cfg.round_timeout,
        evaluate_fn=mark,
    )
    out = cfg.output_path()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "stock-rounds.json", [b - a for a, b in zip(ends, ends[1:])])
    print(json.dumps({"stock_rounds": len(ends) - 1}))
