"""Trainable anchor sets between endpoints: Bezier curves and polygonal chains.

    from curves import fit_curve, evaluate_curve
"""

from .base import CURVES, Curve, create_curve, register_curve
from .bezier import Bezier
from .polychain import PolyChain

__all__ = ["CURVES", "Curve", "Bezier", "PolyChain", "create_curve", "register_curve"]
