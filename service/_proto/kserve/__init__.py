"""Generated gRPC stubs (python -m triage_tools.protogen); do not edit."""
