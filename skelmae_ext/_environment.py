"""The environment variables skelmae_ext reads (and setup.py's build switches), parsed by one rule.

- A flag is on for ``1``, ``true``, ``yes`` or ``on`` and off for ``0``, ``false``, ``no`` or
  ``off`` (any case, surrounding spaces ignored).
- A size in megabytes is a whole decimal number, ``0`` or more.
- An empty value is the same as an unset one: the default (off, for every flag).
- Any other value gives one warning, naming the variable, the value and what is used instead
  (the default), and the default is used.

Standard library only: setup.py loads this file by its path, before the package is built.
"""

import os
import warnings

ON = ("1", "true", "yes", "on")
OFF = ("0", "false", "no", "off")
MAX_MEGABYTES = (1 << 43) - 1  # the largest size whose bytes fit a signed 64-bit integer

_warned = set()  # (name, value) pairs already warned about: one warning each per process


def flag(name, default=False):
    """Whether the flag `name` is on (`default` where it is unset, empty or unreadable)."""
    raw = os.environ.get(name, "")
    value = raw.strip().lower()
    if value in ON:
        return True
    if value in OFF:
        return False
    if value:
        _warn_unreadable(name, raw, f"a flag ({'/'.join(ON)} or {'/'.join(OFF)})",
                         "on" if default else "off")
    return default


def megabytes(name, default):
    """The size in megabytes that `name` holds (`default` where it is unset, empty or unreadable)."""
    raw = os.environ.get(name, "")
    value = raw.strip()
    if value.isascii() and value.isdigit() and int(value) <= MAX_MEGABYTES:
        return int(value)
    if value:
        _warn_unreadable(name, raw, f"a whole number of megabytes from 0 to {MAX_MEGABYTES}", f"{default} MB")
    return default


def _warn_unreadable(name, raw, expected, used):
    if (name, raw) in _warned:
        return
    _warned.add((name, raw))
    warnings.warn(f"skelmae_ext: {name}={raw!r} is not {expected}; using the default, {used}",
                  RuntimeWarning, stacklevel=3)
