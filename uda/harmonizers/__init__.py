"""Gradient harmonizers (Gram matrix -> loss weights) and the gradient engine. Plain PyTorch.

Example, in any training loop::

    from uda.harmonizers import GHPP, harmonized_backward

    optimizer.zero_grad()
    stats = harmonized_backward([align_loss, cls_loss], model.parameters(), GHPP(lam=0.5))
    optimizer.step()

Every harmonizer is a map ``weights(gram) -> tau`` (and ``coefficients(gram) -> A`` for the harmonized
gradients); see each class for the paper equation it implements.
"""

from uda.harmonizers.aligned_mtl import AlignedMTL
from uda.harmonizers.base import Harmonizer
from uda.harmonizers.cagrad import CAGrad
from uda.harmonizers.config import ConFIG, ConFIGMomentum
from uda.harmonizers.dbmtl import DBMTL
from uda.harmonizers.dualproj import DualProj
from uda.harmonizers.engine import (
    GradStats,
    feature_space_backward,
    harmonized_backward,
    loss_gradients,
    three_pass_backward,
)
from uda.harmonizers.fairgrad import FairGrad
from uda.harmonizers.famo import FAMO
from uda.harmonizers.flip import SignFlip
from uda.harmonizers.gh import GH
from uda.harmonizers.ghpp import GHPP, GHPPRotation
from uda.harmonizers.gradvac import GradVac
from uda.harmonizers.imtl_g import IMTLG
from uda.harmonizers.mgda import MGDA
from uda.harmonizers.nash_mtl import NashMTL
from uda.harmonizers.none import NoHarmonizer
from uda.harmonizers.pcgrad import PCGrad
from uda.harmonizers.prograd import ProGrad
from uda.harmonizers.upgrad import UPGrad

__all__ = [
    "DBMTL",
    "FAMO",
    "GH",
    "GHPP",
    "IMTLG",
    "MGDA",
    "AlignedMTL",
    "CAGrad",
    "ConFIG",
    "ConFIGMomentum",
    "DualProj",
    "FairGrad",
    "GHPPRotation",
    "GradStats",
    "GradVac",
    "Harmonizer",
    "feature_space_backward",
    "NashMTL",
    "NoHarmonizer",
    "PCGrad",
    "ProGrad",
    "UPGrad",
    "SignFlip",
    "harmonized_backward",
    "loss_gradients",
    "three_pass_backward",
]
