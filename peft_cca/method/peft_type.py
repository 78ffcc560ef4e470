"""Add "CCA" to peft's PeftType enum.

``peft.register_peft_method`` only accepts names already in ``PeftType``, and Python enums cannot be
subclassed once they have members, so we add one member the way ``enum`` builds its own: an
instance of the enum class with ``_name_``/``_value_`` set, recorded in the member maps. Idempotent,
so a second import (or a peft release that adds CCA itself) is harmless.
"""

from __future__ import annotations

from peft.utils.peft_types import PeftType


def extend_peft_type(name: str) -> PeftType:
    """The ``PeftType`` member called ``name``, created if peft does not have it."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    # type.__setattr__ bypasses EnumType.__setattr__, which forbids new attributes that look like members
    type.__setattr__(PeftType, name, member)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    return member


CCA_PEFT_TYPE = extend_peft_type("CCA")
