"""``triage submit``: send DICOM files to a triage server, one call per study, print the results.

Files (folders are searched recursively) are grouped by StudyInstanceUID from their headers;
each study goes in one unary call when small and as a TriageStream of ~1 MiB chunks otherwise.
The table shows the study as a hashed UID (``hash_uid``, what the server logs); ``--json``
prints the results as JSON instead (with the full StudyInstanceUID, for the sender's own
records; heat maps are summarised by their shape).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from triage_common.logging import hash_uid
from triage_tools.client_args import add_connection_arguments, channel_from, token_from


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage submit``."""
    parser.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="DICOM files or folders"
    )
    add_connection_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--defer-cost", type=float, help="per-request defer cost (within the server's bounds)"
    )
    parser.add_argument(
        "--overlay", type=Path, metavar="DIR", help="ask for Grad-CAM overlays and write PNGs here"
    )
    parser.add_argument("--calling-ae-title", default="", help="sender AE title for routing rules")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="deadline per study in seconds"
    )
    parser.add_argument("--stream", action="store_true", help="always use TriageStream")


def _enum_name(enum: Any, value: int) -> str:
    return str(enum.Name(value))


def result_record(uid: str, result: Any) -> dict[str, Any]:
    """A JSON-able summary of one TriageResult."""
    from service._proto.triage.v1 import triage_pb2

    return {
        "study": hash_uid(uid),
        "study_instance_uid": uid,
        "status": "OK",
        "decision": _enum_name(triage_pb2.Decision, result.decision),
        "defer_reasons": [_enum_name(triage_pb2.DeferReason, r) for r in result.defer_reasons],
        "p_error": result.p_error,
        "p_error_raw": result.p_error_raw,
        "defer_cost": result.defer_cost,
        "ood_score": result.ood_score,
        "ood_threshold": result.ood_threshold,
        "worklist": result.worklist,
        "priority": _enum_name(triage_pb2.Priority, result.priority),
        "model_version": result.model_version,
        "policy_version": result.policy_version,
        "defer_cost_set_by": result.defer_cost_set_by,
        "caller": result.caller,
        "worklist_item_id": result.worklist_item_id,
        "replayed": result.replayed,
        "findings": [
            {
                "label": f.label,
                "probability": f.probability,
                "threshold": f.threshold,
                "present": f.present,
                "p_error": f.p_error,
                "heatmap_shape": [f.heatmap.height, f.heatmap.width],
            }
            for f in result.findings
        ],
        "ignored_instances": [
            {"sop_instance_uid": i.sop_instance_uid, "reason": i.reason}
            for i in result.ignored_instances
        ],
        "timings_ms": {
            "decode": result.timings.decode_ms,
            "preprocess": result.timings.preprocess_ms,
            "queue": result.timings.queue_ms,
            "inference": result.timings.inference_ms,
            "total": result.timings.total_ms,
        },
    }


def run(args: argparse.Namespace) -> int:
    """Submit every study; exit status 1 when any study failed, 2 when a path does not exist."""

    import grpc

    from service._proto.triage.v1 import triage_pb2_grpc
    from triage_common.console import print_table
    from triage_tools.client import CallOptions, group_by_study, triage_study

    missing = [path for path in args.paths if not path.exists()]
    if missing:
        names = ", ".join(str(path) for path in missing)
        print(f"triage submit: {names}: no such file or folder", file=sys.stderr)
        return 2
    studies, skipped = group_by_study(args.paths)
    for path, why in skipped:
        print(f"triage submit: skipping {path}: {why}", file=sys.stderr)
    if not studies:
        print("triage submit: no DICOM studies found", file=sys.stderr)
        return 2
    token = token_from(args)
    channel = channel_from(args)
    stub = triage_pb2_grpc.TriageStub(channel)  # type: ignore[no-untyped-call]
    options = CallOptions(
        defer_cost=args.defer_cost,
        include_overlay=args.overlay is not None,
        calling_ae_title=args.calling_ae_title,
        timeout=args.timeout,
        token=token,
        stream=True if args.stream else None,
    )
    records: list[dict[str, Any]] = []
    failed = 0
    for study in studies:
        try:
            result = triage_study(stub, study.read(), options)
        except grpc.RpcError as exc:
            failed += 1
            records.append(
                {
                    "study": hash_uid(study.study_instance_uid),
                    "study_instance_uid": study.study_instance_uid,
                    "status": exc.code().name,
                    "error": exc.details(),
                }
            )
            continue
        records.append(result_record(study.study_instance_uid, result))
        if args.overlay is not None:
            args.overlay.mkdir(parents=True, exist_ok=True)
            for f in result.findings:
                if f.overlay_png:
                    name = f"{hash_uid(study.study_instance_uid)}_{f.label.replace(' ', '_')}.png"
                    (args.overlay / name).write_bytes(f.overlay_png)
    channel.close()
    if args.json:
        print(json.dumps({"server": args.server, "results": records}, indent=2))
    else:
        print_table(
            f"triage results from {args.server}",
            [
                "study",
                "status",
                "decision",
                "reasons",
                "p_error",
                "cost",
                "findings present",
                "worklist",
                "priority",
            ],
            [
                [
                    r["study"],
                    r["status"],
                    r.get("decision", ""),
                    ", ".join(r.get("defer_reasons", [])) or r.get("error", ""),
                    r.get("p_error", ""),
                    r.get("defer_cost", ""),
                    ", ".join(f["label"] for f in r.get("findings", []) if f["present"]) or "-",
                    r.get("worklist", ""),
                    r.get("priority", ""),
                ]
                for r in records
            ],
        )
    return 1 if failed else 0
