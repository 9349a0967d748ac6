"""The Orthanc integration: a sidecar that follows Orthanc's ``/changes`` feed and triages.

- :mod:`integrations.orthanc.rest`: a small Orthanc REST client (standard library only).
- :mod:`integrations.orthanc.config`: a working ``orthanc.json`` for a triage server.
- :mod:`integrations.orthanc.process`: Orthanc as a child process (tests, bench, screenshots).
- :mod:`integrations.orthanc.state`: the sidecar's durable state (change sequence, studies).
- :mod:`integrations.orthanc.sidecar`: the follower itself.
"""
