"""Video2World's output replacement on the condition frames: which formula (spec 2.6 step 4).

After guidance, the network output F of the condition frames is replaced by an F_rep computed
from the condition latent gt and the step's input x_in, before the Euler update:

* "intended" (the default): F_rep = (gt - c_skip x_in) / c_out. The denoised estimate
  D = c_skip x_in + c_out F_rep is then gt exactly, so the condition frames of the result are the
  encoded input (the model card's promise that the input becomes the first frame). diffusers'
  port does the same.
* "reference": F_rep = gt / c_out - c_skip x_in, the reference's code as written (operator
  precedence). D is then gt + c_skip (1 - c_out) x_in, and over the 35 default steps the condition
  frames drift to about 1.6x the encoded input; the generated frames change only through
  attention. Choose it to compare outputs with NVIDIA's own scripts.

Both are evaluated in float32 with the sigma the hooks are given (the reference's bf16 sigma for a
bf16 run); only the formula differs.
"""

from __future__ import annotations

import torch

from .edm import Sigma, f_from_denoised, f_from_denoised_as_written

from cosmos_dist.choices import CONDITION_REPLACEMENTS  # noqa: E402  (the one list; the first is the default)


def condition_output(gt: torch.Tensor, x_in: torch.Tensor, sigma: Sigma, replacement: str = "intended") -> torch.Tensor:
    """F_rep for the condition frames under `replacement` (one of CONDITION_REPLACEMENTS)."""
    if replacement == "intended":
        return f_from_denoised(gt, x_in, sigma)
    if replacement == "reference":
        return f_from_denoised_as_written(gt, x_in, sigma)
    raise ValueError(f"condition_replacement {replacement!r}; choose one of {', '.join(CONDITION_REPLACEMENTS)}")
