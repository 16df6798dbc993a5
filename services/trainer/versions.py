"""Version lifecycle: act on a gate decision, promote a version, roll back.

One rule ties these to the rest of the system: a ``ModelUpdate`` on ``model-updates``
means "serve this version now", and the last one wins. So promoting is announcing (item
vectors, then the update) and only then recording ``promoted`` in the manifest, which
stamps ``promoted_at``; the serving version is the promoted one promoted last. A version
the gate rejects is kept on disk, marked ``rejected`` with the reason, and never announced
by the trainer (an operator may still promote it by hand).
"""

from __future__ import annotations

import logging
from typing import Literal

from confluent_kafka import Producer

from recsys.artifacts import ArtifactStore, Manifest
from recsys.events import ModelUpdate
from recsys.topics import Topics
from services.trainer.gate import GateDecision
from services.trainer.publisher import Announceable, announce

log = logging.getLogger(__name__)

Outcome = Literal["promoted", "rejected"]
ROLLED_BACK = "rolled back"


class NothingToRollBack(LookupError):
    """No promoted version served before the current one (or nothing serves at all)."""


def apply_decision(
    store: ArtifactStore,
    producer: Producer,
    topics: Topics,
    candidate: Announceable,
    decision: GateDecision,
) -> Outcome:
    """Announce and mark a candidate promoted, or mark it rejected; log both figures."""
    version = candidate.manifest.version
    figures = {
        "version": version,
        "candidate_ndcg": decision.record.candidate,
        "serving_ndcg": decision.record.serving,
        "serving_version": decision.record.serving_version,
        "tolerance": decision.record.tolerance,
        "users": decision.record.users,
        "reason": decision.reason,
    }
    if not decision.promote:
        store.set_status(version, "rejected", decision.reason, decision.record)
        log.warning("model rejected by the gate", extra=figures)
        return "rejected"
    try:
        update = announce(producer, topics, candidate, reason="trained")
    except Exception as exc:
        # Not served: leave it a candidate (with the figures) rather than claim promoted.
        store.set_status(
            version, "candidate", f"passed the gate; announcement failed: {exc}", decision.record
        )
        raise
    store.set_status(version, "promoted", decision.reason, decision.record)
    log.info("model promoted", extra={**figures, "items": update.item_count})
    return "promoted"


def promote(
    store: ArtifactStore,
    producer: Producer,
    topics: Topics,
    version: str,
    reason: str = "promoted by hand",
    announce_reason: str = "promote",
) -> ModelUpdate:
    """Serve ``version`` now, whatever its status: re-publish its vectors, announce it.

    Raises VersionNotFoundError for an unknown version and ArtifactIntegrityError if its
    files do not match their checksums (nothing is announced then).
    """
    loaded = store.load(version)
    update = announce(producer, topics, loaded, reason=announce_reason)
    store.set_status(version, "promoted", reason)
    log.info(
        "model promoted",
        extra={"version": version, "reason": reason, "items": update.item_count},
    )
    return update


def previous_serving(manifests: list[Manifest], current: Manifest) -> Manifest | None:
    """The promoted version that served before ``current`` (by promotion time)."""
    earlier = [m for m in manifests if m.status == "promoted" and m.version != current.version]
    return max(earlier, key=lambda m: m.serving_order, default=None)


def rollback(
    store: ArtifactStore, producer: Producer, topics: Topics
) -> tuple[Manifest, ModelUpdate]:
    """Serve the version that served before the current one; mark the current rejected.

    Returns the version rolled back from and the new announcement.
    """
    manifests = store.list_versions()
    current = store.serving(manifests)
    if current is None:
        raise NothingToRollBack(f"{store.model_name} has no promoted version to roll back")
    previous = previous_serving(manifests, current)
    if previous is None:
        raise NothingToRollBack(
            f"nothing to roll back to: {current.version} is the only promoted version"
        )
    update = promote(
        store,
        producer,
        topics,
        previous.version,
        reason=f"rolled back to, from {current.version}",
        announce_reason="rollback",
    )
    store.set_status(current.version, "rejected", ROLLED_BACK)
    log.warning("model rolled back", extra={"from": current.version, "to": previous.version})
    return current, update
