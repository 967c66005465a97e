"""Trainable anchor sets between endpoints: Bezier curves and polygonal chains.

    from landscape.curves import fit_curve, evaluate_curve, load_curve
"""

from .base import CURVES, Curve, create_curve, register_curve
from .bezier import Bezier
from .evaluate import CurveEvaluation, evaluate_curve
from .fit import ConnectConfig, CurveResult, LoadedCurve, fit_curve, load_curve, save_curve
from .polychain import PolyChain
from .subspace import curve_subspace

__all__ = ["CURVES", "Curve", "Bezier", "PolyChain", "create_curve", "register_curve", "ConnectConfig",
           "CurveResult", "LoadedCurve", "fit_curve", "load_curve", "save_curve", "CurveEvaluation",
           "evaluate_curve", "curve_subspace"]
