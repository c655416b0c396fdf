"""Generate docs/configuration.md from RunConfig: `python -m common.config_docs`."""

import json
import re
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic.fields import FieldInfo

from common.config import RunConfig

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
COMMAND = "python -m common.config_docs"

INTRO = f"""\
# Run configuration

<!-- Generated from common/config.py by `{COMMAND}`; edit the field descriptions there, not this page. -->

Every key of the run config, in the order of `RunConfig` in `common/config.py`, which defines its
type, range, default and meaning. Set keys with `--run-config`, strings in quotes (the values are
TOML), e.g.

```bash
flwr run . --stream --run-config "strategy='feddf' num-student-rounds=10 alpha=0.7"
```

The defaults below are the model's; `[tool.flwr.app.config]` in `pyproject.toml` holds the same
values (a test keeps them equal), and a key left out of `--run-config` takes that default. The whole
config is validated before round 1: a wrong type, a value out of range or an unknown key stops the
run with a message that names the key, the value and what is allowed, e.g.
`run config 'alpha' = 1.5: Input should be less than or equal to 1`. Integer keys take no decimal
point (`local-epochs=2.0` is refused); number keys take integers too.
"""


def toml_value(value: Any) -> str:
    """A Python value written as in TOML (and so as in `--run-config`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


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


def _cell(text: str) -> str:
    # Outside code spans a "<" before a word would start an HTML tag (e.g. mlp-<width>); "|" would end the cell.
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"<(?=\S)", r"\\<", parts[i])
    return "`".join(parts).replace("|", "\\|")


def render() -> str:
    """The whole page, as `docs/configuration.md` must read."""
    rows = ["| key | default | allowed values | meaning |", "|---|---|---|---|"]
    for name, field in RunConfig.model_fields.items():
        key, default = f"`{field.alias or name}`", f"`{toml_value(field.default)}`"
        cells = (key, default, allowed_values(field), field.description or "")
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return INTRO + "\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the page (or, with --check, exit 1 if it is stale)."""
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        fresh = DOC_PATH.exists() and DOC_PATH.read_text(encoding="utf-8") == text
        print(f"{DOC_PATH} is {'up to date' if fresh else f'stale; run `{COMMAND}`'}")
        return 0 if fresh else 1
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    DOC_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
