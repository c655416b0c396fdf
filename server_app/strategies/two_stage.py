"""`two-stage`: FedAvg over the teacher, then FedAvg over students distilled from each node's local teacher."""

from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from common.data import load_public
from common.distill import consensus, labelled_error, random_batches
from common.models import logits_from_record
from common.protocol import INDICES, LOGITS, PUBLIC, SERVER_ROUND, SOURCE, SOURCE_TEACHER, SPLIT, TEACHER, Action
from common.seeds import Stream, derive_seed
from server_app.strategies.base import STUDENT_PHASE, TEACHER_PHASE, Globals, Round, Strategy, register

# The state key of the final global teacher, which phase 2 sends to the nodes.
FINAL_TEACHER = "final-teacher"


@register("two-stage")
class TwoStage(Strategy):
    """Phase "teacher" trains the global teacher; phase "student" distils from the clients' local teachers.

    The final global teacher travels to a node once, with its first phase-2 message; a node
    that failed since (and may have lost its state) gets it again. With `ensemble-teacher`,
    the server distils the student itself from the ensemble of the local teachers' logits on public data.
    """

    phases = (TEACHER_PHASE, STUDENT_PHASE)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.holds_teacher: set[int] = set()
        self.final_teacher: ArrayRecord | None = None

    def initial(self, phase: str, grid: Grid, previous: Globals | None) -> Globals:
        """The teacher's seeded weights, or at phase 2 the students', fixing the final teacher."""
        if phase == STUDENT_PHASE and previous is not None:
            self.final_teacher = previous[self.cfg.teacher_model]
        return super().initial(phase, grid, previous)

    def state(self) -> dict[str, ArrayRecord]:
        """The final teacher, once phase 1 has ended: a run resumed in phase 2 sends it on."""
        return {} if self.final_teacher is None else {FINAL_TEACHER: self.final_teacher}

    def restore(self, state: dict[str, ArrayRecord]) -> None:
        """Take back the final teacher."""
        self.final_teacher = state.get(FINAL_TEACHER)

    def private_epochs(self) -> int:
        """Phase 1's training and the teacher's fine-tuning; phase 2's distillation unless the server distils."""
        student = 0 if self.cfg.ensemble_teacher else self.cfg.num_student_rounds * self.cfg.local_epochs
        return self.cfg.num_teacher_rounds * self.cfg.local_epochs + self.cfg.teacher_finetune_epochs + student

    def teacher_model(self) -> str | None:
        """The teacher's architecture."""
        return self.cfg.teacher_model

    def _teacher_for(self, node: int) -> dict[str, ArrayRecord]:
        return {} if node in self.holds_teacher else {TEACHER: self.final_teacher}

    def _track_teacher(self, result: Round) -> None:
        answered = set(result.accepted)
        self.holds_teacher = (self.holds_teacher | answered) - (set(result.sent) - answered)

    def round(self, phase: str, server_round: int, globals_: Globals, grid: Grid) -> Round:
        """Teacher: grouped FedAvg. Student: local distillation (`train.distil`), or the ensemble-teacher round."""
        if phase == TEACHER_PHASE:
            return self.train_round(phase, server_round, globals_, grid, Action.SUPERVISED)[0]
        if self.cfg.ensemble_teacher:
            return self._ensemble_round(phase, server_round, globals_, grid)
        result, _ = self.train_round(phase, server_round, globals_, grid, Action.DISTIL, self._teacher_for)
        self._track_teacher(result)
        return result

    def _ensemble_round(self, phase: str, server_round: int, globals_: Globals, grid: Grid) -> Round:
        """Sampled nodes send their local teacher's logits on public data; the server distils every student."""
        public = load_public(self.cfg)
        indices = self.public_subset(len(public), server_round, phase)
        nodes = self.sample(grid)
        config = {SOURCE: SOURCE_TEACHER, SPLIT: PUBLIC, INDICES: indices, SERVER_ROUND: server_round}
        result = Round(
            dict(globals_), nodes, [self.query_logits(grid, nodes, config, self._teacher_for)], scores_previous=False
        )
        replies = self.screen_logits(result.exchanges[0], len(indices), result)
        self._track_teacher(result)
        if not replies:
            return result
        ensemble = consensus([logits_from_record(m.content[LOGITS]) for m in replies])
        x, y = public.x[indices], public.y[indices]
        cut = max(1, len(x) // 5)  # a labelled fifth for early stopping
        seed = derive_seed(self.cfg.seed, Stream.ENSEMBLE_BATCHES, server_round)
        result.globals = self.distil_groups(
            phase,
            globals_,
            lambda name: random_batches(x[cut:], ensemble[cut:], self.cfg.batch_size, seed),
            labelled_error(x[:cut], y[:cut]),
            result,
        )
        return result
