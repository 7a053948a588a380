"""ArviZ, imported once for the whole package.

ArviZ 0.23 announces its 1.0 refactor with a ``FutureWarning`` on import, at most once a day,
and records the day in a stamp file in the user's cache. Two things are handled here so that
every module can simply ``from ppl_models._arviz import az``:

* the warning is silenced (it is about ArviZ's future, not the user's code, and turns into an
  error where warnings are errors, as in this package's tests);
* processes that import ArviZ at the same moment race on that stamp file and all but one fail
  with ``FileNotFoundError`` (arviz-devs/arviz#2530 and #2583, open for 0.23.x). By then the
  winner has written today's stamp, so a second import goes through without writing it.
"""

from __future__ import annotations

import warnings
from types import ModuleType

__all__ = ["az"]


def _import_arviz() -> ModuleType:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            import arviz
        except FileNotFoundError as error:
            if "daily_warning" not in str(error):
                raise
            import arviz
    return arviz


az = _import_arviz()
