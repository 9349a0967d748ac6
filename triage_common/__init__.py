"""Torch-free pieces shared by training (`models`), export (`export`) and serving (`service`).

Only plain types live here: numpy arrays, dataclasses, strings. Nothing here imports torch,
the service, the models or the exporters, so every stage can depend on it.
"""
