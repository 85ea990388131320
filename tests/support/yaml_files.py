"""YAML in the tests: libyaml's parser, and committed files (CRDs, examples) parsed once per process."""

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

# libyaml's parser, as the product reads manifests: the pure-Python one took about 30 s of the suite's CPU (a
# CRD is 27 KB, read by every fake cluster and every chart render).
from mge.models.manifest import YAML_LOADER as LOADER


def parse(text: str) -> Any:
    return yaml.load(text, Loader=LOADER)


def parse_all(text: str) -> list[Any]:
    return list(yaml.load_all(text, Loader=LOADER))


def load(path: Path) -> Any:
    """The file's one document; a copy of its own for each caller, which may change it."""
    return copy.deepcopy(_parsed(path.resolve(), path.stat().st_mtime_ns))


@functools.cache
def _parsed(path: Path, mtime_ns: int) -> Any:
    return parse(path.read_text())
