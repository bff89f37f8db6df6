"""The networks' 2-D convolution: lax's, with a gradient that stays fast inside XLA:CPU loops.

The fused train chunk runs its steps in one `lax.scan`, a while loop. Inside a loop XLA:CPU
keeps the gradient convolutions of JAX's autodiff in the dimension orders autodiff writes them
(the flipped kernel as `01oi`, the kernel gradient with batch and features swapped): its Eigen
convolution does not take those, so they ran as generic loops, 10-25x slower than the same
step outside the loop (jax-ml/jax#12868; measured on the conv hierarchy here: 1.32 s vs 0.09 s
a step, unoptimised XLA). Outside loops XLA inserts the transposes itself.

`conv_general_dilated` computes the same convolution as lax's, and on CPU its VJP writes the
two gradient convolutions in the standard NHWC/HWIO order with the transposes explicit (behind
an optimization barrier, so XLA cannot fold them back into the convolution). The gradients are
lax's bit for bit (tests/test_conv_cpu.py); only where the work runs changes. On other
platforms, and for anything but a plain 2-D NHWC/HWIO convolution (dilations, feature groups),
it is lax's own.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _is_plain(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count):
  if lhs.ndim != 4 or feature_group_count != 1:
    return False
  if any(d != 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ())):
    return False
  standard = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return given == standard


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, preferred_element_type=None):
  """lax.conv_general_dilated (flax's nn.Conv calling convention)."""
  if (jax.default_backend() != 'cpu' or preferred_element_type is not None
      or not _is_plain(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                       feature_group_count)):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  strides = tuple(window_strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv(lhs, rhs, strides, pads, precision)


def _lax_conv(x, w, strides, pads, precision, **kwargs):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                  precision=precision, **kwargs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, pads, precision):
  """x [B, H, W, I] * w [kh, kw, I, O] -> [B, Ho, Wo, O]."""
  return _lax_conv(x, w, strides, pads, precision)


def _conv_fwd(x, w, strides, pads, precision):
  return _lax_conv(x, w, strides, pads, precision), (x, w)


def _conv_bwd(strides, pads, precision, residuals, g):
  """The transposes of the convolution (as autodiff's), in NHWC/HWIO order; g [B, Ho, Wo, O]."""
  x, w = residuals
  k, n, m = w.shape[:2], x.shape[1:3], g.shape[1:3]
  # Input gradient: g dilated by the stride, convolved with the flipped kernel, its in and out
  # channels swapped ([kh, kw, O, I] as HWIO).
  w_t = lax.optimization_barrier(jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2))
  pads_x = tuple((k[d] - 1 - pads[d][0], n[d] - (m[d] - 1) * strides[d] - 1 + pads[d][0])
                 for d in range(2))
  gx = _lax_conv(g, w_t, (1, 1), pads_x, precision, lhs_dilation=strides,
                 preferred_element_type=x.dtype)                          # [B, H, W, I]
  # Kernel gradient: x's channels as the batch and its batch as the features ([I, H, W, B]),
  # g as the kernel ([Ho, Wo, B, O]) dilated by the stride -> [I, kh, kw, O].
  x_t, g_t = lax.optimization_barrier((x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3)))
  pads_w = tuple((pads[d][0], (m[d] - 1) * strides[d] + k[d] - n[d] - pads[d][0])
                 for d in range(2))
  gw = _lax_conv(x_t, g_t, (1, 1), pads_w, precision, rhs_dilation=strides,
                 preferred_element_type=w.dtype)
  return gx, gw.transpose(1, 2, 0, 3)                                     # [kh, kw, I, O]


_conv.defvjp(_conv_fwd, _conv_bwd)


# flax's conv layer with this convolution: the same module, parameters and names as nn.Conv.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
