"""A ServerApp that drives fedkd's teacher phase with Flower's stock loop, for the latency benchmark.

`Strategy.start` sends a train and then an evaluate exchange per round through
`Grid.send_and_receive` (3 s between pulls in deployment); fedkd's ClientApp answers both.
Round times go to <output-dir>/stock-rounds.json.
"""

import json
import time
from collections.abc import Iterable

from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from common.models import initial_model, to_record
from common.protocol import ARRAYS, CONFIG, MODEL, NUM_EXAMPLES, TRAIN_SUPERVISED
from server_app.outputs import write_json
from server_app.settings import parse

app = ServerApp()


class StockFedAvg(FedAvg):
    """Flower's FedAvg, its train messages addressed to fedkd's `train.supervised` handler for `model`."""

    def __init__(self, model: str, **kwargs) -> None:
        # The record and metric names of fedkd's ClientApp.
        super().__init__(arrayrecord_key=ARRAYS, configrecord_key=CONFIG, weighted_by_key=NUM_EXAMPLES, **kwargs)
        self.model = model

    def _construct_messages(self, record: RecordDict, node_ids: list[int], message_type: str) -> Iterable[Message]:
        record[self.configrecord_key][MODEL] = self.model
        action = TRAIN_SUPERVISED if message_type == MessageType.TRAIN else message_type
        return super()._construct_messages(record, node_ids, action)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run `two-stage.num-teacher-rounds` stock FedAvg rounds of the teacher; record when each ended."""
    cfg, settings = parse(context.run_config)
    strategy = StockFedAvg(
        settings.teacher_model,
        fraction_train=cfg.fraction_train,
        fraction_evaluate=1.0,
        min_train_nodes=cfg.min_train_nodes,
        min_available_nodes=cfg.min_train_nodes,
    )
    ends: list[float] = []

    def mark(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        ends.append(time.perf_counter())
        return MetricRecord({"round": server_round})

    strategy.start(
        grid,
        to_record(initial_model(settings.teacher_model, cfg.dataset, cfg.seed)),
        num_rounds=settings.num_teacher_rounds,
        timeout=cfg.round_timeout,
        evaluate_fn=mark,
    )
    out = cfg.output_path()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "stock-rounds.json", [b - a for a, b in zip(ends, ends[1:])])
    print(json.dumps({"stock_rounds": len(ends) - 1}))
