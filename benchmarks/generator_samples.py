"""What each architecture learns from feddf-datafree's generated samples.

Teachers of the three benchmark architectures are trained on mnist5k's pooled training data; a generator
is fitted to their ensemble as feddf-datafree fits it (common/generator.py), and freshly initialised
students are distilled on its samples for a fixed number of steps, then scored on the server's test set.
Variants change the generator's objective or the distillation batches, to see what a CNN needs:

    python -m benchmarks.generator_samples            # writes results/generator_samples.{json,md}
"""

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.provenance import provenance, provenance_line
from common.config import parse_run_config
from common.data import dataset_shape, image_shape, load_client_data, load_server_testset
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
DISTILL_STEPS = 1000
TV_WEIGHT = 1.0
MAX_SHIFT = 3
VARIANTS = {
    "fedkd": "as in fedkd",
    "tv-prior": f"plus a total-variation prior (weight {TV_WEIGHT:g}) on the images",
    "cnn-teacher": "generator fitted to the CNN teacher alone",
    "mixup": "mixup of generated samples, the ensemble relabelling them",
    "shift": f"random shifts of up to {MAX_SHIFT} pixels, the ensemble relabelling them",
}


def total_variation(x: torch.Tensor, side: int) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels of flat square images."""
    img = x.view(len(x), side, side)
    return (img[:, 1:] - img[:, :-1]).abs().mean() + (img[:, :, 1:] - img[:, :, :-1]).abs().mean()


def shifted(x: torch.Tensor, side: int, max_shift: int, rng: torch.Generator) -> torch.Tensor:
    """Each flat square image moved by its own random offset of up to `max_shift` pixels, zeros coming in."""
    padded = torch.nn.functional.pad(x.view(len(x), side, side), (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(x), 2), generator=rng).tolist()
    return torch.stack([padded[i, a:a + side, b:b + side] for i, (a, b) in enumerate(offsets)]).flatten(1)


def mixed(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Each input blended with another of the batch, by a uniform weight."""
    weight = torch.rand(len(x), 1, generator=rng)
    return weight * x + (1 - weight) * x[torch.randperm(len(x), generator=rng)]


def fitted_generator(variant: str, teachers: list[torch.nn.Module], seed: int, side: int) -> Generator:
    """A generator trained GENERATOR_STEPS steps against `teachers` (the CNN alone for 'cnn-teacher')."""
    features, classes = dataset_shape(DATASET)
    torch.manual_seed(seed)
    gen = Generator(features, classes, image_shape(DATASET))
    if variant != "tv-prior":
        guides = teachers[:1] if variant == "cnn-teacher" else teachers
        train_generator(gen, guides, steps=GENERATOR_STEPS, batch_size=32, learning_rate=1e-3, seed=seed)
        return gen
    for t in teachers:
        t.requires_grad_(False).eval()
    optimizer, rng = Adam(gen.parameters(), lr=1e-3), torch.Generator().manual_seed(seed)
    for _ in range(GENERATOR_STEPS):
        noise, labels = draw(range(classes), 32, rng)
        loss = generator_loss(gen, teachers, noise, labels) + TV_WEIGHT * total_variation(gen(noise, labels), side)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return gen


def batches(variant: str, gen: Generator, teachers: list[torch.nn.Module], seed: int, side: int) -> Callable:
    """The distillation batches of `variant`: generated inputs, mixed or shifted for those variants, and the
    ensemble's soft targets (temperature 3) on what the student sees."""
    plain, rng = generated_batches(gen, teachers, 32, 3.0, seed), torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, targets = plain(step)
        if variant == "mixup":
            x = mixed(x, rng)
        elif variant == "shift":
            x = shifted(x, side, MAX_SHIFT, rng)
        else:
            return x, targets
        return x, ensemble_soft_targets(teachers, x, 3.0)

    return batch


def measure(seed: int, teacher_epochs: int) -> dict:
    """Teachers' and ensemble's test accuracy, then each variant's students'."""
    cfg = parse_run_config({"dataset": DATASET, "seed": seed, "partitioner": "iid"})
    side = image_shape(DATASET)[1]
    parts = [load_client_data(cfg, p, PARTITIONS).train for p in range(PARTITIONS)]
    x, y = torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts])
    test = load_server_testset(cfg)

    def accuracy(model: torch.nn.Module) -> float:
        return round(evaluate(model, test.x, test.y)[1] / len(test), 3)

    teachers = []
    for name in TEACHERS:
        model = initial_model(name, DATASET, seed)
        train(model, x, (y,), epochs=teacher_epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, seed=seed)
        teachers.append(model.eval())
    with torch.no_grad():
        ensemble = (ensemble_soft_targets(teachers, test.x, 1.0).argmax(1) == test.y).float().mean().item()
    out = {"teachers": {n: accuracy(t) for n, t in zip(TEACHERS, teachers)}, "ensemble": round(ensemble, 3), "variants": {}}
    for variant in VARIANTS:
        gen = fitted_generator(variant, teachers, seed, side)
        students = {}
        for name in STUDENTS:
            student = initial_model(name, DATASET, seed + 1)
            optimizer, draw_batch = Adam(student.parameters(), lr=1e-3), batches(variant, gen, teachers, seed, side)
            for step in range(DISTILL_STEPS):
                inputs, targets = draw_batch(step)
                optimizer.zero_grad()
                soft_loss(student(inputs), targets, 3.0).backward()
                optimizer.step()
            students[name] = accuracy(student)
        out["variants"][variant] = students
        print(variant, students, flush=True)
    return out


def report(result: dict, info: dict) -> str:
    """The results page: one row per variant, fresh students' test accuracy."""
    teachers = ", ".join(f"`{n}` {a:.3f}" for n, a in result["teachers"].items())
    lines = [f"# What a student learns from feddf-datafree's generated samples ({DATASET})", "",
             f"Teachers trained on the pooled training data: {teachers}; their ensemble {result['ensemble']:.3f}. "
             f"Generator: {GENERATOR_STEPS} steps; students freshly initialised, {DISTILL_STEPS} distillation "
             "steps; accuracy on the server's test set.", "",
             "| generator, distillation | " + " | ".join(f"fresh `{s}`" for s in STUDENTS) + " |",
             "|---" * (1 + len(STUDENTS)) + "|"]
    for variant, label in VARIANTS.items():
        lines.append(f"| {label} | " + " | ".join(f"{result['variants'][variant][s]:.3f}" for s in STUDENTS) + " |")
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
    (args.results / "generator_samples.json").write_text(json.dumps({"seed": args.seed, **result, "provenance": info}, indent=2))
    page = report(result, info)
    (args.results / "generator_samples.md").write_text(page + "\n")
    print(page)


if __name__ == "__main__":
    main()
