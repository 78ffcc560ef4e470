"""The 0.1 module paths still import for one release, warn with the new path, and give the very same objects."""

from __future__ import annotations

import importlib
import warnings

import pytest

from peft_cca._moved import MOVED


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_old_path_forwards_with_a_warning(old, new):
    alias = importlib.import_module(old)
    target = importlib.import_module(new)
    name = next(n for n in sorted(vars(target)) if not n.startswith("_"))
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        value = getattr(alias, name)
    assert value is getattr(target, name)


def test_warning_points_at_the_callers_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from peft_cca.config import CCAConfig  # noqa: F401

    assert caught and caught[0].filename == __file__


def test_a_name_the_new_module_lacks_is_an_attribute_error():
    alias = importlib.import_module("peft_cca.config")
    with pytest.warns(DeprecationWarning), pytest.raises(AttributeError):
        alias.no_such_name  # noqa: B018
