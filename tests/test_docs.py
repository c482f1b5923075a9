"""The documentation site and the README: built, complete, offline and free of history.

``python -m scripts.build_docs`` is what ``bash scripts/docs.sh`` runs after making its
environment: the html and the doctest builders with warnings as errors.
"""

import doctest
import importlib
import pathlib
import pkgutil
import re
import subprocess
import sys
import textwrap

import pytest

import nexus_optax
from docs.ext.coverage_check import public_names

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HISTORY = re.compile(r"\b(issues?|PR) #?\d+|\bthis session\b|\bwas lent\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
  out = tmp_path_factory.mktemp("docs")
  run = subprocess.run(
    [sys.executable, "-m", "scripts.build_docs", "--out", str(out)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert run.returncode == 0, run.stdout + run.stderr
  assert "WARNING" not in run.stderr, run.stderr
  return out


def _library_examples() -> int:
  """The ``>>>`` examples that ``pytest --doctest-modules nexus_optax`` runs."""
  finder, count = doctest.DocTestFinder(), 0
  modules = ["nexus_optax"] + [
    f"nexus_optax.{info.name}" for info in pkgutil.iter_modules(nexus_optax.__path__)
  ]
  for name in modules:
    module = importlib.import_module(name)
    count += sum(len(test.examples) for test in finder.find(module, module=module))
  return count


def test_every_docstring_example_runs_in_the_docs_build(built_site):
  summary = (built_site / "doctest" / "output.txt").read_text()
  tests = int(re.search(r"^\s*(\d+) tests?$", summary, re.MULTILINE).group(1))
  failures = int(re.search(r"^\s*(\d+) failures? in tests$", summary, re.MULTILINE).group(1))
  assert failures == 0
  assert tests >= _library_examples() > 0


def test_every_public_name_has_an_api_entry(built_site):
  api = (built_site / "html" / "api.html").read_text()
  names = public_names()
  assert {"nexus_optax.nexus", "nexus_optax.diagnostics.gradient_cosine_matrix"} <= names
  for name in names:
    assert f'id="{name}"' in api or f'id="module-{name}"' in api, name


def test_math_renders_offline(built_site):
  html = built_site / "html"
  math_page = (html / "math.html").read_text()
  assert "_static/mathjax/tex-chtml.js" in math_page
  assert (html / "_static" / "mathjax" / "tex-chtml.js").stat().st_size > 100_000
  for page in html.rglob("*.html"):
    assert not re.search(r"<script[^>]+src=\"https?://", page.read_text()), page


def test_the_guides_and_pages_carry_no_development_history(built_site):
  for page in (built_site / "html").rglob("*.html"):
    if page.name in ("changelog.html", "genindex.html", "search.html"):
      continue
    text = re.sub(r"<[^>]+>", " ", page.read_text())
    assert not HISTORY.search(text), (page.name, HISTORY.search(text).group(0))


def test_the_coverage_check_fails_the_build_when_a_name_has_no_entry(tmp_path):
  names = sorted(public_names())
  missing = "nexus_optax.nexus_multisteps"
  entries = "\n".join(f".. py:function:: {name}()" for name in names if name != missing)
  (tmp_path / "conf.py").write_text(
    f"import sys\nsys.path.insert(0, {str(DOCS / 'ext')!r})\nextensions = ['coverage_check']\n"
  )
  (tmp_path / "index.rst").write_text(f"API\n===\n\n{entries}\n")
  command = [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(tmp_path)]
  run = subprocess.run(
    command + [str(tmp_path / "_build")], capture_output=True, text=True, check=False
  )
  assert run.returncode != 0
  assert f"no entry for {missing};" in run.stderr  # the whole site's build passes it


def test_the_readme_is_a_landing_page():
  readme = (ROOT / "README.md").read_text()
  lines = readme.splitlines()
  assert len(lines) <= 200
  for command in ("bash scripts/main.sh", "bash scripts/test.sh"):
    (line,) = [number for number, text in enumerate(lines) if text.startswith(command)]
    assert line < 40, command
    comment = lines[line].split("#", 1)[1]
    assert 0 < len(comment.strip()) <= 120, command
  assert not HISTORY.search(readme), HISTORY.search(readme).group(0)
  for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme):
    assert (ROOT / target).exists(), target
  usage = re.search(r"```python\n(.*?)```", readme, re.DOTALL).group(1)
  assert len(textwrap.dedent(usage).strip().splitlines()) <= 25
