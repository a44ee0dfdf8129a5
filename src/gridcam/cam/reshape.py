"""Old path of :mod:`gridcam.models.reshape` (how a layer's output becomes a (B,K,h,w) grid), kept
so code that imported it from here keeps working."""

from gridcam.models.reshape import *  # noqa: F401,F403
from gridcam.models.reshape import __all__  # noqa: F401
