"""Database outages become Unavailable (503) at the boundary of a use case or a request."""
from __future__ import annotations

import logging

from service.domain.errors import Unavailable
from service.infra.db import UNAVAILABLE

log = logging.getLogger(__name__)

__all__ = ["UNAVAILABLE", "translated"]


class translated:
    """`with translated():` runs store calls; database outages become Unavailable (503).

    A class rather than a generator context manager: every request enters one or two.
    """

    __slots__ = ()

    def __enter__(self) -> "translated":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is not None and issubclass(kind, UNAVAILABLE):
            log.warning("database unavailable: %s: %s", kind.__name__, exc)
            raise Unavailable() from exc
        return False
