"""Content identities: canonical hashes of settings and of the code that makes a file.

A finished piece of work (a raw file, a cleaned byte range, an encoded partition) is
reused by a later run only when its identity is unchanged: the inputs' hashes, the
settings, and a digest of the source code of the modules that made it (an edited
reader must not reuse what the old reader produced).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def sha256_of(value: Any) -> str:
    """sha256 hex of ``value`` as canonical JSON."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def code_digest(*modules: ModuleType) -> str:
    """sha256 over the source files of ``modules``, in the order given."""
    hasher = hashlib.sha256()
    for module in modules:
        source = Path(module.__file__ or "")
        hasher.update(module.__name__.encode() + b"\0")
        hasher.update(source.read_bytes() if source.is_file() else b"")
    return hasher.hexdigest()
