"""The repository's layout rules, read from the source with ``ast``: imports point down
(library <- models <- train <- benchmarks, studies, scripts), no import cycle, no command
line imported by another module, and functions short enough to read."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("nexus_optax", "models", "train", "benchmarks", "studies", "scripts", "examples")
# Modules of the product and its measurements; tests/ and examples/ sit on top of them.
BELOW_TESTS = ("nexus_optax", "models", "train", "benchmarks", "studies")
CLI_NAMES = {"main", "build_parser", "parse_args"}
MAX_FUNCTION_LINES = 80


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {
  module_name(path): (path, ast.parse(path.read_text(), str(path)))
  for package in PACKAGES
  for path in sorted((ROOT / package).rglob("*.py"))
}


def imported_modules(node: ast.Import | ast.ImportFrom) -> list[str]:
  """The modules an import statement loads: ``from a.b import c`` is a.b, and a.b.c when
  that is a module of ours."""
  if isinstance(node, ast.Import):
    return [alias.name for alias in node.names]
  if node.level:  # relative: only the library uses them, inside itself
    return []
  found = [node.module]
  found += [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in SOURCES]
  return found


def body_imports(tree: ast.Module):
  """(import, enclosing function or None) for every import statement."""

  def visit(node, function):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.Import, ast.ImportFrom)):
        yield child, function
      inner = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
      yield from visit(child, inner)

  yield from visit(tree, None)


def offences(rule) -> list[str]:
  return [
    f"{path.relative_to(ROOT)}:{line}: {what}"
    for name, (path, tree) in SOURCES.items()
    for line, what in rule(name, path, tree)
  ]


def test_only_the_library_imports_its_private_modules():
  def rule(name, path, tree):
    for node, _ in body_imports(tree):
      private = [m for m in imported_modules(node) if m.startswith("nexus_optax._")]
      if isinstance(node, ast.ImportFrom) and node.module == "nexus_optax":
        private += [a.name for a in node.names if a.name.startswith("_")]
      if private and not name.startswith("nexus_optax"):
        yield node.lineno, f"imports private {private}"

  assert offences(rule) == []


def test_nothing_below_the_tests_imports_tests_or_examples_or_edits_sys_path():
  def rule(name, path, tree):
    if name.split(".")[0] not in BELOW_TESTS:
      return
    for node, _ in body_imports(tree):
      for module in imported_modules(node):
        if module.split(".")[0] in ("tests", "examples", "conftest"):
          yield node.lineno, f"imports {module}"
    for node in ast.walk(tree):
      if isinstance(node, ast.Attribute) and node.attr == "path":
        if isinstance(node.value, ast.Name) and node.value.id == "sys":
          yield node.lineno, "uses sys.path"

  assert offences(rule) == []


def is_command(module: str) -> bool:
  """Whether ``module`` is a command line: it defines ``main``."""
  tree = SOURCES[module][1]
  return any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)


def test_no_module_imports_another_modules_command_line():
  """A command's ``main``, ``build_parser`` and ``parse_args`` are its own; only its
  package's ``__main__`` may call into them. Shared flags live in library modules."""

  def rule(name, path, tree):
    aliases = {}
    for node, _ in body_imports(tree):
      if isinstance(node, ast.ImportFrom) and node.module in SOURCES:
        for alias in node.names:
          cli = alias.name in CLI_NAMES and is_command(node.module)
          if cli and path.name != "__main__.py":
            yield node.lineno, f"imports {node.module}.{alias.name}"
          if f"{node.module}.{alias.name}" in SOURCES:
            aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
      elif isinstance(node, ast.Import):
        for alias in node.names:
          if alias.name in SOURCES and alias.asname:
            aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
      if isinstance(node, ast.Attribute) and node.attr in CLI_NAMES:
        alias = aliases.get(node.value.id) if isinstance(node.value, ast.Name) else None
        if alias is not None and is_command(alias):
          yield node.lineno, f"calls {aliases[node.value.id]}.{node.attr}"

  assert offences(rule) == []


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Every cycle a depth-first walk of ``graph`` meets, as the path that closes it."""
  done, active, cycles = set(), [], []

  def visit(name):
    if name in active:
      cycles.append(active[active.index(name) :] + [name])
      return
    if name in done:
      return
    active.append(name)
    for module in sorted(graph[name]):
      visit(module)
    active.pop()
    done.add(name)

  for name in sorted(graph):
    visit(name)
  return cycles


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle():
  assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
  assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_module_level_imports_form_no_cycle():
  graph = {
    name: {
      module
      for node, function in body_imports(tree)
      if function is None
      for module in imported_modules(node)
      if module in SOURCES and not (name + ".").startswith(module + ".")
    }
    for name, (_, tree) in SOURCES.items()
  }
  # A package's __init__ is imported on the way to any of its modules.
  for name in list(graph):
    for module in list(graph[name]):
      parent = module.rpartition(".")[0]
      if parent in SOURCES and not name.startswith(parent + ".") and parent != name:
        graph[name].add(parent)
  assert find_cycles(graph) == []


def test_an_import_inside_a_function_says_why_it_is_lazy():
  def rule(name, path, tree):
    lines = path.read_text().splitlines()
    for node, function in body_imports(tree):
      if function is None:
        continue
      nearby = lines[max(node.lineno - 6, function.lineno - 1) : node.end_lineno]
      if not any("#" in line for line in nearby):
        yield node.lineno, f"imports {imported_modules(node)} in {function.name}() unexplained"

  assert offences(rule) == []


def code_lines(function: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
  """Lines of code in ``function``'s body: no docstring, blank or comment-only lines, and
  none of its nested functions' or classes' lines."""
  body = function.body
  if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
    body = body[1:]
  nested = set()
  for node in ast.walk(function):
    if node is not function and isinstance(
      node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    ):
      first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
      nested.update(range(first, node.end_lineno + 1))
  counted = {
    number
    for statement in body
    for number in range(statement.lineno, statement.end_lineno + 1)
    if number not in nested and lines[number - 1].strip()[:1] not in ("", "#")
  }
  return len(counted)


@pytest.mark.parametrize("package", ["nexus_optax", "models", "train"])
def test_no_function_is_longer_than_80_lines_of_code(package):
  long = []
  for name, (path, tree) in SOURCES.items():
    if name.split(".")[0] != package:
      continue
    lines = path.read_text().splitlines()
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        if (count := code_lines(node, lines)) > MAX_FUNCTION_LINES:
          long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {count}")
  assert long == []


def test_the_line_counter_counts_code_only():
  source = '''
def outer(x):
  """Docstring,
  two lines."""
  # a comment
  y = x + 1

  def inner():
    return 1

  return (y,
          inner())
'''
  (function,) = ast.parse(source).body
  assert code_lines(function, source.splitlines()) == 3
