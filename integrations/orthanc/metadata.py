"""The study metadata the sidecar writes into Orthanc, and the UserMetadata that declares it.

Orthanc 1.10.1 has no labels (they came in 1.12), so the result is recorded as study metadata,
which Orthanc only accepts for names declared in its ``UserMetadata`` configuration (numbers
1024-65535); :func:`integrations.orthanc.config.orthanc_config` declares these.
"""

from __future__ import annotations

DECISION = "triage-decision"  # AUTO_REPORT or DEFER
PRIORITY = "triage-priority"  # ROUTINE, URGENT or STAT
WORKLIST = "triage-worklist"  # the worklist the study was routed to
WORKLIST_ITEM = "triage-worklist-item"  # the item id in triage's worklist
REASONS = "triage-defer-reasons"  # comma-separated DeferReason names ("" when auto-reported)
STATUS = "triage-status"  # done, not-eligible or rejected (written last)
RESULT = "triage-result"  # JSON: model version, p_error and the posted SOP Instance UIDs

#: Name -> UserMetadata number (fixed: changing one orphans what an archive already holds).
USER_METADATA: dict[str, int] = {
    DECISION: 4301,
    PRIORITY: 4302,
    WORKLIST: 4303,
    WORKLIST_ITEM: 4304,
    REASONS: 4305,
    STATUS: 4306,
    RESULT: 4307,
}
