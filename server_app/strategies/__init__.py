"""fedkd's strategies, by run-config `strategy` name: each module of this package is one method over
`base`, and registers itself there with `@register`; importing the package imports them all."""

import importlib
import pkgutil

from server_app.strategies.base import STRATEGIES, Globals, Round, Scores, Strategy, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["STRATEGIES", "Globals", "Round", "Scores", "Strategy", "register"]
