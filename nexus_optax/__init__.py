"""nexus-optax: the Nexus optimizer (arXiv 2604.09258) as optax transformations.

``optax.chain(nexus_optax.nexus(inner_lr), optax.adamw(lr))`` runs K normalized
SGD inner steps over K micro-batches and hands the displacement to AdamW as a
pseudo-gradient. :func:`nexus_multisteps` is the same algorithm for loops that
feed one micro-batch per call.
"""

from nexus_optax import diagnostics
from nexus_optax._inner_step import InnerRounding, Normalize
from nexus_optax._metrics import InnerStepSums, NexusMetrics, nexus_metrics
from nexus_optax._multisteps import NexusMultiStepsState, nexus_multisteps
from nexus_optax._nexus import InnerLoopResult, NexusState, inner_loop, nexus

__version__ = "0.2.0"

__all__ = [
  "InnerLoopResult",
  "InnerRounding",
  "InnerStepSums",
  "NexusMetrics",
  "NexusMultiStepsState",
  "NexusState",
  "Normalize",
  "diagnostics",
  "inner_loop",
  "nexus",
  "nexus_metrics",
  "nexus_multisteps",
]
