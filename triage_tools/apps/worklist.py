"""``triage worklist list|claim|release|complete|amend|history|explanation|watch|export|outbox``:
the Worklist service from a terminal.

``complete`` and ``amend`` take a value for every label of the item's result: ``--label
NAME=0|1`` or ``--not-assessed NAME`` (the server refuses a missing or unknown label, naming it).
``history ITEM`` prints an item's audit entries; ``watch`` follows the changes as they happen
(``--after SEQ`` resumes after the last event number seen, e.g. across a server restart).
``explanation ITEM`` shows the Latent Shift counterfactuals of a deferred item (state, and per
finding the prediction drop, lambda and stop rule); ``--out DIR`` also writes each finding's GIF
and PNG strip there.

``export --labelled`` writes completed items as JSON lines that ``triage calibrate
--worklist-export`` reads: the served model's outputs (probabilities, raw P(error), OOD score)
with the radiologist's final labels (``null``: not assessed), one study per line, the study UID
hashed. Radiologists' reads thereby feed the next calibration.

``outbox --db worklist.db`` lists the DICOM outbox (each result object and destination: state,
attempts, when it is due, the last error) and a summary per destination, read from the worklist
database (read-only; the same file the server's ``worklist.path`` names), or with ``--url`` (or
``$TRIAGE_WORKLIST__URL``) from the PostgreSQL worklist the replicas share.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

from triage_tools.client_args import add_connection_arguments

STATE_NAMES = ("QUEUED", "CLAIMED", "COMPLETED", "SUPERSEDED")
OUTBOX_STATES = ("QUEUED", "SENT", "FAILED")
PROG = "triage worklist"


def _read_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reader", required=True, help="the reader (who reads or corrects)")
    parser.add_argument("--item", required=True, help="item id")
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="NAME=0|1",
        help="a label's value; repeatable",
    )
    parser.add_argument(
        "--not-assessed",
        action="append",
        default=[],
        metavar="NAME",
        help="a label the reader did not assess; repeatable",
    )


def configure(parser: argparse.ArgumentParser) -> None:
    """Sub-commands and options of ``triage worklist``."""
    add_connection_arguments(parser)
    sub = parser.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("list", help="items by priority, then age")
    ls.add_argument("--worklist", default="", help="one worklist (default: all)")
    ls.add_argument("--state", action="append", choices=STATE_NAMES, help="repeatable")
    ls.add_argument("--limit", type=int, default=100, help="most items shown (100)")
    ls.add_argument("--review", action="store_true", help="only items flagged for review")
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
    _read_arguments(complete)
    amend = sub.add_parser("amend", help="correct the final labels of a completed item")
    _read_arguments(amend)
    amend.add_argument("--reason", required=True, help="why the read is corrected (audited)")
    history = sub.add_parser("history", help="an item's audit entries, oldest first")
    history.add_argument("item", metavar="ITEM", help="item id")
    history.add_argument("--json", action="store_true", help="print JSON, not a table")
    explanation = sub.add_parser("explanation", help="an item's counterfactual explanation")
    explanation.add_argument("item", metavar="ITEM", help="item id")
    explanation.add_argument(
        "--out", type=Path, default=None, help="write FINDING.gif and FINDING.png here"
    )
    explanation.add_argument("--json", action="store_true", help="print JSON, not a table")
    watch = sub.add_parser("watch", help="print worklist changes as they happen")
    watch.add_argument("--worklist", default="", help="one worklist (default: all)")
    watch.add_argument(
        "--after", type=int, default=None, metavar="SEQ", help="resume after event SEQ"
    )
    watch.add_argument("--count", type=int, default=0, help="stop after N events (0: never)")
    watch.add_argument("--json", action="store_true", help="print JSON lines")
    export = sub.add_parser("export", help="write items as CSV or JSON")
    export.add_argument("--out", type=Path, required=True, help="file to write")
    export.add_argument(
        "--format", choices=("csv", "json"), default="json", help="file format (json)"
    )
    export.add_argument("--worklist", default="", help="one worklist (default: all)")
    outbox = sub.add_parser("outbox", help="the DICOM result objects queued, sent or failed")
    outbox.add_argument("--db", type=Path, default=None, help="the worklist database file")
    outbox.add_argument(
        "--url", default=None,
        help="the PostgreSQL worklist (postgresql://...; default $TRIAGE_WORKLIST__URL)",
    )  # fmt: skip
    outbox.add_argument(
        "--state", action="append", choices=OUTBOX_STATES, help="QUEUED, SENT or FAILED; repeatable"
    )
    outbox.add_argument("--destination", default="", help="one destination (default: all)")
    outbox.add_argument("--limit", type=int, default=100, help="most rows shown (100)")
    outbox.add_argument("--json", action="store_true", help="print JSON, not tables")
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


def parse_read(labels: list[str], not_assessed: list[str]) -> list[Any]:
    """``--label`` and ``--not-assessed`` values as wire labels; ValueError naming the flag."""
    from service._proto.triage.v1 import worklist_pb2

    if not labels and not not_assessed:
        raise ValueError("give --label NAME=0|1 or --not-assessed NAME for each label")
    out = [worklist_pb2.FinalLabel(label=n, present=p) for n, p in map(parse_label, labels)]
    out += [worklist_pb2.FinalLabel(label=n, not_assessed=True) for n in not_assessed]
    return out


def _label_text(label: Any) -> str:
    return f"{label.label}={'n/a' if label.not_assessed else int(label.present)}"


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
        "defer_reasons": ";".join(triage_pb2.DeferReason.Name(r) for r in result.defer_reasons),
        "site": result.site,
        "p_error": round(result.p_error, 6),
        "findings_present": ";".join(f.label for f in result.findings if f.present),
        "model_version": result.model_version,
        "claimed_by": item.claimed_by,
        "created_unix": item.created_unix,
        "updated_unix": item.updated_unix,
        "final_labels": ";".join(_label_text(f) for f in item.final_labels),
        "needs_review": item.needs_review,
        "review_reason": item.review_reason,
        "latest_model_version": item.latest_result.model_version
        if item.HasField("latest_result")
        else "",
    }


def labelled_record(item: Any) -> dict[str, Any] | None:
    """A completed item as one line of the labelled set ``triage calibrate`` reads; None when
    its final labels name a label its result lacks (a read stored before labels were checked)."""
    from triage_common.logging import hash_uid

    result = item.result
    labels = [f.label for f in result.findings]
    final = {f.label: None if f.not_assessed else f.present for f in item.final_labels}
    if set(final) - set(labels):
        return None
    return {
        "study_uid_hash": hash_uid(item.study_instance_uid),
        "bundle_id": result.model_version,
        "site": result.site,
        "labels": labels,
        "probabilities": [f.probability for f in result.findings],
        "p_error_raw": result.p_error_raw,
        "ood_score": result.ood_score,
        "final_labels": final,
    }


def _when(unix: float) -> str:
    moment = datetime.datetime.fromtimestamp(unix, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def event_record(event: Any) -> dict[str, Any]:
    """A worklist event (History, Watch) as a flat record."""
    from service._proto.triage.v1 import triage_pb2, worklist_pb2

    item = event.item
    return {
        "seq": event.seq,
        "at": _when(event.at_unix),
        "kind": event.kind,
        "actor": event.actor,
        "item_id": item.item_id,
        "from_state": worklist_pb2.ItemState.Name(event.from_state),
        "state": worklist_pb2.ItemState.Name(item.state),
        "worklist": item.worklist,
        "priority": triage_pb2.Priority.Name(item.priority),
        "claimed_by": item.claimed_by,
        "needs_review": item.needs_review,
        "detail": event.detail,
    }


_EVENT_COLUMNS = ["seq", "at", "kind", "actor", "state", "worklist", "priority", "detail"]


def _print_event(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(record), flush=True)
        return
    print(
        f"{record['seq']:>6} {record['at']} {record['kind']:<13} {record['item_id']} "
        f"{record['state']:<10} {record['worklist']} {record['priority']} by {record['actor']}"
        + (" [review]" if record["needs_review"] else ""),
        flush=True,
    )


def _watch(stub: Any, args: argparse.Namespace, metadata: Any) -> int:
    from service._proto.triage.v1 import worklist_pb2

    request = worklist_pb2.WatchRequest(worklist=args.worklist)
    if args.after is not None:
        if args.after < 0:
            print(f"{PROG}: --after {args.after}: must be 0 or more", file=sys.stderr)
            return 2
        request.after_seq = args.after
    stream = stub.Watch(request, metadata=metadata)
    seen = 0
    try:
        for event in stream:
            _print_event(event_record(event), args.json)
            seen += 1
            if args.count and seen >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stream.cancel()
    return 0


def _export(stub: Any, args: argparse.Namespace, metadata: Any) -> int:
    import csv

    from service._proto.triage.v1 import worklist_pb2

    states = ["COMPLETED"] if args.labelled else list(STATE_NAMES)
    reply = stub.List(
        worklist_pb2.ListRequest(worklist=args.worklist, states=states, limit=1000),
        metadata=metadata,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.labelled:
        records = [labelled_record(i) for i in reply.items if i.final_labels]
        lines = [json.dumps(r) for r in records if r is not None]
        args.out.write_text("".join(line + "\n" for line in lines))
        skipped = len(records) - len(lines)
        if skipped:
            print(
                f"{PROG}: skipped {skipped} item(s) whose final labels name labels their result "
                "lacks; correct them with `triage worklist amend`",
                file=sys.stderr,
            )
        print(f"wrote {len(lines)} labelled studies to {args.out}")
        return 0
    rows = [item_record(i) for i in reply.items]
    if args.format == "json":
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    else:
        with args.out.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["item_id"])
            writer.writeheader()
            writer.writerows(rows)
    print(f"wrote {len(rows)} items to {args.out}")
    return 0


def _outbox(args: argparse.Namespace) -> int:
    """``outbox``: rows and per-destination totals from the database file."""
    import sqlite3

    from service.worklist.open import is_postgres_url, open_worklist
    from service.worklist.store import SqliteWorklistStore, WorklistStore
    from triage_common.console import print_table

    url = args.url
    if url is None:  # the environment's URL only when no file is named
        url = "" if args.db is not None else os.environ.get("TRIAGE_WORKLIST__URL", "")
    if url and not is_postgres_url(url):
        print(f"{PROG} outbox: --url must be a postgresql:// URL", file=sys.stderr)
        return 2
    if not url and args.db is None:
        print(f"{PROG} outbox: give --db FILE or --url postgresql://...", file=sys.stderr)
        return 2
    if not url and not args.db.is_file():
        print(f"{PROG} outbox: --db {args.db}: no such file", file=sys.stderr)
        return 2
    where = "--url" if url else f"--db {args.db}"
    try:
        opened = open_worklist(url=url) if url else SqliteWorklistStore(args.db)
        assert opened is not None
        store: WorklistStore = opened
        rows = store.list_outbox(
            tuple(args.state or OUTBOX_STATES), args.destination, max(1, args.limit)
        )
        stats = store.outbox_stats()
        store.close()
    except (sqlite3.Error, ValueError) as exc:
        print(f"{PROG} outbox: {where}: {exc}", file=sys.stderr)
        return 2
    records = [
        {
            "outbox_id": r.outbox_id, "destination": r.destination, "kind": r.kind,
            "state": r.state, "attempts": r.attempts, "created": _when(r.created),
            "next_attempt": _when(r.next_attempt) if r.state == "QUEUED" else "",
            "sent": _when(r.sent) if r.sent else "", "sop_instance_uid": r.sop_instance_uid,
            "last_error": r.last_error,
        }
        for r in rows
    ]  # fmt: skip
    summary = {
        name: {"queued": s.queued, "sent": s.sent, "failed": s.failed,
               "oldest_queued": _when(s.oldest_queued) if s.oldest_queued else ""}
        for name, s in sorted(stats.items())
    }  # fmt: skip
    if args.json:
        print(json.dumps({"destinations": summary, "rows": records}, indent=2))
        return 0
    print_table(
        "outbox by destination",
        ["destination", "queued", "sent", "failed", "oldest_queued"],
        [[name, *s.values()] for name, s in summary.items()],
    )
    columns = ["outbox_id", "destination", "kind", "state", "attempts", "next_attempt", "sent",
               "last_error"]  # fmt: skip
    print_table(
        f"outbox: {len(records)} row(s)", columns, [[r[c] for c in columns] for r in records]
    )
    return 0


def _explanation(stub: Any, args: argparse.Namespace, metadata: Any) -> int:
    """``explanation ITEM``: the state and one row per counterfactual (files with ``--out``)."""
    from service._proto.triage.v1 import worklist_pb2
    from triage_common.atomic import atomic_write_bytes
    from triage_common.console import print_table
    from triage_common.labels import file_stem

    reply = stub.GetExplanation(
        worklist_pb2.GetExplanationRequest(item_id=args.item, include_images=args.out is not None),
        metadata=metadata,
    )
    state = worklist_pb2.ExplanationState.Name(reply.state).removeprefix("EXPLANATION_")
    rows = []
    for cf in reply.counterfactuals:
        files: list[str] = []
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            stem = file_stem(cf.label)
            for suffix, data in ((".gif", cf.gif), (".png", cf.strip_png)):
                atomic_write_bytes(args.out / f"{stem}{suffix}", data)
                files.append(str(args.out / f"{stem}{suffix}"))
        rows.append(
            {
                "finding": cf.label,
                "probability": round(cf.probability, 4),
                "p_first_frame": round(cf.predictions[0], 4) if cf.predictions else None,
                "p_last_frame": round(cf.predictions[-1], 4) if cf.predictions else None,
                "prediction_drop": round(cf.prediction_drop, 4),
                "lambda_reached": cf.lambda_reached,
                "stop_rule": cf.stop_rule,
                "image_change": round(cf.image_change, 4),
                "seconds": round(cf.seconds, 3),
                "files": files,
            }
        )
    record = {
        "item_id": reply.item_id,
        "state": state,
        "model_version": reply.model_version,
        "explainer": reply.explainer,
        "attempts": reply.attempts,
        "error": reply.error,
        "secondary_capture": reply.sop_instance_uid,
        "counterfactuals": rows,
    }
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    columns = ["finding", "probability", "p_first_frame", "p_last_frame", "prediction_drop",
               "lambda_reached", "stop_rule", "image_change", "seconds"]  # fmt: skip
    title = f"explanation of item {args.item}: {state}"
    if reply.error:
        title += f" ({reply.error})"
    print_table(title, columns, [[r[c] for c in columns] for r in rows])
    return 0


def run(args: argparse.Namespace) -> int:
    """Run one worklist action; exit 1 on a gRPC error (its status and message printed), 2 on
    a malformed option."""
    if args.action == "outbox":
        return _outbox(args)
    import grpc

    from service._proto.triage.v1 import worklist_pb2, worklist_pb2_grpc
    from triage_common.console import print_table
    from triage_tools.client import call_metadata
    from triage_tools.client_args import channel_from, token_from

    stub = worklist_pb2_grpc.WorklistStub(channel_from(args))  # type: ignore[no-untyped-call]
    metadata = call_metadata(token_from(args))
    try:
        if args.action == "list":
            reply = stub.List(
                worklist_pb2.ListRequest(
                    worklist=args.worklist,
                    states=list(args.state or []),
                    limit=args.limit,
                    needs_review=args.review,
                ),
                metadata=metadata,
            )
            records = [item_record(i) for i in reply.items]
            if args.json:
                print(json.dumps(records, indent=2))
            else:
                columns = ["item_id", "worklist", "priority", "state", "decision", "p_error",
                           "findings_present", "claimed_by", "needs_review"]  # fmt: skip
                print_table(
                    f"worklist {args.worklist or '(all)'}: {len(records)} item(s)",
                    columns,
                    [[r[c] for c in columns] for r in records],
                )
            return 0
        if args.action == "history":
            events = stub.History(
                worklist_pb2.HistoryRequest(item_id=args.item), metadata=metadata
            ).events
            records = [event_record(e) for e in events]
            if args.json:
                print(json.dumps(records, indent=2))
            else:
                print_table(
                    f"history of item {args.item}: {len(records)} event(s)",
                    _EVENT_COLUMNS,
                    [[r[c] for c in _EVENT_COLUMNS] for r in records],
                )
            return 0
        if args.action == "explanation":
            return _explanation(stub, args, metadata)
        if args.action == "watch":
            return _watch(stub, args, metadata)
        if args.action == "export":
            return _export(stub, args, metadata)
        if args.action in ("complete", "amend"):
            try:
                read = parse_read(args.label, args.not_assessed)
            except ValueError as exc:
                print(f"{PROG} {args.action}: {exc}", file=sys.stderr)
                return 2
            if args.action == "complete":
                item = stub.Complete(
                    worklist_pb2.CompleteRequest(
                        item_id=args.item, reader=args.reader, final_labels=read
                    ),
                    metadata=metadata,
                )
            else:
                item = stub.Amend(
                    worklist_pb2.AmendRequest(
                        item_id=args.item, reader=args.reader, final_labels=read, reason=args.reason
                    ),
                    metadata=metadata,
                )
        elif args.action == "claim":
            item = stub.Claim(
                worklist_pb2.ClaimRequest(item_id=args.item, worklist=args.worklist,
                                          reader=args.reader, lease_seconds=args.lease),
                metadata=metadata,
            )  # fmt: skip
        else:
            item = stub.Release(
                worklist_pb2.ReleaseRequest(item_id=args.item, reader=args.reader),
                metadata=metadata,
            )
        print(json.dumps(item_record(item), indent=2))
        return 0
    except grpc.RpcError as exc:
        print(f"{PROG}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
