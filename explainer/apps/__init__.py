"""The explainer's command-line tools (``triage explain``, ``explain-worker``, ...)."""
