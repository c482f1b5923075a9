"""The release: an sdist and a wheel that install alone and run the README's usage.

``python -m build`` makes the sdist from a copy of the files a release holds (so nothing
else of the checkout can leak in) and the wheel from that sdist. The wheel goes into a
fresh venv with nothing else; the README's usage must run there, and the venv must hold
only jax, jaxlib, optax, chex and what they depend on.
"""

import email
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from importlib.metadata import distributions

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import nexus_optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
RELEASE_FILES = ("pyproject.toml", "MANIFEST.in", "README.md", "CHANGELOG.md", "LICENSE")
LIBRARY_DEPENDENCIES = {"jax", "optax", "chex"}
# What `python -m venv` seeds, before anything is installed.
VENV_SEED = {"pip", "setuptools"}


def readme_usage() -> str:
  """The README's usage: its first Python code block."""
  match = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
  assert match, "README.md has no ```python block"
  return match.group(1)


def _requirements_closure(distributions: dict, roots: set[str]) -> set[str]:
  """Every distribution that ``roots`` need, through the installed ones' Requires-Dist."""
  needed, todo = set(), list(roots)
  while todo:
    name = canonicalize_name(todo.pop())
    if name in needed:
      continue
    needed.add(name)
    for line in distributions[name].get_all("Requires-Dist") or ():
      requirement = Requirement(line)
      if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
        todo.append(requirement.name)
  return needed


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  source = tmp_path_factory.mktemp("source")
  for name in RELEASE_FILES:
    shutil.copy(ROOT / name, source / name)
  shutil.copytree(
    ROOT / "nexus_optax", source / "nexus_optax", ignore=shutil.ignore_patterns("__pycache__")
  )
  dist = tmp_path_factory.mktemp("dist")
  built = subprocess.run(
    [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
    check=False,
    capture_output=True,
    text=True,
  )
  assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
  (wheel,), (sdist,) = dist.glob("*.whl"), dist.glob("*.tar.gz")
  return wheel, sdist


@pytest.fixture(scope="module")
def venv_with_the_wheel(release, tmp_path_factory):
  wheel, _ = release
  venv = tmp_path_factory.mktemp("venv")
  subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
  pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
  pip += ["--disable-pip-version-check", "--no-compile", str(wheel)]
  subprocess.run(pip, check=True, capture_output=True)
  return venv


def test_the_wheel_holds_the_typed_library_its_metadata_and_the_changelog(release):
  wheel, sdist = release
  version = nexus_optax.__version__
  assert wheel.name == f"nexus_optax-{version}-py3-none-any.whl"
  with zipfile.ZipFile(wheel) as archive:
    names = set(archive.namelist())
    metadata = email.message_from_bytes(archive.read(f"nexus_optax-{version}.dist-info/METADATA"))
  assert {name.split("/")[0] for name in names} == {
    "nexus_optax",
    f"nexus_optax-{version}.dist-info",
  }
  assert "nexus_optax/py.typed" in names
  assert metadata["Version"] == version
  assert metadata["License-Expression"] == "Apache-2.0"
  assert "Typing :: Typed" in metadata.get_all("Classifier")
  assert metadata["Keywords"] and metadata["Author"]
  requires = {Requirement(line).name for line in metadata.get_all("Requires-Dist")}
  assert requires == LIBRARY_DEPENDENCIES
  assert not metadata.get_all("Provides-Extra"), "extras of a wheel that lacks their code"
  description = metadata.get_payload()
  assert f"## [{version}]" in description, "the changelog's entry for this release"
  with tarfile.open(sdist) as archive:
    members = {
      pathlib.PurePath(name).relative_to(f"nexus_optax-{version}").as_posix()
      for name in archive.getnames()
      if "/" in name
    }
  assert {"CHANGELOG.md", "LICENSE", "README.md", "nexus_optax/py.typed"} <= members
  assert not any(name.startswith(("tests/", "train/", "models/")) for name in members)


def test_one_version_source():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  assert "version" not in project and "version" in project["dynamic"]
  changelog = (ROOT / "CHANGELOG.md").read_text()
  assert re.search(
    rf"^## \[{re.escape(nexus_optax.__version__)}\] - \d{{4}}-\d\d-\d\d$", changelog, re.MULTILINE
  )


def test_the_wheel_installs_alone_and_runs_the_readme_usage(venv_with_the_wheel, tmp_path):
  python = venv_with_the_wheel / "bin" / "python"
  run = subprocess.run(
    [str(python), "-c", "import nexus_optax; print(nexus_optax.__file__)\n" + readme_usage()],
    cwd=tmp_path,  # not the checkout, whose nexus_optax/ would shadow the installed one
    capture_output=True,
    text=True,
    check=False,
  )
  assert run.returncode == 0, run.stderr
  installed_at, *printed = run.stdout.splitlines()
  assert installed_at.startswith(str(venv_with_the_wheel))
  assert printed, "the README's usage prints what it computed"


def test_the_venv_holds_only_the_library_dependencies_and_theirs(venv_with_the_wheel):
  (site_packages,) = venv_with_the_wheel.glob("lib/python*/site-packages")
  installed = {
    canonicalize_name(dist.metadata["Name"]): dist.metadata
    for dist in distributions(path=[str(site_packages)])
  }
  needed = _requirements_closure(installed, {"nexus-optax"})
  assert {"jax", "jaxlib", "optax", "chex"} <= needed
  assert set(installed) - needed - VENV_SEED == set()
