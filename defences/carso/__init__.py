"""CARSO (the CARSO paper): adversarial purification conditioned on the classifier's internal representation.

`Carso` is the defence (registry name `carso`); `aggregate(logits (N, B, C), method)` the robust
aggregation of the classifier's logits over N reconstructions into log-probabilities (B, C).
"""

from defences.carso.aggregation import METHODS as AGGREGATIONS
from defences.carso.aggregation import aggregate
from defences.carso.model import Carso
from defences.carso.params import CarsoParams

__all__ = ["AGGREGATIONS", "Carso", "CarsoParams", "aggregate"]
