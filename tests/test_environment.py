"""environment.yml (conda) and pyproject.toml (pip) describe the same environment, and the
Makefile passes `make reproduce`'s variables through to tools/reproduce.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parent.parent


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pyproject_requirements() -> dict[str, Requirement]:
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    lines = project["dependencies"] + extras["study"] + extras["test"]
    return {canonicalize_name(r.name): r for r in map(Requirement, lines)}


def conda_requirements() -> tuple[str, dict[str, Requirement], list[str]]:
    """(python spec, name -> requirement for conda and pip entries, other pip lines)."""
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    python, found, other = None, {}, []
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            for line in entry["pip"]:
                if line.startswith("-"):
                    other.append(line)
                else:
                    requirement = Requirement(line)
                    found[canonicalize_name(requirement.name)] = requirement
            continue
        name, _, version = re.match(r"^([A-Za-z0-9_.-]+)\s*(=*)\s*(.*)$", entry).groups()
        if name == "python":
            python = version
        elif name != "pip":
            # conda's "name=1.2" means 1.2.*; ranlib pins only through pip, so a conda pin is a mismatch.
            assert not version, f"environment.yml pins {entry!r} in conda's section; pin it under pip: instead"
            found[canonicalize_name(name)] = Requirement(name)
    return python, found, other


def test_environment_yml_lists_exactly_the_pyproject_dependencies_with_the_same_pins():
    _, conda, _ = conda_requirements()
    ours = pyproject_requirements()
    assert sorted(conda) == sorted(ours), (
        f"only in environment.yml: {sorted(set(conda) - set(ours))}; "
        f"only in pyproject.toml: {sorted(set(ours) - set(conda))}")
    for name, requirement in ours.items():
        assert conda[name].specifier == requirement.specifier, (
            f"{name}: pyproject.toml says {requirement.specifier or 'any'}, "
            f"environment.yml says {conda[name].specifier or 'any'}")


def test_environment_yml_python_satisfies_requires_python_and_installs_ranlib():
    python, _, other = conda_requirements()
    assert python, "environment.yml must name a python version"
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(python)
    assert "-e ." in other, "environment.yml must install ranlib itself (pip: -e .)"


def test_constraints_pins_match_pyproject():
    constraints = {}
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            constraints[canonicalize_name(requirement.name)] = requirement.specifier
    ours = pyproject_requirements()
    for name, specifier in constraints.items():
        assert name in ours, f"constraints.txt pins {name}, which pyproject.toml does not use"
        assert ours[name].specifier == specifier, f"{name}: constraints say {specifier}, pyproject {ours[name].specifier}"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_reproduce_passes_its_variables_to_the_tool():
    out = subprocess.run(
        ["make", "-n", "-o", ".venv/.ranlib-installed", "reproduce", "PROFILE=quick",
         "NOTEBOOKS=arl_vs_nal label_noise", "DEVICE=cuda:1", "DATASET=cifar10-jpeg", "DATA_ROOT=/data/c10"],
        cwd=REPO, capture_output=True, text=True, check=True).stdout.replace("\\\n", " ")
    command = next(line for line in out.splitlines() if "tools/reproduce.py" in line)
    assert re.search(r"--profile quick\b", command) and "--device cuda:1" in command
    assert "--notebooks arl_vs_nal label_noise" in command
    assert "--dataset cifar10-jpeg" in command and "--data-root /data/c10" in command


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_book_renders_from_results_then_builds_with_warnings_as_errors():
    out = subprocess.run(["make", "-n", "-o", ".venv/.ranlib-installed", "book"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.replace("\\\n", " ")
    render = next(i for i, line in enumerate(out.splitlines()) if "tools/reproduce.py --report-only" in line)
    build = next(i for i, line in enumerate(out.splitlines()) if "jupyter-book build book/" in line)
    assert render < build
    assert all(flag in out.splitlines()[build].split() for flag in ("-W", "-n", "--keep-going"))
