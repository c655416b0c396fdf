"""`two-stage`: FedAvg over the teacher, then FedAvg over students distilled from each node's local teacher."""

from flwr.app import ArrayRecord
from pydantic import Field, field_validator

from common.config import check_model_name
from common.data import load_public
from common.distill import consensus, public_validation, random_batches
from common.models import logits_from_record
from common.protocol import (
    ALPHA,
    FINETUNE_EPOCHS,
    INDICES,
    LOGITS,
    LOGITS_DTYPE,
    PUBLIC,
    SERVER_ROUND,
    SOURCE,
    SOURCE_TEACHER,
    SPLIT,
    TEACHER,
    TEACHER_MODEL,
    TEMPERATURE,
    Action,
)
from common.seeds import Stream, derive_seed
from server_app.round import Ask, Globals, Phase, RoundInput, RoundResult
from server_app.screening import logits_check
from server_app.strategies.contract import RoundSteps, register
from server_app.strategies.fedavg import FedAvg
from server_app.strategies.kit.distillation import DistillSettings, distill_groups, validation_cut
from server_app.strategies.kit.logits import LogitsSettings, logits_queries, public_subset

# The state key of the final global teacher, which phase 2 sends to the nodes.
FINAL_TEACHER = "final-teacher"


class TwoStageSettings(DistillSettings, LogitsSettings):
    """The teacher, the nodes' distillation, and the ensemble teacher's server-side distillation."""

    num_teacher_rounds: int = Field(25, ge=1, description="rounds of phase 1, the teacher's")
    teacher_model: str = Field(
        "mlp-128x64",
        description="the teacher's architecture",
        json_schema_extra={"allowed": "a model name, as for `model`"},
    )
    alpha: float = Field(
        0.5, ge=0, le=1, description="weight of the soft (teacher) loss; 1 − alpha weighs the hard labels"
    )
    teacher_finetune_epochs: int = Field(
        0, ge=0, description="epochs of local fine-tuning of the global teacher before distilling"
    )
    ensemble_teacher: bool = Field(
        False,
        description="phase 2 on the server: it distills the student from the ensemble of the local teachers' logits "
        "on public data (the `distill-*` keys, `public-samples-per-round` and `logits-dtype` apply to it)",
    )

    @field_validator("teacher_model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        check_model_name(value)
        return value


@register("two-stage")
class TwoStage(FedAvg):
    """Phase "teacher" trains the global teacher; phase "student" distills from the clients' local teachers.

    The final global teacher travels to a node once, with its first phase-2 message; a node that failed since (and
    may have lost its state) gets it again. With `ensemble-teacher`, the server distills the student itself from the
    ensemble of the local teachers' logits on public data.
    """

    Settings = TwoStageSettings

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.holds_teacher: set[int] = set()
        self.final_teacher: ArrayRecord | None = None

    def phases(self) -> tuple[Phase, ...]:
        """The teacher's phase, then the student's."""
        return Phase("teacher", self.settings.num_teacher_rounds, teacher=True), *super().phases()

    def architecture(self, node: int, phase: Phase) -> str:
        """The run's teacher model in the teacher's phase, else the node's own choice."""
        return self.settings.teacher_model if phase.teacher else super().architecture(node, phase)

    def action(self, phase: Phase) -> str:
        """Supervised training of the teacher, then distillation of the student."""
        return Action.SUPERVISED if phase.teacher else Action.DISTILL

    def initial(self, phase: Phase, connected: list[int], previous: Globals | None) -> Globals:
        """The teacher's seeded weights, or at phase 2 the students', fixing the final teacher."""
        if not phase.teacher and previous is not None:
            self.final_teacher = previous[self.settings.teacher_model]
        return super().initial(phase, connected, previous)

    def state(self) -> dict[str, ArrayRecord]:
        """The final teacher, once phase 1 has ended: a run resumed in phase 2 sends it on."""
        return {} if self.final_teacher is None else {FINAL_TEACHER: self.final_teacher}

    def restore(self, state: dict[str, ArrayRecord]) -> None:
        """Take back the final teacher."""
        self.final_teacher = state.get(FINAL_TEACHER)

    def private_epochs(self) -> int:
        """Phase 1's training and the teacher's fine-tuning; phase 2's distillation unless the server distills."""
        s = self.settings
        student = 0 if s.ensemble_teacher else self.cfg.num_student_rounds * self.cfg.local_epochs
        return s.num_teacher_rounds * self.cfg.local_epochs + s.teacher_finetune_epochs + student

    def teacher_model(self) -> str | None:
        """The teacher's architecture."""
        return self.settings.teacher_model

    def _teacher_settings(self) -> dict:
        """What a node needs to hold its local teacher."""
        return {TEACHER_MODEL: self.settings.teacher_model, FINETUNE_EPOCHS: self.settings.teacher_finetune_epochs}

    def train_config(self, r: RoundInput) -> dict:
        """Phase 2: the teacher and the distillation loss's settings."""
        if r.phase.teacher:
            return {}
        return {**self._teacher_settings(), TEMPERATURE: self.settings.temperature, ALPHA: self.settings.alpha}

    def train_records(self, node: int, r: RoundInput) -> dict[str, ArrayRecord]:
        """Phase 2: the final teacher, to a node that may not hold it."""
        if r.phase.teacher or node in self.holds_teacher:
            return {}
        return {TEACHER: self.final_teacher}

    def _track_teacher(self, sampled: list[int], answered: set[int]) -> None:
        self.holds_teacher = (self.holds_teacher | answered) - (set(sampled) - answered)

    def round(self, r: RoundInput) -> RoundSteps:
        """Teacher: grouped FedAvg. Student: local distillation (`train.distill`), or the ensemble-teacher round."""
        if r.phase.teacher:
            result, _ = yield from self.train_and_average(r)
            return result
        if self.settings.ensemble_teacher:
            return (yield from self._ensemble_round(r))
        result, replies = yield from self.train_and_average(r)
        self._track_teacher(r.sampled, {reply.node for reply in replies})
        return result

    def _ensemble_round(self, r: RoundInput) -> RoundSteps:
        """Sampled nodes send their local teacher's logits on public data; the server distills every student."""
        s = self.settings
        public = load_public(self.cfg, self.task)
        phase_index = self.phases().index(r.phase)
        indices = public_subset(s.public_samples_per_round, len(public), self.cfg.seed, phase_index, r.server_round)
        config = {
            SOURCE: SOURCE_TEACHER,
            SPLIT: PUBLIC,
            INDICES: indices,
            SERVER_ROUND: r.server_round,
            **self._teacher_settings(),
            LOGITS_DTYPE: s.logits_dtype,
        }
        messages = logits_queries(r.sampled, config, {n: self.train_records(n, r) for n in r.sampled})
        check = logits_check(len(indices), self.task.num_classes, self.cfg.max_num_examples, s.logits_dtype)
        replies = yield Ask(messages, [check] * len(messages))
        self._track_teacher(r.sampled, {reply.node for reply in replies})
        result = RoundResult(dict(r.globals), scores_previous=False)
        if not replies:
            return result
        ensemble = consensus([logits_from_record(reply.content[LOGITS]) for reply in replies])
        x, y = public.x[indices], public.y[indices]
        cut = validation_cut(len(x))
        seed = derive_seed(self.cfg.seed, Stream.ENSEMBLE_BATCHES, r.server_round)
        result.globals, result.metrics = distill_groups(
            r.globals,
            self.task,
            s,
            lambda name: random_batches(x[cut:], ensemble[cut:], self.cfg.batch_size, seed),
            public_validation(x[:cut], y[:cut], ensemble[:cut], not self.cfg.public_dataset, s.temperature),
        )
        return result
