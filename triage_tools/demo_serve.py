"""The serving half of ``triage demo``: start ``triage serve``, submit studies, show results.

Studies: a few held-out phantom studies from every site (patients neither network trained on,
and the held-out site), the real RG1 chest CR and the RG3 tibia CR from pydicom-data. Each goes
through ``triage submit`` exactly as a PACS integration would; the server is then stopped with
SIGTERM (graceful drain).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from triage_common.console import print_table
from triage_tools.serve_process import ServeProcess

PER_SITE = 3


def held_out_studies(data: Path, split_file: Path) -> list[tuple[str, str, list[Path]]]:
    """(site, study UID, files) of the first ``PER_SITE`` test or held-out studies per site."""
    patients: dict[str, str] = json.loads(split_file.read_text())["patients"]
    studies: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    with (data / "labels.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            if patients.get(row["patient_id"]) in ("test", "heldout"):
                studies[row["site"]][row["study_uid"]].append(data / row["path"])
    chosen = []
    for site in sorted(studies):
        for uid in list(studies[site])[:PER_SITE]:
            chosen.append((site, uid, studies[site][uid]))
    return chosen


def real_files() -> list[tuple[str, Path, str]]:
    """(label, path, StudyInstanceUID) of the real radiographs from pydicom-data."""
    import pydicom
    from pydicom.data import get_testdata_file

    out = []
    for label, name in (("pydicom-data RG1 (real chest CR)", "RG1_UNCI.dcm"),
                        ("pydicom-data RG3 (tibia CR)", "RG3_UNCI.dcm")):  # fmt: skip
        path = get_testdata_file(name)
        if path is not None:
            uid = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
            out.append((label, Path(str(path)), str(uid)))
    return out


def _triage(*args: str) -> list[str]:
    return [sys.executable, "-m", "triage_tools.cli", *args]


def serve_and_submit(out: Path, bundle: Path, policy: Path | None, data: Path, split: Path) -> int:
    """Serve the bundle, submit the demo studies, print the results and the worklist."""
    db = out / "worklist.db"
    for stale in out.glob("worklist.db*"):
        stale.unlink()  # each demo run shows its own worklist
    shutil.rmtree(out / "explanations", ignore_errors=True)  # and their counterfactuals
    args = ["--bundle", str(bundle), "--set", f"worklist.path={db}"]
    args += ["--set", "explain.enabled=true"]  # deferred items get a counterfactual job
    if policy is not None and policy.exists():
        args += ["--policy", str(policy)]
    server = ServeProcess(args)
    server.wait_ready()
    address = server.address
    print(f"  server listening on {address}", flush=True)
    try:
        phantoms = held_out_studies(data, split)
        site_of = {uid: site for site, uid, _ in phantoms}
        files = [p for _, _, paths in phantoms for p in paths]
        reals = real_files()
        files += [p for _, p, _ in reals]
        overlays = out / "overlays"
        cmd = _triage("submit", "--server", address, "--json", "--overlay", str(overlays),
                      "--timeout", "60", *map(str, files))  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if not done.stdout.strip():
            print(done.stderr, file=sys.stderr)
            return 1
        results: list[dict[str, Any]] = json.loads(done.stdout)["results"]
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        real_uid = {uid: label for label, _, uid in reals}
        rows = []
        for r in results:
            uid = r.get("study_instance_uid", "")
            reasons = ", ".join(r.get("defer_reasons", [])) or r.get("error", "")
            rows.append([
                r["study"],
                site_of.get(uid) or real_uid.get(uid, "?"),
                r.get("decision", r["status"]),
                reasons,
                r.get("p_error", ""),
                ", ".join(f["label"] for f in r.get("findings", []) if f["present"]) or "-",
                r.get("worklist", ""),
                r.get("priority", ""),
            ])  # fmt: skip
        print_table(
            "triage results (held-out phantoms from every site, and real radiographs)",
            [
                "study",
                "site",
                "decision",
                "reasons",
                "P(error)",
                "findings",
                "worklist",
                "priority",
            ],
            rows,
        )
        subprocess.run(
            _triage("worklist", "--server", address, "list", "--limit", "50"), check=False
        )
        return 0
    finally:
        status = server.stop()
        print(f"  server stopped with SIGTERM (exit status {status})", flush=True)
