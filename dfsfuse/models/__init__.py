"""Networks: the frequency-aware teacher, the compact student and the segmentation branch.

Build any of them by name with :func:`create_model`; importing this package registers them.
"""

from . import segmentation, sscm, sspfusion, student, student_fast, teacher  # noqa: F401  (registers the models)  # noqa: F401  (registers the variants)
from .outputs import (
    FUSION,
    FUSION_FEATURES,
    MODEL_KINDS,
    SEGMENTATION,
    ArchModule,
    FusionModel,
    FusionOutput,
    SegmentationModel,
    SegmentationOutput,
)
from .profile import ModelProfile, count_parameters, profile
from .registry import (
    ModelSpec,
    create_model,
    get_model_spec,
    list_models,
    model_from_config,
    model_kind,
    register_model,
)
from .segmentation import FeatureSegHead, Segmenter
from .sscm import SSCMFusion
from .sspfusion import SSPFusion, SSPFusionOutput
from .student import Student
from .student_fast import StudentFast
from .teacher import Teacher

__all__ = [
    "FUSION",
    "FUSION_FEATURES",
    "MODEL_KINDS",
    "SEGMENTATION",
    "ArchModule",
    "FeatureSegHead",
    "FusionModel",
    "FusionOutput",
    "ModelProfile",
    "ModelSpec",
    "SegmentationModel",
    "SegmentationOutput",
    "Segmenter",
    "SSCMFusion",
    "SSPFusion",
    "SSPFusionOutput",
    "Student",
    "StudentFast",
    "Teacher",
    "count_parameters",
    "create_model",
    "get_model_spec",
    "list_models",
    "model_from_config",
    "model_kind",
    "profile",
    "register_model",
]
