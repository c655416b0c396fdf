"""Generate the reference pages that come from code: docs/reference/node-config.md from common/node_config.py, and
docs/reference/commands.md from every command's argument parser. `python -m server_app.reference_docs`."""

import argparse
import importlib
import sys
from pathlib import Path

from common.node_config import KEYS
from server_app.config_docs import cell, write_pages

DOCS = Path(__file__).resolve().parents[1] / "docs"
COMMAND = "python -m server_app.reference_docs"
# Every `python -m` command of the product, in the order a user meets them.
MODULES = (
    "common.data",
    "deploy.certs",
    "deploy.local",
    "deploy.proxy",
    "deploy.compose_init",
    "server_app.outputs",
    "server_app.config_docs",
    "server_app.reference_docs",
)
USAGE_WIDTH = 100  # fixed, so that the page does not depend on the terminal that generates it


def _generated(sources: str) -> str:
    return f"<!-- Generated from {sources} by `{COMMAND}`; edit it there, not this page. -->\n\n"


def node_config_page() -> str:
    """docs/reference/node-config.md."""
    rows = ["| key | allowed values | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{k.key}` | {cell(k.allowed)} | {cell(k.default)} | {cell(k.meaning)} |" for k in KEYS]
    return (
        "# Node config\n\n"
        + _generated("common/node_config.py")
        + "A SuperNode's own settings, as opposed to the run config every node of a run shares. A deployed SuperNode "
        "sets them with `--node-config`, values in TOML, strings in double quotes:\n\n"
        "```bash\n"
        'flower-supernode ... --node-config \'name="hospital-a" data-path="/data/part-0.npz" '
        'state-dir="/var/lib/fedkd" num-threads=4\'\n'
        "```\n\n"
        "In simulation Flower sets `partition-id` and `num-partitions` for every node, and run config `models` "
        "stands in for `model`. A key with a value that is not allowed makes the node answer with an error that "
        "names the key, the value and what is allowed; the run goes on without it.\n\n" + "\n".join(rows) + "\n"
    )


def parser_of(module: str) -> argparse.ArgumentParser:
    """The argument parser of `python -m <module>`, from the module's `parser()`."""
    return importlib.import_module(module).parser()


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _default(action: argparse.Action) -> str:
    if action.required or isinstance(action, (argparse._StoreTrueAction, argparse._HelpAction)):
        return "required" if action.required else ""
    if action.default in (None, "", argparse.SUPPRESS):
        return ""
    return f"`{action.default}`"


def _options(parser: argparse.ArgumentParser) -> str:
    rows = ["| argument | default | meaning |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
            continue
        name = ", ".join(action.option_strings) or (action.metavar or action.dest)
        if action.option_strings and action.nargs != 0:
            name += f" {action.metavar or action.dest.upper()}"
        rows.append(f"| `{name}` | {_default(action)} | {cell(action.help or '')} |")
    return "\n".join(rows) + "\n" if len(rows) > 2 else ""


def _description(parser: argparse.ArgumentParser) -> str:
    # Module docstrings indent their examples by four spaces, which Markdown shows as code; in the prose around
    # them "<" is escaped as in a table cell.
    text = (parser.description or "").strip("\n")
    lines = [line if line.startswith("    ") else cell(line).replace("\\|", "|") for line in text.splitlines()]
    return "\n".join(lines) + "\n\n" if text else ""


def _command(parser: argparse.ArgumentParser, heading: str) -> str:
    parts = [f"{heading}\n\n", _description(parser), f"```text\n{_usage(parser)}\n```\n\n", _options(parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                parts.append("\n" + _command(sub, f"### {parser.prog.split()[-1]} {name}"))
    return "".join(parts)


def commands_page() -> str:
    """docs/reference/commands.md."""
    sections = [_command(parser_of(module), f"## {module}") for module in MODULES]
    return (
        "# Commands\n\n"
        + _generated("each command's argument parser (its module's `parser()`)")
        + "fedkd's own command-line tools, run from the project with its environment active. Flower's (`flwr`, "
        "`flower-superlink`, `flower-supernode`, `flower-superexec`) are in "
        "[Flower's reference](https://flower.ai/docs/framework/ref-api-cli.html).\n\n" + "\n".join(sections)
    )


PAGES = {DOCS / "reference" / "node-config.md": node_config_page, DOCS / "reference" / "commands.md": commands_page}


def parser() -> argparse.ArgumentParser:
    """The command line of `python -m server_app.reference_docs`."""
    parser = argparse.ArgumentParser(prog=COMMAND, description="Write the reference pages generated from code.")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed page is stale")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Write the pages (or, with --check, exit 1 if one is stale)."""
    return write_pages(PAGES, COMMAND, parser().parse_args(argv).check)


if __name__ == "__main__":
    sys.exit(main())
