"""Video data: decoding, frame sampling, transforms, datasets, the synthetic benchmark, inspection.

=========================  ===================================================================
:mod:`~tada.data.decode`     read frames by index from a video file or a JPEG frame folder
:mod:`~tada.data.sampling`   interval / segment frame sampling and the test views
:mod:`~tada.data.transforms` train / test pipelines on uint8 ``(T, H, W, 3)`` clips
:mod:`~tada.data.labels`     :class:`LabelSpace`: the class names of each head, flip pairs
:mod:`~tada.data.datasets`   annotation parsers (Kinetics, SSV2, SSV1, EK100, UCF101, HMDB51, CSV,
                             folders) and :class:`VideoClipDataset` (bad videos logged and replaced)
:mod:`~tada.data.synth`      the synthetic time-reversal benchmark (``tada synth``)
:mod:`~tada.data.synth_untrimmed`  untrimmed synthetic videos for localisation (``tada synth --untrimmed``)
:mod:`~tada.data.synth_compositional`  compositional zero-shot classes (``tada synth --compositional``)
:mod:`~tada.data.segments`   untrimmed-video annotations (ActivityNet / HACS JSON, EK100 segments)
:mod:`~tada.data.features`   extracted clip features and the localisation datasets over them
:mod:`~tada.data.inspect`    check a dataset's files before training (``tada data inspect``)
=========================  ===================================================================

This layer knows nothing about models or the training engine.
"""
from . import datasets, decode, features, inspect, labels, sampling, segments, synth, synth_compositional, synth_untrimmed, transforms
from .datasets import *  # noqa: F401,F403
from .labels import *  # noqa: F401,F403
from .decode import *  # noqa: F401,F403
from .inspect import *  # noqa: F401,F403
from .sampling import *  # noqa: F401,F403
from .synth import *  # noqa: F401,F403
from .transforms import *  # noqa: F401,F403
from .segments import *  # noqa: F401,F403
from .features import *  # noqa: F401,F403

__all__ = ["decode", "sampling", "transforms", "labels", "datasets", "synth", "inspect", "segments", "features",
           "synth_untrimmed", "synth_compositional"]
for _m in (decode, sampling, transforms, labels, datasets, synth, inspect, segments, features):
    __all__ += [n for n in _m.__all__ if n not in __all__]
del _m
