"""Fails the build when a public name of nexus-optax has no entry in the API reference.

The public names are ``nexus_optax.__all__`` (its modules' own public names for a module
listed there, such as ``diagnostics``), as optax's ``docs/ext/coverage_check.py`` checks
``optax.__all__``. An entry is any object the Python domain documents (``autofunction``,
``autoclass``, ``autodata``, ``automodule``). Runs after every build, so ``-W`` makes a
missing entry an error.
"""

import importlib
import inspect
import types

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

PACKAGE = "nexus_optax"


def public_names(package: str = PACKAGE) -> set[str]:
  """Fully qualified public names: the package's ``__all__`` and its public modules' own."""
  module = importlib.import_module(package)
  names = set()
  for name in module.__all__:
    value = getattr(module, name)
    names.add(f"{package}.{name}")
    if isinstance(value, types.ModuleType):
      names.update(
        f"{value.__name__}.{member}"
        for member, obj in vars(value).items()
        if not member.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == value.__name__
      )
  return names


def missing_entries(documented: set[str], package: str = PACKAGE) -> list[str]:
  return sorted(public_names(package) - documented)


def check_coverage(app: Sphinx, exception: Exception | None) -> None:
  if exception is not None:
    return
  documented = set(app.env.get_domain("py").objects)
  missing = missing_entries(documented)
  if missing:
    raise ExtensionError(
      f"the API reference has no entry for {', '.join(missing)}; add an autofunction, "
      "autoclass or autodata for each to docs/api.rst."
    )


def setup(app: Sphinx) -> dict[str, bool]:
  app.connect("build-finished", check_coverage)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
