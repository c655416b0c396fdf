"""docs/architecture.md's contract table lists every member of the strategy contract, and the loop and the
ServerApp use no other."""

import re
from pathlib import Path
from typing import ClassVar, get_origin

from server_app.strategies.contract import Strategy

ROOT = Path(__file__).resolve().parents[3]


def documented_members() -> set[str]:
    """The names in the first column of the table under "## Adding a strategy"."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## Adding a strategy") :]
    table = section[section.index("| member |") :].split("\n\n")[0]
    names = set()
    for row in table.splitlines()[2:]:
        for code in re.findall(r"`([^`]+)`", row.split("|")[1]):
            names.add(re.match(r"@?(\w+)", code).group(1))
    return names


def contract_members() -> set[str]:
    """The public members `Strategy` defines (its instance attributes by their annotations), and the decorator
    that registers one."""
    attributes = {name for name, kind in Strategy.__annotations__.items() if get_origin(kind) is not ClassVar}
    return {name for name in vars(Strategy) if not name.startswith("_")} | attributes | {"register"}


def test_the_contract_table_lists_every_member_of_the_contract():
    assert documented_members() == contract_members()


def test_the_loop_and_the_server_app_use_only_documented_members():
    used = set()
    for path in ("server_app/loop.py", "server_app/app.py", "server_app/settings.py"):
        source = (ROOT / path).read_text()
        used |= set(re.findall(r"\bstrategy\.(\w+)", source))
        used |= set(re.findall(r"STRATEGIES\[[^\]]+\]\.(\w+)", source))
    assert used, "no use of a strategy found: the pattern no longer matches the code"
    assert used <= documented_members() | {"name"}, used - documented_members()
