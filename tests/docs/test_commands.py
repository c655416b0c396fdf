"""The commands README.md and docs/ give, checked against the code so that they cannot drift: every `python -m`
module of the project exists and accepts each flag given, every `--run-config` is a run config the ServerApp accepts
(keys Flower knows from pyproject.toml, values the settings models take), and every `--federation-config` key is one
of Flower's simulation settings."""

import argparse
import importlib
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from flwr.common.config import flatten_dict, parse_config_args
from flwr.supercore.utils import simulation_config_from_json

from server_app.settings import parse

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PACKAGES = {"common", "server_app", "client_app", "deploy", "benchmarks"}
APP_CONFIG = flatten_dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])


def _fenced(text: str) -> Iterator[str]:
    """The commands of a page's ```bash blocks, continuation lines joined."""
    for block in re.findall(r"^ *```(?:bash|sh|console)\n(.*?)^ *```", text, flags=re.DOTALL | re.MULTILINE):
        yield from block.replace("\\\n", " ").splitlines()


def _inline(text: str) -> Iterator[str]:
    """Code spans that hold a command (`python -m ...`, `flwr run ...`), wrapped lines joined."""
    without_blocks = re.sub(r"^ *```.*?^ *```", "", text, flags=re.DOTALL | re.MULTILINE)
    for span in re.findall(r"`([^`]+)`", without_blocks):
        if re.search(r"\bpython3? -m |\bflwr run ", span):
            yield span.replace("\n", " ")


def commands() -> list[tuple[str, list[str]]]:
    """(where, tokens) of each simple command in README.md and docs/, split at `&&`, `;` and `|`."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for line in [*_fenced(text), *_inline(text)]:
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:  # an unbalanced quote: a fragment of prose, not a command
                continue
            command: list[str] = []
            for token in [*tokens, "&&"]:
                if token in ("&&", ";", "|", "||"):
                    if command:
                        found.append((f"{page.relative_to(ROOT)}: {line.strip()}", command))
                    command = []
                else:
                    command.append(token)
    return found


def _after(tokens: list[str], *head: str) -> list[str] | None:
    """The arguments after `head` (e.g. `python -m`), skipping environment assignments and `do`/`then`; None if
    the command is not one."""
    for i in range(len(tokens) - len(head) + 1):
        if tokens[i : i + len(head)] == list(head):
            if all(re.match(r"[A-Z_]+=|do$|then$|time$", t) for t in tokens[:i]):
                return tokens[i + len(head) :]
    return None


PYTHON_M = [
    (where, args)
    for where, tokens in commands()
    for python in ("python", "python3")
    if (args := _after(tokens, python, "-m")) and args[0].split(".")[0] in PACKAGES
]
FLWR_RUN = [(where, args) for where, tokens in commands() if (args := _after(tokens, "flwr", "run")) is not None]


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def parser_of(module_name: str) -> argparse.ArgumentParser:
    """The module's `parser()`; for a benchmark script without one, the parser its `main()` builds, caught at its
    first `parse_args` before it does anything."""
    module = importlib.import_module(module_name)
    if hasattr(module, "parser"):
        return module.parser()

    def caught(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Parsed(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", caught), pytest.raises(_Parsed) as parsed:
        module.main()
    return parsed.value.parser


def _check_flags(parser: argparse.ArgumentParser, args: list[str], where: str) -> None:
    """Each flag of `args` is one of `parser`'s options (or of the subcommand `args` names)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            positional = [a for a in args if not a.startswith("-")]
            assert positional and positional[0] in action.choices, f"{where}: wants one of {list(action.choices)}"
            i = args.index(positional[0])
            _check_options(parser, args[:i], where)
            return _check_flags(action.choices[positional[0]], args[i + 1 :], where)
    _check_options(parser, args, where)


def _check_options(parser: argparse.ArgumentParser, args: list[str], where: str) -> None:
    options = {flag for action in parser._actions for flag in action.option_strings}
    for i, arg in enumerate(args):
        if arg.startswith("-"):
            flag = arg.split("=", 1)[0]
            assert flag in options, f"{where}: {parser.prog} has no {flag}; it takes {sorted(options)}"
            if flag == "--run-config":
                check_run_config(arg.split("=", 1)[1] if "=" in arg else args[i + 1], where)


def check_run_config(value: str, where: str) -> None:
    """Keys Flower accepts (those pyproject.toml declares) and values fedkd's settings accept."""
    overrides = parse_config_args([value])
    unknown = sorted(set(overrides) - set(APP_CONFIG))
    assert not unknown, f"{where}: Flower refuses run-config keys {unknown}, not in pyproject.toml"
    parse({**APP_CONFIG, **overrides})


@pytest.mark.parametrize(("where", "args"), PYTHON_M, ids=[w for w, _ in PYTHON_M])
def test_python_m_command_exists_and_takes_its_flags(where, args):
    module, *rest = args
    _check_flags(parser_of(module), rest, where)


@pytest.mark.parametrize(("where", "args"), FLWR_RUN, ids=[w for w, _ in FLWR_RUN])
def test_flwr_run_configs_are_accepted(where, args):
    for flag, value in zip(args, args[1:]):
        if flag == "--run-config":
            check_run_config(value, where)
        elif flag == "--federation-config":
            # What `flwr run` does with it (flwr/cli/run/run.py, _parse_federation_config_overrides): kebab-case
            # keys become the fields of Flower's SimulationConfig, and an unknown one is an error.
            overrides = {k.replace("-", "_"): v for k, v in parse_config_args([value]).items()}
            simulation_config_from_json(overrides)


def test_the_docs_hold_commands_to_check():
    modules = {args[0] for _, args in PYTHON_M}
    assert {"common.data", "deploy.certs", "deploy.local", "server_app.outputs"} <= modules
    assert any("--federation-config" in args for _, args in FLWR_RUN)


def test_a_simulated_run_with_run_config_says_how_many_nodes():
    """Flower simulates 2 nodes without --federation-config: every `flwr run .` example with a --run-config and no
    connection must give it, or it does not run the federation it describes."""
    for where, args in FLWR_RUN:
        simulated = args[:1] == ["."] and (len(args) == 1 or args[1].startswith("-"))
        if simulated and "--run-config" in args:
            assert "--federation-config" in args, f"{where}: no --federation-config, so 2 simulated nodes"


def test_the_checks_catch_a_wrong_flag_and_a_wrong_key():
    with pytest.raises(AssertionError, match="has no --hosts"):
        _check_flags(parser_of("deploy.certs"), ["--hosts", "x"], "example")
    with pytest.raises(AssertionError, match="wants one of"):
        _check_flags(parser_of("common.data"), ["import"], "example")
    with pytest.raises(AssertionError, match="not in pyproject.toml"):
        check_run_config("num-rounds=3", "example")
