"""A working Orthanc configuration for a triage server, and the triage side of the DICOM route.

:func:`orthanc_config` gives the ``orthanc.json`` of an Orthanc 1.10 that the sidecar can
follow (HTTP and DICOM ports, AE title, ``StableAge``, the ``UserMetadata`` the sidecar
writes) and that can forward studies to triage's Storage SCP (a ``DicomModalities`` entry
``triage``: the plain DICOM route). :func:`triage_dicom_toml` gives the ``triage serve``
configuration of that route: its SCP, and Orthanc's DICOM port as the destination of the
results of studies that came in by DICOM (``sources = ["dicom"]``, so results the sidecar
posts over REST are not also sent by C-STORE).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from integrations.orthanc.metadata import USER_METADATA
from triage_common.atomic import atomic_write_text

TRIAGE_MODALITY = "triage"
#: Study metadata the auto-forwarding Lua script sets once it has forwarded a study.
FORWARDED = "triage-forwarded"
FORWARDED_NUMBER = 4308

#: Orthanc's Lua: forward each stable study's CR/DX instances to triage's SCP, once. Results
#: coming back make the study stable again; the metadata mark stops a second forward.
AUTOROUTE_LUA = """-- written by `triage orthanc config --dicom-autoroute`
function OnStableStudy(studyId, tags, metadata)
  local marks = ParseJson(RestApiGet('/studies/' .. studyId .. '/metadata'))
  for _, name in pairs(marks) do
    if name == '%(mark)s' then return end
  end
  local instances = {}
  for _, series in pairs(ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))) do
    local modality = series['MainDicomTags']['Modality']
    if modality == 'CR' or modality == 'DX' then
      for _, id in pairs(series['Instances']) do table.insert(instances, id) end
    end
  end
  if #instances > 0 then
    RestApiPut('/studies/' .. studyId .. '/metadata/%(mark)s', 'yes')
    RestApiPost('/modalities/%(modality)s/store',
                DumpJson({ Resources = instances, Asynchronous = true }, true))
  end
end
"""


@dataclass(frozen=True)
class OrthancSetup:
    """What ``triage orthanc config`` writes a configuration for."""

    storage: Path
    http_port: int = 8042
    dicom_port: int = 4242
    ae_title: str = "ORTHANC"
    stable_age: int = 10
    name: str = "cxr-triage Orthanc"
    triage_dicom_host: str = "127.0.0.1"
    triage_dicom_port: int = 11112
    triage_ae_title: str = "CXRTRIAGE"
    remote_access: bool = False
    plugins: tuple[str, ...] = ()
    autoroute_lua: str = ""  # path of the auto-forwarding Lua script ("" : none)


def orthanc_config(setup: OrthancSetup) -> dict[str, Any]:
    """The ``orthanc.json`` content."""
    config: dict[str, Any] = {
        "Name": setup.name,
        "StorageDirectory": str(setup.storage),
        "IndexDirectory": str(setup.storage),
        "HttpPort": setup.http_port,
        "DicomPort": setup.dicom_port,
        "DicomAet": setup.ae_title,
        "RemoteAccessAllowed": setup.remote_access,
        "AuthenticationEnabled": False,
        "StableAge": setup.stable_age,
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "DicomModalities": {
            TRIAGE_MODALITY: [
                setup.triage_ae_title,
                setup.triage_dicom_host,
                setup.triage_dicom_port,
            ]
        },
        "UserMetadata": {**USER_METADATA, FORWARDED: FORWARDED_NUMBER},
        "SaveJobs": False,
        "Plugins": list(setup.plugins),
        "LuaScripts": [setup.autoroute_lua] if setup.autoroute_lua else [],
    }
    return config


def triage_dicom_toml(setup: OrthancSetup, spool: Path, orthanc_host: str = "127.0.0.1") -> str:
    """The ``[dicom]`` part of a ``triage serve`` configuration for the plain DICOM route."""
    return f"""# The plain DICOM route: Orthanc forwards a study to this SCP
# (POST /modalities/{TRIAGE_MODALITY}/store) and gets the SR, SCs and SEG back by C-STORE.
[dicom]
spool_dir = "{spool}"
port = {setup.triage_dicom_port}
host = "{setup.triage_dicom_host}"
ae_title = "{setup.triage_ae_title}"
complete_on_release = true
quiet_seconds = {max(1, setup.stable_age)}

[[dicom.destinations]]
name = "orthanc"
ae_title = "{setup.ae_title}"
host = "{orthanc_host}"
port = {setup.dicom_port}
sources = ["dicom"]
"""


def write_setup(setup: OrthancSetup, out: Path) -> tuple[Path, Path]:
    """Write ``orthanc.json`` and ``triage-dicom.toml`` into ``out`` (and make the storage),
    and the auto-forwarding Lua script where ``setup.autoroute_lua`` names one."""
    out.mkdir(parents=True, exist_ok=True)
    setup.storage.mkdir(parents=True, exist_ok=True)
    orthanc_json = out / "orthanc.json"
    triage_toml = out / "triage-dicom.toml"
    if setup.autoroute_lua:
        lua = AUTOROUTE_LUA % {"mark": FORWARDED, "modality": TRIAGE_MODALITY}
        atomic_write_text(Path(setup.autoroute_lua), lua)
    atomic_write_text(orthanc_json, json.dumps(orthanc_config(setup), indent=2) + "\n")
    atomic_write_text(triage_toml, triage_dicom_toml(setup, out / "dicom-spool"))
    return orthanc_json, triage_toml
