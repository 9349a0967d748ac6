"""The README's pictures from a real run: Orthanc Explorer showing a study with our series, and
one Secondary Capture overlay rendered from its pixels.

``python -m integrations.orthanc.screenshot --bundle BUNDLE --out docs/img`` starts a real
Orthanc, ``triage serve`` and the sidecar, uploads RG1 (pydicom-data; patient fields replaced by
demo values), waits for the result, then takes headless Chromium (Debian ``chromium``)
screenshots of the study page of Orthanc Explorer and writes ``orthanc-explorer.png``,
``orthanc-metadata.png`` (the study's metadata, REST) and ``orthanc-sc-overlay.png``.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


def _rg1() -> bytes:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(str(get_testdata_file("RG1_UNCR.dcm")))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "DEMO^PHANTOM", "DEMO-0001", ""
    ds.AccessionNumber, ds.StudyDescription = "", "CHEST PA (RG1, pydicom-data)"
    for key in ("OtherPatientIDs", "ReferringPhysicianName"):
        if key in ds:
            delattr(ds, key)
    ds.StudyInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _shoot(url: str, path: Path, size: str) -> None:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    flags += [f"--window-size={size}", "--virtual-time-budget=5000", f"--screenshot={path}"]
    subprocess.run(
        [CHROMIUM, *flags, url],
        check=True,
        capture_output=True,
        timeout=120,
    )


def _small_png(path: Path, limit: int = 300_000) -> None:
    from PIL import Image

    image: Image.Image = Image.open(path)
    if image.mode not in ("RGB", "L", "P"):
        image = image.convert("RGB")
    image.save(path, optimize=True)
    while path.stat().st_size > limit:
        image = image.resize((image.width * 3 // 4, image.height * 3 // 4))
        image.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    """Run once and write the pictures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="output folder")
    args = parser.parse_args(argv)
    import numpy as np
    import pydicom
    from PIL import Image

    from integrations.orthanc.metadata import STATUS
    from integrations.orthanc.process import OrthancProcess
    from triage_tools.serve_process import ServeProcess

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="orthanc-shot-") as tmp:
        work = Path(tmp)
        pacs = OrthancProcess(work / "orthanc", stable_age=1)
        server = ServeProcess(
            ["--bundle", str(args.bundle), "--set", f"worklist.path={work / 'wl.db'}"]
        )
        cmd = [sys.executable, "-m", "triage_tools.cli", "orthanc", "follow", "--orthanc"]
        cmd += [pacs.url, "--server", server.address, "--state", str(work / "state")]
        sidecar = subprocess.Popen([*cmd, "--start", "beginning"], stderr=subprocess.DEVNULL)
        try:
            server.wait_ready()
            study = str(pacs.client.post_instance(_rg1())["ParentStudy"])
            deadline = time.monotonic() + 120
            while STATUS not in pacs.client.metadata(study) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2.0)
            explorer = f"{pacs.url}/app/explorer.html#study?uuid={study}"
            _shoot(explorer, args.out / "orthanc-explorer.png", "1100,900")
            meta = f"{pacs.url}/studies/{study}/metadata?expand"
            _shoot(meta, args.out / "orthanc-metadata.png", "1100,420")
            for series in pacs.client.get_json(f"/studies/{study}/series"):
                first = series["Instances"][0]
                if pacs.client.instance_tags(first).get("SOPClassUID") == SC_STORAGE:
                    ds = pydicom.dcmread(io.BytesIO(pacs.client.instance_file(first)))
                    pixels = np.asarray(ds.pixel_array)
                    image = Image.fromarray(pixels.astype(np.uint8))
                    image.thumbnail((640, 640))
                    image.save(args.out / "orthanc-sc-overlay.png", optimize=True)
                    break
        finally:
            sidecar.terminate()
            sidecar.wait(30)
            server.stop()
            pacs.stop()
    for name in ("orthanc-explorer.png", "orthanc-metadata.png", "orthanc-sc-overlay.png"):
        _small_png(args.out / name)
        print(args.out / name, (args.out / name).stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
