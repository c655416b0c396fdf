"""The reference pages generated from code are what their generator writes, and common/node_config.py lists exactly
the node config keys the ClientApp's code reads."""

import argparse
import ast
from pathlib import Path

import pytest

from common.node_config import KEYS
from server_app.reference_docs import COMMAND, MODULES, PAGES, parser_of

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", list(PAGES), ids=[p.name for p in PAGES])
def test_the_committed_page_is_what_the_generator_writes(path):
    committed = path.read_text(encoding="utf-8") if path.exists() else "(missing)"
    assert committed == PAGES[path](), f"{path.relative_to(ROOT)} is stale; regenerate it with `{COMMAND}`"


def _node_config_keys(tree: ast.Module) -> set[str]:
    """String keys read from a node config: `x[key]`, `key in x`, `x.get(key)`, where x is `node_config`, an
    attribute of that name, or a name bound to one; a key may be a module constant."""
    constants = {
        t.id: n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
        for t in n.targets
        if isinstance(t, ast.Name)
    }

    def is_config(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "node_config") or (
            isinstance(node, ast.Name) and node.id in names
        )

    def key(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return constants.get(node.id) if isinstance(node, ast.Name) else None

    names = {"node_config"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute) and node.value.attr == "node_config":
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and is_config(node.value):
            found.add(key(node.slice))
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            if is_config(node.comparators[0]):
                found.add(key(node.left))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            if is_config(node.func.value) and node.args:
                found.add(key(node.args[0]))
    return found - {None}


def test_node_config_lists_every_key_the_code_reads():
    read = set()
    for path in [*(ROOT / "client_app").rglob("*.py"), *(ROOT / "common").rglob("*.py")]:
        read |= _node_config_keys(ast.parse(path.read_text(encoding="utf-8")))
    documented = {k.key for k in KEYS}
    assert read - documented == set(), f"add to common/node_config.py: {sorted(read - documented)}"
    # A documented key the scan cannot see (read through a loop variable) still appears in the code.
    sources = "".join(
        p.read_text()
        for p in [*(ROOT / "client_app").rglob("*.py"), *(ROOT / "common").rglob("*.py")]
        if p.name != "node_config.py"
    )
    assert all(f'"{key}"' in sources for key in documented), "common/node_config.py lists a key no code reads"


def test_every_command_has_a_parser_and_help_for_each_option():
    for module in MODULES:
        parser = parser_of(module)
        assert parser.prog == f"python -m {module}"
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):  # each subcommand has its own help
                continue
            assert action.help, f"{module}: {action.option_strings or action.dest} has no help"
