"""``pytorch_wavelets`` DWT/IDWT, imported without its ``pkg_resources`` deprecation warning.

pytorch-wavelets 1.3.0 imports ``pkg_resources`` at import time (hence the ``setuptools<81``
dependency); the warning that triggers says nothing a dfsfuse user can act on.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    from pytorch_wavelets import DWTForward, DWTInverse

__all__ = ["DWTForward", "DWTInverse"]
