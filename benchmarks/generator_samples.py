"""What each architecture learns from feddf-datafree's generated samples.

Teachers of the three benchmark architectures are trained on mnist5k's pooled training data; a generator
is fitted to their ensemble as feddf-datafree fits it (common/generator.py), and freshly initialised
students are distilled on its samples for a fixed number of steps, then scored on the server's test set.
Variants change the generator, its objective or the distillation batches, to see what a CNN needs; two
more tables give the CNN student normalisation layers, and start it from CNNs that learned features from
real data (all classes, or a few) instead of from scratch:

    python -m benchmarks.generator_samples            # writes results/generator_samples.{json,md}
"""

import argparse
import copy
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from benchmarks.provenance import provenance, provenance_line
from common.config import parse_run_config
from common.data import builtin_task, load_client_data, load_server_testset
from common.distill import ensemble_soft_targets
from common.feature_generator import draw
from common.generator import Generator, generated_batches, generator_loss, train_generator
from common.loss import soft_loss
from common.models import initial_model
from common.training import Adam, evaluate, train

RESULTS = Path(__file__).parent / "results"
DATASET = "mnist5k"
TEACHERS = ("cnn", "mlp-128x64", "mlp-32")
STUDENTS = ("cnn", "mlp-32")
PARTITIONS = 10
# Three rounds of feddf-datafree's default `datafree-steps` (300): the generator persists across rounds.
GENERATOR_STEPS = 900
# feddf-datafree's default `diversity`, the weight of the generator's diversity loss.
DIVERSITY = 1.0
DISTILL_STEPS = 1000
TV_WEIGHT = 1.0
# DAFL's (Chen et al. 2019) weight of its activation term, the teachers' penultimate features made large.
ACTIVATION_WEIGHT = 0.1
MAX_SHIFT = 3
VARIANTS = {
    "fedkd": "as in fedkd",
    "tv-prior": f"plus a total-variation prior (weight {TV_WEIGHT:g}) on the images",
    "activation": f"plus DAFL's activation term (weight {ACTIVATION_WEIGHT:g}) on the teachers' penultimate features",
    "generator-bn": "batch norm in the generator after each upsampling stage, as DAFL's generator has",
    "cnn-teacher": "generator fitted to the CNN teacher alone",
    "joint": "the generator trained on during distillation, a step per batch (DAFL's alternation)",
    "mixup": "mixup of generated samples, the ensemble relabelling them",
    "shift": f"random shifts of up to {MAX_SHIFT} pixels, the ensemble relabelling them",
}
# Layers put after each convolution of a fresh `cnn` student; its weights are the plain one's.
NORMS = {
    "none": "none (fedkd's `cnn`)",
    "batch": "batch norm",
    "group": "group norm, 4 groups",
    "layer": "layer norm (group norm, 1 group)",
    "instance": "instance norm (group norm, a group a channel)",
}
NORM_SEEDS = 3
# Students that start from a CNN trained on real data: the classes of a few-class client at Dirichlet 0.1.
FEW_CLASSES = ((0, 1), (2, 3, 4), (5,))
FEW_CLASS_EPOCHS = 2
# feddf-datafree's default `datafree-steps`: one server step.
SERVER_STEPS = 300


def total_variation(x: torch.Tensor, side: int) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels of flat square images."""
    img = x.view(len(x), side, side)
    return (img[:, 1:] - img[:, :-1]).abs().mean() + (img[:, :, 1:] - img[:, :, :-1]).abs().mean()


def shifted(x: torch.Tensor, side: int, max_shift: int, rng: torch.Generator) -> torch.Tensor:
    """Each flat square image moved by its own random offset of up to `max_shift` pixels, zeros coming in."""
    padded = torch.nn.functional.pad(x.view(len(x), side, side), (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(x), 2), generator=rng).tolist()
    return torch.stack([padded[i, a : a + side, b : b + side] for i, (a, b) in enumerate(offsets)]).flatten(1)


def mixed(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Each input blended with another of the batch, by a uniform weight."""
    weight = torch.rand(len(x), 1, generator=rng)
    return weight * x + (1 - weight) * x[torch.randperm(len(x), generator=rng)]


def activation(x: torch.Tensor, teachers: list[torch.nn.Module]) -> torch.Tensor:
    """DAFL's activation term: minus the mean absolute penultimate feature of `x`, averaged over the teachers."""
    return -torch.stack([t[:-1](x).abs().mean() for t in teachers]).mean()


def with_batch_norm(gen: Generator) -> Generator:
    """`gen` with batch norm before the ReLU of its quarter-size and half-size maps, as DAFL's generator has."""
    linear, relu, unflatten, up, relu2, out, sigmoid, flatten = gen.net
    wide, narrow = up.in_channels, up.out_channels
    gen.net = nn.Sequential(
        linear, unflatten, nn.BatchNorm2d(wide), relu, up, nn.BatchNorm2d(narrow), relu2, out, sigmoid, flatten
    )
    return gen


