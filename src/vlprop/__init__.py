"""vlprop: video label propagation with learned dense correspondence."""
__version__ = "0.1.0"

from .config import PRESETS, Preset, PropagationConfig, get_preset  # noqa: E402
from .propagation.engine import PropagationEngine, propagate_features  # noqa: E402
from .session import FrameResult, Propagator  # noqa: E402
from .annotation import AnnotationSession  # noqa: E402
from .tasks.pose import KeypointFrame, KeypointPropagator  # noqa: E402

__all__ = ["Propagator", "AnnotationSession", "FrameResult", "KeypointPropagator", "KeypointFrame", "propagate_features", "PropagationEngine", "PropagationConfig", "Preset",
           "PRESETS", "get_preset", "__version__"]
