"""The running settings of one process, which a reload (SIGHUP) changes in part.

A reload applies what can change without dropping an association: the allowed callers
and the destinations (with their routing). The listener, the worker and the outbox read
:attr:`LiveSettings.current` when they need it (the next A-ASSOCIATE-RQ, the next job's
deliveries, the next outbox tick), so a reload never reaches into them. Any other change
in the file is named in a warning at every reload until a restart, instead of half
applying (a new calling AE title on the sender, say).
"""

from __future__ import annotations

import logging
from pathlib import Path

from dicom_node.config import Settings, load_settings
from dicom_node.errors import ConfigError

logger = logging.getLogger(__name__)

#: What a reload applies (callers, destinations and routing); every other change waits for a restart.
LIVE_SETTINGS = ("node.allowed_callers", "node.allow_any_caller", "destinations")


class LiveSettings:
    """The start-up settings with the live parts of each accepted reload of ``path``."""

    def __init__(self, path: Path, settings: Settings) -> None:
        self.path = path
        self.current = settings
        #: Counts accepted reloads: a reader that derives something costly from the
        #: settings (the outbox's peers) rebuilds it only when this moves.
        self.generation = 0

    def destination_kinds(self) -> dict[str, list[str]]:
        """Destination name -> the object kinds it wants, as the worker queues deliveries."""
        return {d.name: list(d.objects) for d in self.current.destinations}

    def reload(self) -> bool:
        """Re-read the config file; an invalid one is refused and the running config stays."""
        try:
            new = load_settings(self.path)
        except ConfigError as exc:
            logger.error(f"configuration reload refused, keeping the running configuration: {'; '.join(exc.problems)}")
            return False
        fixed = [
            key
            for key in changed_keys(self.current.model_dump(), new.model_dump())
            if not any(key == live or key.startswith(live + ".") for live in LIVE_SETTINGS)
        ]
        if fixed:
            logger.warning(f"configuration reload: these settings apply only after a restart: {', '.join(fixed)}")
        node = self.current.node.model_copy(
            update={"allowed_callers": new.node.allowed_callers, "allow_any_caller": new.node.allow_any_caller}
        )
        destinations = new.destinations
        if any(key.startswith("tls.") for key in fixed):
            # A destination's TLS is built from [tls]: new destinations with the old trust
            # settings would fail every send until dead-lettered. They wait for the restart too.
            logger.warning("configuration reload: [tls] changed, so destinations also wait for a restart")
            destinations = self.current.destinations
        self.current = self.current.model_copy(update={"node": node, "destinations": destinations})
        self.generation += 1
        logger.info(
            f"configuration reloaded: {len(node.allowed_callers)} allowed caller(s), "
            f"{len(self.current.destinations)} destination(s)"
        )
        return True


def changed_keys(old: object, new: object, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two ``model_dump()`` trees (lists compared whole)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [changed for key in keys for changed in changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if old != new else []