def with_norms(model: nn.Sequential, norm: str) -> nn.Sequential:
    """`model` with a normalisation layer of kind `norm` (NORMS) after each convolution."""
    make = {
        "none": None,
        "batch": nn.BatchNorm2d,
        "group": lambda c: nn.GroupNorm(4, c),
        "layer": lambda c: nn.GroupNorm(1, c),
        "instance": lambda c: nn.GroupNorm(c, c),
    }[norm]
    layers = []
    for layer in model:
        layers.append(layer)
        if make and isinstance(layer, nn.Conv2d):
            layers.append(make(layer.out_channels))
    return nn.Sequential(*layers)


def generator_step(
    gen: Generator,
    teachers: list[torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    rng: torch.Generator,
    extra: Callable[[torch.Tensor], torch.Tensor] | None,
) -> None:
    """One Adam step on fedkd's generator objective, plus `extra` of the generated batch if given."""
    noise, labels = draw(range(gen.num_classes), 32, rng)
    loss = generator_loss(gen, teachers, noise, labels, diversity=DIVERSITY)
    if extra:
        loss = loss + extra(gen(noise, labels))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def fitted_generator(variant: str, teachers: list[torch.nn.Module], seed: int, side: int) -> Generator:
    """A generator trained GENERATOR_STEPS steps against `teachers` (the CNN alone for 'cnn-teacher')."""
    features, classes = builtin_task(DATASET).features, builtin_task(DATASET).num_classes
    torch.manual_seed(seed)
    gen = Generator(features, classes, builtin_task(DATASET).input_shape)
    extra = {
        "tv-prior": lambda x: TV_WEIGHT * total_variation(x, side),
        "activation": lambda x: ACTIVATION_WEIGHT * activation(x, teachers),
    }.get(variant)
    if extra is None:
        guides = teachers[:1] if variant == "cnn-teacher" else teachers
        gen = with_batch_norm(gen) if variant == "generator-bn" else gen
        train_generator(
            gen, guides, steps=GENERATOR_STEPS, batch_size=32, learning_rate=1e-3, diversity=DIVERSITY, seed=seed
        )
        return gen
    for t in teachers:
        t.requires_grad_(False).eval()
    optimizer, rng = Adam(gen.parameters(), lr=1e-3), torch.Generator().manual_seed(seed)
    for _ in range(GENERATOR_STEPS):
        generator_step(gen, teachers, optimizer, rng, extra)
    return gen


def batches(variant: str, gen: Generator, teachers: list[torch.nn.Module], seed: int, side: int) -> Callable:
    """The distillation batches of `variant`: generated inputs, mixed or shifted for those variants, and the
    ensemble's soft targets (temperature 3) on what the student sees; for 'joint', a copy of the generator
    takes a training step before each batch."""
    if variant == "joint":
        gen = copy.deepcopy(gen)
        for t in teachers:
            t.requires_grad_(False)
        optimizer, joint_rng = Adam(gen.parameters(), lr=1e-3), torch.Generator().manual_seed(seed + 1)
    plain, rng = generated_batches(gen, teachers, 32, 3.0, seed), torch.Generator().manual_seed(seed)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if variant == "joint":
            generator_step(gen, teachers, optimizer, joint_rng, None)
        return relabelled(step)

    @torch.no_grad()
    def relabelled(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, targets = plain(step)
        if variant == "mixup":
            x = mixed(x, rng)
        elif variant == "shift":
            x = shifted(x, side, MAX_SHIFT, rng)
        else:
            return x, targets
        return x, ensemble_soft_targets(teachers, x, 3.0)

    return batch


def distill(student: nn.Module, draw_batch: Callable, steps: int, head_only: bool = False) -> nn.Module:
    """`student` after `steps` Adam steps toward the batches' soft targets (temperature 3); with `head_only`,
    only its last layer moves."""
    optimizer = Adam((student[-1] if head_only else student).parameters(), lr=1e-3)
    student.train()
    for step in range(steps):
        inputs, targets = draw_batch(step)
        optimizer.zero_grad()
        soft_loss(student(inputs), targets, 3.0).backward()
        optimizer.step()
    return student.eval()


def measure(seed: int, teacher_epochs: int) -> dict:
    """Teachers' and ensemble's test accuracy, then each variant's students', each normalised CNN's, and what
    one server step does for CNNs that start from real data."""
    cfg = parse_run_config({"dataset": DATASET, "seed": seed, "partitioner": "iid"})
    side = builtin_task(DATASET).input_shape[1]
    parts = [load_client_data(cfg, p, PARTITIONS).train for p in range(PARTITIONS)]
    x, y = torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts])
    test = load_server_testset(cfg)

    def accuracy(model: torch.nn.Module) -> float:
        return round(evaluate(model, test.x, test.y)[1] / len(test), 3)

    def trained(model: nn.Module, mask: torch.Tensor, epochs: int) -> nn.Module:
        train(
            model,
            x[mask],
            (y[mask],),
            epochs=epochs,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            seed=seed,
        )
        return model.eval()

    everything = torch.ones(len(y), dtype=torch.bool)
    teachers = [trained(initial_model(name, DATASET, seed), everything, teacher_epochs) for name in TEACHERS]
    with torch.no_grad():
        ensemble = (ensemble_soft_targets(teachers, test.x, 1.0).argmax(1) == test.y).float().mean().item()
    out = {
        "teachers": {n: accuracy(t) for n, t in zip(TEACHERS, teachers)},
        "ensemble": round(ensemble, 3),
        "variants": {},
        "norms": {},
        "starts": {},
    }
    generators = {variant: fitted_generator(variant, teachers, seed, side) for variant in VARIANTS}
    for variant, gen in generators.items():
        out["variants"][variant] = {
            name: accuracy(
                distill(
                    initial_model(name, DATASET, seed + 1), batches(variant, gen, teachers, seed, side), DISTILL_STEPS
                )
            )
            for name in STUDENTS
        }
        print(variant, out["variants"][variant], flush=True)
    # fedkd's own generator, which sampling leaves as it was, for the normalised and the real-data students.
    gen = generators["fedkd"]
    for norm in NORMS:
        cnns = [
            lambda s=s, norm=norm: with_norms(initial_model("cnn", DATASET, seed + 1 + s), norm)
            for s in range(NORM_SEEDS)
        ]
        out["norms"][norm] = {
            "distilled": [
                accuracy(distill(make(), batches("fedkd", gen, teachers, seed, side), DISTILL_STEPS)) for make in cnns
            ],
            "real": [accuracy(trained(make(), everything, 1)) for make in cnns],
        }
        print(norm, out["norms"][norm], flush=True)
    for classes in FEW_CLASSES:
        mask = torch.isin(y, torch.tensor(classes))
        for start, model in (
            ("all, then few", copy.deepcopy(teachers[0])),
            ("few only", initial_model("cnn", DATASET, seed + 1)),
        ):
            model = trained(model.requires_grad_(True), mask, FEW_CLASS_EPOCHS)
            out["starts"][f"{start} {classes}"] = {
                "start": accuracy(model),
                **{
                    step: accuracy(
                        distill(
                            copy.deepcopy(model),
                            batches("fedkd", gen, teachers, seed, side),
                            SERVER_STEPS,
                            step == "head",
                        )
                    )
                    for step in ("full", "head")
                },
            }
            print(start, classes, out["starts"][f"{start} {classes}"], flush=True)
    return out


