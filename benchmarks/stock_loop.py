"""A ServerApp that drives fedkd's teacher phase with Flower's stock loop, for the latency benchmark.

`Strategy.start` sends a train and then an evaluate exchange per round through
`Grid.send_and_receive` (3 s between pulls in deployment); fedkd's ClientApp answers both.
Round times go to <output-dir>/stock-rounds.json.
"""

import json
import time

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from common.config import parse_run_config
from common.models import initial_model, to_record
from server_app.outputs import write_json
from server_app.sampling import NodeSampler
from server_app.strategy import TwoStage

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run `num-teacher-rounds` stock FedAvg rounds of the teacher; record when each ended."""
    cfg = parse_run_config(context.run_config)
    strategy = TwoStage(cfg, NodeSampler(cfg.seed, cfg.round_timeout))
    strategy.start_phase("teacher", None)
    ends: list[float] = []

    def mark(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        ends.append(time.perf_counter())
        return MetricRecord({"round": server_round})

    strategy.start(grid, to_record(initial_model(cfg, "teacher")), num_rounds=cfg.num_teacher_rounds,
                   timeout=cfg.round_timeout, evaluate_fn=mark)
    out = cfg.output_path()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "stock-rounds.json", [b - a for a, b in zip(ends, ends[1:])])
    print(json.dumps({"stock_rounds": len(ends) - 1}))
