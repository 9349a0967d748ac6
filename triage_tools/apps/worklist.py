"""``triage worklist list|claim|release|complete|export``: the Worklist service from a terminal.

``export --labelled`` writes completed items as JSON lines that ``triage calibrate
--worklist-export`` reads: the served model's outputs (probabilities, raw P(error), OOD score)
with the radiologist's final labels, one study per line, the study UID hashed. Radiologists'
reads thereby feed the next calibration.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from triage_tools.client_args import add_connection_arguments

STATE_NAMES = ("QUEUED", "CLAIMED", "COMPLETED", "SUPERSEDED")


def configure(parser: argparse.ArgumentParser) -> None:
    """Sub-commands and options of ``triage worklist``."""
    add_connection_arguments(parser)
    sub = parser.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="items by priority, then age")
    ls.add_argument("--worklist", default="", help="one worklist (default: all)")
    ls.add_argument("--state", action="append", choices=STATE_NAMES, help="repeatable")
    ls.add_argument("--limit", type=int, default=100, help="most items shown (100)")
    ls.add_argument("--json", action="store_true", help="print JSON lines, not a table")
    claim = sub.add_parser("claim", help="claim an item (or the next one of a worklist)")
    claim.add_argument("--reader", required=True, help="who claims (the reader's name)")
    claim.add_argument("--item", default="", help="item id (default: the next one)")
    claim.add_argument("--worklist", default="", help="worklist to take the next item from")
    claim.add_argument("--lease", type=float, default=0.0, help="seconds (0: server default)")
    release = sub.add_parser("release", help="give a claimed item back")
    release.add_argument("--reader", required=True, help="the reader holding the item")
    release.add_argument("--item", required=True, help="item id")
    complete = sub.add_parser("complete", help="close a claimed item with final labels")
    complete.add_argument("--reader", required=True, help="the reader holding the item")
    complete.add_argument("--item", required=True, help="item id")
    complete.add_argument(
        "--label", action="append", required=True, metavar="NAME=0|1", help="repeatable"
    )
    export = sub.add_parser("export", help="write items as CSV or JSON")
    export.add_argument("--out", type=Path, required=True, help="file to write")
    export.add_argument(
        "--format", choices=("csv", "json"), default="json", help="file format (json)"
    )
    export.add_argument("--worklist", default="", help="one worklist (default: all)")
    export.add_argument(
        "--labelled",
        action="store_true",
        help="completed items with final labels as JSON lines for `triage calibrate`",
    )


def parse_label(text: str) -> tuple[str, bool]:
    """``"Edema=1"`` -> ``("Edema", True)``."""
    name, sep, value = text.rpartition("=")
    if not sep or not name or value not in ("0", "1", "true", "false"):
        raise ValueError(f"--label {text!r}: expected NAME=0 or NAME=1")
    return name, value in ("1", "true")


def item_record(item: Any) -> dict[str, Any]:
    """A worklist item as a flat record (CSV/JSON export and the list table)."""
    from service._proto.triage.v1 import triage_pb2, worklist_pb2
    from service.core.enums import Priority

    result = item.result
    priority = Priority(item.priority) if item.priority else None
    return {
        "item_id": item.item_id,
        "study_instance_uid": item.study_instance_uid,
        "worklist": item.worklist,
        "priority": triage_pb2.Priority.Name(item.priority),
        "priority_dicom_ups": priority.ups if priority else "",
        "priority_fhir_task": priority.fhir if priority else "",
        "state": worklist_pb2.ItemState.Name(item.state),
        "decision": triage_pb2.Decision.Name(result.decision),
        "p_error": round(result.p_error, 6),
        "findings_present": ";".join(f.label for f in result.findings if f.present),
        "model_version": result.model_version,
        "claimed_by": item.claimed_by,
        "created_unix": item.created_unix,
        "updated_unix": item.updated_unix,
        "final_labels": ";".join(f"{f.label}={int(f.present)}" for f in item.final_labels),
    }


def labelled_record(item: Any) -> dict[str, Any]:
    """A completed item as one line of the labelled set ``triage calibrate`` reads."""
    from triage_common.logging import hash_uid

    result = item.result
    return {
        "study_uid_hash": hash_uid(item.study_instance_uid),
        "bundle_id": result.model_version,
        "site": "",
        "labels": [f.label for f in result.findings],
        "probabilities": [f.probability for f in result.findings],
        "p_error_raw": result.p_error_raw,
        "ood_score": result.ood_score,
        "final_labels": {f.label: f.present for f in item.final_labels},
    }


def run(args: argparse.Namespace) -> int:
    """Run one worklist action; exit 1 on a gRPC error (its status and message printed)."""
    import csv

    import grpc

    from service._proto.triage.v1 import worklist_pb2, worklist_pb2_grpc
    from triage_common.console import print_table
    from triage_tools.client import call_metadata
    from triage_tools.client_args import channel_from, token_from

    stub = worklist_pb2_grpc.WorklistStub(channel_from(args))  # type: ignore[no-untyped-call]
    metadata = call_metadata(token_from(args))
    try:
        if args.action == "list":
            states = list(args.state or [])
            reply = stub.List(
                worklist_pb2.ListRequest(worklist=args.worklist, states=states, limit=args.limit),
                metadata=metadata,
            )
            records = [item_record(i) for i in reply.items]
            if args.json:
                print(json.dumps(records, indent=2))
            else:
                columns = ["item_id", "worklist", "priority", "state", "decision", "p_error",
                           "findings_present", "claimed_by"]  # fmt: skip
                print_table(
                    f"worklist {args.worklist or '(all)'}: {len(records)} item(s)",
                    columns,
                    [[r[c] for c in columns] for r in records],
                )
            return 0
        if args.action in ("claim", "release", "complete"):
            if args.action == "claim":
                item = stub.Claim(
                    worklist_pb2.ClaimRequest(item_id=args.item, worklist=args.worklist,
                                              reader=args.reader, lease_seconds=args.lease),
                    metadata=metadata,
                )  # fmt: skip
            elif args.action == "release":
                item = stub.Release(
                    worklist_pb2.ReleaseRequest(item_id=args.item, reader=args.reader),
                    metadata=metadata,
                )
            else:
                try:
                    labels = [parse_label(text) for text in args.label]
                except ValueError as exc:
                    print(f"triage worklist: {exc}", file=sys.stderr)
                    return 2
                item = stub.Complete(
                    worklist_pb2.CompleteRequest(
                        item_id=args.item,
                        reader=args.reader,
                        final_labels=[
                            worklist_pb2.FinalLabel(label=n, present=p) for n, p in labels
                        ],
                    ),
                    metadata=metadata,
                )
            print(json.dumps(item_record(item), indent=2))
            return 0
        states = ["COMPLETED"] if args.labelled else list(STATE_NAMES)
        reply = stub.List(
            worklist_pb2.ListRequest(worklist=args.worklist, states=states, limit=1000),
            metadata=metadata,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.labelled:
            lines = [json.dumps(labelled_record(i)) for i in reply.items if i.final_labels]
            args.out.write_text("".join(line + "\n" for line in lines))
            print(f"wrote {len(lines)} labelled studies to {args.out}")
            return 0
        records = [item_record(i) for i in reply.items]
        if args.format == "json":
            args.out.write_text(json.dumps(records, indent=2) + "\n")
        else:
            with args.out.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(records[0]) if records else ["item_id"])
                writer.writeheader()
                writer.writerows(records)
        print(f"wrote {len(records)} items to {args.out}")
        return 0
    except grpc.RpcError as exc:
        print(f"triage worklist: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
