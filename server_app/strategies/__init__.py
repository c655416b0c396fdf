"""fedkd's strategies, by run-config `strategy` name: each module of this package is one method, registered where
it is defined (`@register`); importing the package imports them all. `contract.py` is what every method provides,
`kit/` the pieces they compose."""

import importlib
import pkgutil

from server_app.strategies.contract import STRATEGIES, RoundSteps, Strategy, register

for _module in pkgutil.iter_modules(__path__):
    if not _module.ispkg:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["STRATEGIES", "RoundSteps", "Strategy", "register"]