def report(result: dict, info: dict) -> str:
    """The results page: one table each for the variants, the normalised CNNs and the starting points."""
    teachers = ", ".join(f"`{n}` {a:.3f}" for n, a in result["teachers"].items())
    lines = [
        f"# What a student learns from feddf-datafree's generated samples ({DATASET})",
        "",
        f"Teachers trained on the pooled training data: {teachers}; their ensemble {result['ensemble']:.3f}. "
        f"Generator: {GENERATOR_STEPS} steps; students freshly initialised, {DISTILL_STEPS} distillation "
        "steps; accuracy on the server's test set.",
        "",
        "| generator, distillation | " + " | ".join(f"fresh `{s}`" for s in STUDENTS) + " |",
        "|---" * (1 + len(STUDENTS)) + "|",
    ]
    for variant, label in VARIANTS.items():
        lines.append(f"| {label} | " + " | ".join(f"{result['variants'][variant][s]:.3f}" for s in STUDENTS) + " |")
    lines += [
        "",
        f"A fresh `cnn` with normalisation layers after each convolution (its other weights the plain one's; "
        f"{NORM_SEEDS} initialisations, mean and range), distilled as in fedkd, and for comparison trained one "
        "epoch on the pooled data:",
        "",
        "| normalisation | distilled on generated samples | trained on the pooled data |",
        "|---|---|---|",
    ]
    for norm, label in NORMS.items():
        cells = [result["norms"][norm][k] for k in ("distilled", "real")]
        lines.append(
            f"| {label} | " + " | ".join(f"{statistics.fmean(c):.3f} ({min(c):.3f}-{max(c):.3f})" for c in cells) + " |"
        )
    lines += [
        "",
        f"One server step ({SERVER_STEPS} distillation steps, as in fedkd) for a `cnn` that learned from real "
        f"data: the CNN teacher then {FEW_CLASS_EPOCHS} epochs on a few classes (features from every class, its "
        f"predictions collapsed), or a fresh CNN trained {FEW_CLASS_EPOCHS} epochs on those classes only; every "
        "weight distilled, or the last layer only:",
        "",
        "| start | its accuracy | all layers distilled | last layer only |",
        "|---|---|---|---|",
    ]
    for start, row in result["starts"].items():
        lines.append(f"| {start} | {row['start']:.3f} | {row['full']:.3f} | {row['head']:.3f} |")
    return "\n".join([*lines, "", provenance_line(info)])


def main() -> None:
    """Measure and write results/generator_samples.{json,md}."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--teacher-epochs", type=int, default=1, help="epochs of each teacher over the pooled data")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    info, result = provenance(), measure(args.seed, args.teacher_epochs)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "generator_samples.json").write_text(
        json.dumps({"seed": args.seed, **result, "provenance": info}, indent=2)
    )
    page = report(result, info)
    (args.results / "generator_samples.md").write_text(page + "\n")
    print(page)


if __name__ == "__main__":
    main()
