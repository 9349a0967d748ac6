"""One study from Part-10 bytes to the model input: headers, eligibility, pixels, preprocessing.

:func:`decode_study` is the unit of work a decode worker runs (:mod:`service.stages.decode_pool`)
and, with ``decode.in_process``, what the request thread runs itself:

    every instance -> header.read_header      (budgets checked, deflate inflated with a bound)
    the headers    -> eligibility             (one StudyInstanceUID; the frontal chest image)
    the chosen one -> decode.decode_instance  (display image in [0, 1], reduced resolution)
                   -> preprocess              (triage_common.preprocess: the model input)

``at(i)`` is called before instance ``i`` is touched, so that a supervisor can name the
instance a crash or a timeout happened on.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from service.config import EligibilityConfig
from service.core.types import BytesLike, DecodedStudy, Selection
from service.stages.decode import DecodeOptions, decode_instance
from service.stages.eligibility import select_frontal, study_uid
from service.stages.header import read_header
from triage_common.preprocess import PreprocessSpec, preprocess


def _nowhere(index: int) -> None:
    del index


def _light(selection: Selection) -> Selection:
    """The selection without the parsed data sets (small, cheap to send between processes)."""
    return Selection(
        chosen=dataclasses.replace(selection.chosen, dataset=None, inflated=None),
        ignored=selection.ignored,
        notes=selection.notes,
    )


def decode_study(
    instances: Sequence[BytesLike],
    options: DecodeOptions,
    rules: EligibilityConfig,
    spec: PreprocessSpec,
    *,
    want_display: bool = False,
    at: Callable[[int], None] = _nowhere,
) -> DecodedStudy:
    """Headers, eligibility, the chosen image decoded and preprocessed; raises core errors."""
    start, cpu0 = time.perf_counter(), time.thread_time()
    headers = []
    for i, data in enumerate(instances):
        at(i)
        headers.append(
            read_header(
                data,
                i,
                options.max_pixels,
                max_aspect_ratio=options.max_aspect_ratio,
                max_inflated_bytes=options.max_inflated_bytes,
                max_compression_ratio=options.max_compression_ratio,
            )
        )
    uid = study_uid(headers)
    selection = select_frontal(headers, rules)
    chosen = selection.chosen
    at(chosen.index)
    cpu1 = time.thread_time()
    decoded = decode_instance(instances[chosen.index], chosen, options)
    cpu2 = time.thread_time()
    image = preprocess(decoded.display, spec)
    cpu3 = time.thread_time()
    cpu_ms = {
        "header": (cpu1 - cpu0) * 1000.0,
        "decode": (cpu2 - cpu1) * 1000.0,
        "preprocess": (cpu3 - cpu2) * 1000.0,
    }
    wall_ms = (time.perf_counter() - start) * 1000.0
    display = decoded.display if want_display else None
    return DecodedStudy(
        uid, _light(selection), decoded.reduce_level, decoded.box, image, display, cpu_ms, wall_ms
    )
