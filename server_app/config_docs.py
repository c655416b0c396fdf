"""Generate docs/configuration.md from RunConfig and every strategy's settings: `python -m server_app.config_docs`."""

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic.fields import FieldInfo

from common.config import RunConfig, Settings, toml_value
from server_app.strategies import STRATEGIES

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
COMMAND = "python -m server_app.config_docs"

INTRO = f"""\
# Run configuration

<!-- Generated from common/config.py and server_app/strategies/ by `{COMMAND}`;
edit the field descriptions there, not this page. -->

A run config has the keys every run shares (`RunConfig` in `common/config.py`: the task and its data, sampling,
deadlines, local training, privacy, outputs) and, in a table named after each strategy, that strategy's own
settings (its `Settings` in `server_app/strategies/<name>.py`). On the command line a table's key is written with
its table's name, `fedprox.proximal-mu=0.1`; in `pyproject.toml` it sits under `[tool.flwr.app.config.fedprox]`.
Set keys with `--run-config`, strings in quotes (the values are TOML), e.g.

```bash
flwr run . --stream \\
  --federation-config "num-supernodes=10 client-resources-num-cpus=1 init-args-num-cpus=5" \\
  --run-config "strategy='feddf' num-student-rounds=10 feddf.temperature=2.0"
```

The defaults below are the models'; `pyproject.toml` holds the same values (a test keeps them equal), and a key
left out of `--run-config` takes that default. The whole config is validated before round 1: a wrong type, a
value out of range or an unknown key stops the run with a message that names the key, the value and what is
allowed, e.g. `run config 'two-stage.alpha' = 1.5: Input should be less than or equal to 1`. A strategy's setting
written as a common key, or changed in another strategy's table than the run's, is refused, naming the key it
should be. Integer keys take no decimal point (`local-epochs=2.0` is refused); number keys take integers too.

Every node reads the common keys from its copy of the run config; a strategy's settings reach a node only in the
messages that need them (`common/protocol.py`).

"""


def _bounds(metadata: list[Any]) -> str:
    # Interval notation when both ends are bounded, as the README and error messages read best that way.
    lower = next(((m.gt, "(") for m in metadata if isinstance(m, Gt)), None) or next(
        ((m.ge, "[") for m in metadata if isinstance(m, Ge)), None
    )
    upper = next(((m.lt, ")") for m in metadata if isinstance(m, Lt)), None) or next(
        ((m.le, "]") for m in metadata if isinstance(m, Le)), None
    )
    if lower and upper:
        return f"in {lower[1]}{str(lower[0])}, {str(upper[0])}{upper[1]}"
    if lower:
        return f"{'>' if lower[1] == '(' else '≥'} {str(lower[0])}"
    if upper:
        return f"{'<' if upper[1] == ')' else '≤'} {str(upper[0])}"
    return ""


def allowed_values(field: FieldInfo) -> str:
    """What a key accepts: from its type and bounds, plus the field's `allowed` note for custom checks."""
    annotation, base = field.annotation, ""
    if get_origin(annotation) is Literal:
        base = ", ".join(f"`{toml_value(v)}`" for v in get_args(annotation))
    elif annotation is bool:
        base = "`true`, `false`"
    elif annotation in (int, float):
        base = " ".join(p for p in ("integer" if annotation is int else "number", _bounds(field.metadata)) if p)
    extra = field.json_schema_extra.get("allowed", "") if isinstance(field.json_schema_extra, dict) else ""
    return ", ".join(p for p in (base, extra) if p) or "any string"


def cell(text: str) -> str:
    """`text` for a Markdown table cell."""
    # Outside code spans a "<" before a word would start an HTML tag (e.g. mlp-<width>); "|" would end the cell.
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"<(?=\S)", r"\\<", parts[i])
    return "`".join(parts).replace("|", "\\|")


def table(model: type[Settings], prefix: str = "") -> str:
    """A Markdown table of `model`'s keys (each written with `prefix`), in field order."""
    rows = ["| key | default | allowed values | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        key, default = f"`{prefix}{field.alias or name}`", f"`{toml_value(field.default)}`"
        cells = (key, default, allowed_values(field), field.description or "")
        rows.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


def render() -> str:
    """The whole page, as `docs/configuration.md` must read."""
    parts = [INTRO, "## Common keys\n\n", table(RunConfig)]
    for name, cls in STRATEGIES.items():
        parts.append(f"\n## `{name}`\n\n{(cls.Settings.__doc__ or '').strip()}\n\n")
        parts.append(table(cls.Settings, f"{name}.") if cls.Settings.model_fields else "No settings of its own.\n")
    return "".join(parts)


def parser() -> argparse.ArgumentParser:
    """The command line of `python -m server_app.config_docs`."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=f"Write {DOC_PATH.name} from the run config's models.")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the committed page is stale")
    return parser


def write_pages(pages: dict[Path, Callable[[], str]], command: str, check: bool) -> int:
    """Write each generated page (or, with `check`, write nothing and say which is stale); 1 if one was stale."""
    stale = []
    for path, render_page in pages.items():
        text = render_page()
        if check:
            fresh = path.exists() and path.read_text(encoding="utf-8") == text
            print(f"{path} is {'up to date' if fresh else f'stale; run `{command}`'}")
            stale += [] if fresh else [path]
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 1 if stale else 0


def main(argv: list[str] | None = None) -> int:
    """Write the page (or, with --check, exit 1 if it is stale)."""
    return write_pages({DOC_PATH: render}, COMMAND, parser().parse_args(argv).check)


if __name__ == "__main__":
    sys.exit(main())
