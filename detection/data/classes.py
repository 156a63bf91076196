"""The class list every dataset takes, checked once (light: no torch, so the settings check can use it)."""

from typing import Any


def checked_class_names(class_names: Any) -> tuple[str, ...]:
    """The foreground classes in label order (label k is the k-th, 0 is background), refused with a
    ValueError naming `dataset.classes` unless they are one or more non-empty strings, none twice: a bare
    string would be read letter by letter, and a repeated name would give one class two labels."""
    if isinstance(class_names, str):
        raise ValueError(f"dataset.classes={class_names!r} is one name, not a list: write "
                         f"dataset.classes=[{class_names}] (or [cat,dog] for several)")
    names = tuple(class_names) if class_names is not None else ()
    if not names or not all(isinstance(name, str) and name.strip() for name in names):
        raise ValueError(f"dataset.classes={list(names)}: give a list of one or more class names, e.g. [cat,dog]")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"dataset.classes lists {repeated} more than once: name each class once, in label order")
    return names
