"""The setup files agree: env.yaml's pip section is requirements.txt, and torch stays pinned."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_requirements():
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        return sorted(line.strip() for line in f if line.strip() and not line.startswith("#"))


def test_env_yaml_pip_section_matches_requirements():
    with open(os.path.join(ROOT, "env.yaml")) as f:
        text = f.read()
    pip_section = text.split("- pip:", 1)[1]
    listed = sorted(re.findall(r"^\s+- (\S+)\s*$", pip_section, flags=re.M))
    assert listed == read_requirements()


def test_torch_is_bounded_and_no_cuda_only_companions():
    requirements = read_requirements()
    assert "torch>=2.5,<2.14" in requirements
    for name in ("torchvision", "torchaudio", "timm"):
        assert not any(r.startswith(name) for r in requirements)



def test_the_installed_versions_are_inside_the_bounded_ranges():
    """The upper bounds are the versions the suite runs on: CI installs the newest inside each
    range, so a release past a bound is taken only after the suite passed on it."""
    from importlib.metadata import version

    from packaging.requirements import Requirement
    bounded = [Requirement(r) for r in read_requirements() if "<" in r]
    assert {r.name for r in bounded} >= {"torch", "deepspeed", "transformers"}
    for requirement in bounded:
        installed = version(requirement.name).split("+")[0]
        assert requirement.specifier.contains(installed), (requirement, installed)
