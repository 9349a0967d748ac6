"""Generated gRPC stubs (python -m service.protogen); do not edit."""
