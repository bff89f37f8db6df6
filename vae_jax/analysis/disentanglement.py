"""Ground-truth factors and the mutual information gap (MIG) of latents against them.

Pure numpy on histograms: no model, no run (`analysis.encode_split` gives the latents).
"""

import numpy as np

from vae_jax.data.sprites import FACTORS as SPRITE_FACTORS

# Bins per latent unit for the MIG histograms (Chen et al. 2018 use 20).
MIG_BINS = 20


def factor_names(arrays):
  """The ground-truth factors among the features of `arrays` (the sprites'; else none)."""
  return [k for k in SPRITE_FACTORS if k in arrays]


def colour_features(arrays):
  """The features to colour latents by: the factors where known, else the class label."""
  return factor_names(arrays) or [k for k in ('label',) if k in arrays]


def discretize(values, num_bins=MIG_BINS):
  """Each column of values [N, U] into num_bins equal-width bins over its range: int [N, U]."""
  values = np.asarray(values, np.float64)
  out = np.zeros(values.shape, np.int64)
  for j in range(values.shape[1]):
    edges = np.histogram_bin_edges(values[:, j], bins=num_bins)
    out[:, j] = np.digitize(values[:, j], edges[1:-1])  # 0 .. num_bins - 1
  return out


def mutual_information(a, b):
  """Plug-in (histogram) I(a; b) in nats of two discrete sequences [N]."""
  _, a = np.unique(np.asarray(a), return_inverse=True)
  _, b = np.unique(np.asarray(b), return_inverse=True)
  joint = np.zeros((a.max() + 1, b.max() + 1))
  np.add.at(joint, (a, b), 1.0)
  joint /= joint.sum()
  pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
  nz = joint > 0
  return float(np.sum(joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])))


def entropy(v):
  """Plug-in H(v) in nats of a discrete sequence [N]."""
  _, counts = np.unique(np.asarray(v), return_counts=True)
  p = counts / counts.sum()
  return float(-np.sum(p * np.log(p)))


def mig(latents, factors, num_bins=MIG_BINS):
  """The mutual information gap (Chen et al. 2018, "Isolating sources of disentanglement").

  Each latent unit's values (posterior means) are cut into num_bins equal-width bins,
  I(z_j; v_k) is estimated from the histograms, and normalised by H(v_k); for each factor the
  gap is the difference between its two most informative units, and MIG is their mean. 1: every
  factor is captured by one unit alone; 0: no unit stands out for any factor. Factors with a
  single value carry no information and are left out. The plug-in estimate is biased upwards
  by about (bins - 1)(values - 1) / (2N) nats, so use thousands of examples.

  Args:
    latents: [N, U] (e.g. posterior means).
    factors: {name: [N] discrete values}.
    num_bins: bins per latent unit.

  Returns:
    {'mig': float (NaN without an informative factor), 'factors': names used, 'mi': [U, K]
    nats, 'normalized_mi': [U, K] = mi / H(v_k), 'entropy': [K], 'gap': [K], 'top_units':
    [K] (the most informative unit of each factor)}.
  """
  latents = np.asarray(latents)
  names = [k for k, v in factors.items() if entropy(v) > 0]
  binned = discretize(latents, num_bins)
  mi = np.array([[mutual_information(binned[:, j], factors[k]) for k in names]
                 for j in range(latents.shape[1])]).reshape(latents.shape[1], len(names))
  h = np.array([entropy(factors[k]) for k in names])
  normalized = mi / h if len(names) else mi
  top2 = np.sort(normalized, axis=0)[::-1][:2] if latents.shape[1] > 1 else None
  gap = (top2[0] - top2[1]) if top2 is not None else normalized[0]
  return {'mig': float(np.mean(gap)) if len(names) else float('nan'), 'factors': names,
          'mi': mi, 'normalized_mi': normalized, 'entropy': h, 'gap': gap,
          'top_units': np.argmax(normalized, axis=0)}

