"""The one rule for telling a local path from a Hugging Face hub name (core: pure string checks, no I/O).

``pretrained=org/name`` and ``--data org/name`` may mean a hub repository or a folder on this machine. A value
that can only be a local path is refused by name when it does not exist, instead of being sent to the hub
(which answers after its retries with "Repo id must be in the form ...").
"""

from __future__ import annotations

import os

LOCAL_PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")
"""Starts that no hub name has: absolute, relative to the working folder, or the home folder."""


def looks_like_local_path(value: str) -> bool:
    """Whether ``value`` can only mean a file or folder on this machine, not a Hugging Face repo id (``name``
    or ``namespace/name``): it starts like a path, or has more than one ``/``, or the platform's own separator
    where that is not ``/``."""
    return (
        value.startswith(LOCAL_PATH_PREFIXES)
        or value in (".", "..")
        or value.count("/") > 1
        or (os.sep != "/" and os.sep in value)
    )
