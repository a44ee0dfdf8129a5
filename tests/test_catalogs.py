"""The torch-free catalogs and what they describe cannot drift apart.

``gridcam.cam.catalog`` says what ``gridcam methods`` shows of each explanation method (options
with their defaults, cost) and ``gridcam.models.catalog`` names the built-in architectures; the
functions and constructors live beside torch. Here: the same names on both sides, an entry's
options are the keywords its function accepts, and each default the help states is the function's.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import pytest

from gridcam import cam, models
from gridcam.cam import catalog
from gridcam.models import catalog as architectures
from gridcam.models import registry
from gridcam.cam.registry import keyword_defaults

_MISSING = object()


def stated_default(help_text: str) -> Any:
    """The default an option's help states, as a Python value: ``"default 16"``, ``"'elementwise'
    (paper, default) or ..."`` or the first parenthesis, ``"... (50, the paper's)"``,
    ``"... (None: the global one)"``; :data:`_MISSING` when it states none."""
    for pattern in (r"^default (?P<v>.+)$", r"(?P<v>'[^']*') \([^)]*\bdefault\b",
                    r"\((?P<v>[^(),:]+)[,:)]"):
        match = re.search(pattern, help_text)
        if match:
            try:
                return ast.literal_eval(match["v"])
            except (ValueError, SyntaxError):
                continue
    return _MISSING


def test_stated_default_reads_each_form():
    assert stated_default("default 256") == 256 and stated_default("default False") is False
    assert stated_default("'elementwise' (paper, default) or 'classic'") == "elementwise"
    assert stated_default("noisy copies n (50, the paper's)") == 50
    assert stated_default("torch.Generator for the noise (None: the global one)") is None
    assert stated_default("constant baseline image value (0.0)") == 0.0
    assert stated_default("mixing weight") is _MISSING


def test_every_registered_method_has_an_entry_and_every_entry_a_method():
    assert list(catalog.ENTRIES) == list(cam.METHOD_INFO) == list(cam.METHODS)


@pytest.mark.parametrize("name", list(catalog.ENTRIES))
def test_entry_options_are_the_function_keywords_with_their_defaults(name):
    entry, defaults = catalog.ENTRIES[name], keyword_defaults(cam.METHODS[name])
    assert set(entry.options) == set(defaults), "options differ from the function's keywords"
    for option, help_text in entry.options.items():
        stated = stated_default(help_text)
        assert stated is not _MISSING, f"{name} {option}: the help states no default"
        assert stated == defaults[option], f"{name} {option}: help says {stated!r}"
    # a cost that names an option states its default last: "(n+1)F+nB, n = samples (50)"
    named = [o for o in defaults if re.search(rf"\b{o}\b", entry.cost)]
    numbers = re.findall(r"\((\d+(?:\.\d+)?)\)", entry.cost)
    if named and numbers:
        assert float(numbers[-1]) == defaults[named[0]], f"{name}: cost {entry.cost!r}"


def test_entries_are_what_methods_shows():
    for name, entry in catalog.ENTRIES.items():
        assert entry.label and entry.description and entry.cost and entry.relative > 0, name
    assert catalog.describe() == cam.describe_methods()


def test_architecture_catalog_is_the_registry_builtins():
    names = list(architectures.ARCHITECTURES)
    assert set(names) == set(registry._BUILTINS)  # a constructor for each name, a name for each
    assert models.list_models()[:len(names)] == names  # registered first, in the catalog's order
    for name, description in architectures.ARCHITECTURES.items():
        assert description and models.describe(name) == description


def test_models_command_lines_up_the_descriptions(capsys):
    """The name column is as wide as the longest name (tiny_resnet_s16), so every description
    starts in the same column."""
    from gridcam.cli import main

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()[:len(architectures.ARCHITECTURES)]
    width = max(map(len, architectures.ARCHITECTURES))
    for line, (name, description) in zip(lines, architectures.ARCHITECTURES.items()):
        assert line == f"{name.ljust(width)} {description}"
    assert "\ntiny_resnet_s16 tiny_resnet with layer4 at stride 1" in "\n".join(lines)
