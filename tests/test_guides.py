"""The documentation's guides: each runs its example, and what the page says of it holds.

References are written here, independently of the library: Algorithm 1 as a plain loop of
normalized steps (in float64 NumPy where the model allows), AdamW's and SGD's first step,
and the counts the pages quote.
"""

import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import run_on_cpu_devices

ROOT = pathlib.Path(__file__).resolve().parents[1]
GUIDES = ROOT / "docs" / "guides"


def reference_pseudo_gradient(loss, params, microbatches, gamma):
  """Algorithm 1 as a loop: K steps of gamma * g / ||g|| (one global norm), then start - end."""
  point = params
  for m in range(jax.tree.leaves(microbatches)[0].shape[0]):
    grads = jax.grad(loss)(point, jax.tree.map(lambda leaf, m=m: leaf[m], microbatches))
    norm = math.sqrt(
      sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in jax.tree.leaves(grads))
    )
    point = jax.tree.map(lambda p, g, norm=norm: p - gamma * g / norm, point, grads)
  return jax.tree.map(jnp.subtract, params, point)


def _leaves(tree):
  return [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(tree)]


def test_plain_jax_pseudo_gradient_is_algorithm_1_in_float64():
  from examples import plain_jax

  result = plain_jax.main(["--steps", "30"])
  batches = {k: np.asarray(v, np.float64) for k, v in result["first_microbatches"].items()}
  w, b = np.zeros(plain_jax.FEATURES), 0.0
  start = np.concatenate([w, [b]])
  for x, y in zip(batches["x"], batches["y"]):  # d/d(w, b) of mean((x w + b - y)^2)
    residual = x @ w + b - y
    grad = np.concatenate([2 * x.T @ residual, [2 * residual.sum()]]) / len(y)
    step = 0.01 * grad / np.linalg.norm(grad)
    w, b = w - step[:-1], b - step[-1]
  expected = start - np.concatenate([w, [b]])
  got = np.concatenate([np.ravel(result["first_pseudo_gradient"][k]) for k in ("w", "b")])
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-8)
  assert result["losses"][-1] < 0.2 * result["losses"][0]


def _assert_first_adamw_step(initial, after, reference, lr=1e-2, weight_decay=0.1):
  """AdamW's first update is -lr * (sign(g) + weight_decay * p) where g is not tiny."""
  for p0, p1, g in zip(_leaves(initial), _leaves(after), _leaves(reference)):
    clear = np.abs(g) > 1e-6
    expected = p0 - lr * (np.sign(g) + weight_decay * p0)
    np.testing.assert_allclose(p1[clear], expected[clear], rtol=1e-4, atol=1e-6)


def test_flax_linen_guide_both_forms_take_adamws_step_along_algorithm_1():
  from examples import flax_linen

  one = flax_linen.main(["--steps", "1"])
  assert one["max_form_difference"] < 1e-6
  model, microbatches = one["model"], flax_linen.make_microbatches(0)
  reference = reference_pseudo_gradient(
    lambda params, batch: flax_linen.mse(model, params, batch),
    one["initial_params"],
    microbatches,
    0.01,
  )
  _assert_first_adamw_step(one["initial_params"], one["scan_params"], reference)
  _assert_first_adamw_step(one["initial_params"], one["transparent_params"], reference)
  many = flax_linen.main(["--steps", "8"])
  assert many["max_form_difference"] < 1e-3 and many["loss"] < one["loss"]


def test_flax_nnx_guide_both_forms_take_adamws_step_along_algorithm_1():
  from flax import nnx

  from examples import flax_nnx

  one = flax_nnx.main(["--steps", "1"])
  assert one["max_form_difference"] < 1e-6
  graphdef, initial_state = nnx.split(flax_nnx.MLP(nnx.Rngs(0)), nnx.Param)
  reference = reference_pseudo_gradient(
    lambda state, batch: flax_nnx.mse(nnx.merge(graphdef, state), batch),
    initial_state,
    flax_nnx.make_microbatches(0),
    0.01,
  )
  _assert_first_adamw_step(one["initial_params"], one["scan_params"], reference)
  _assert_first_adamw_step(one["initial_params"], one["transparent_params"], reference)
  many = flax_nnx.main(["--steps", "8"])
  assert many["max_form_difference"] < 1e-3 and many["loss"] < one["loss"]


def test_equinox_guide_both_forms_take_sgds_step_along_algorithm_1():
  import equinox as eqx

  from examples import equinox_multisteps

  one = equinox_multisteps.main(["--steps", "1"])
  assert one["max_form_difference"] < 1e-6
  params, static = eqx.partition(one["initial_model"], eqx.is_inexact_array)
  reference = reference_pseudo_gradient(
    lambda p, batch: equinox_multisteps.model_loss(eqx.combine(p, static), batch),
    params,
    equinox_multisteps.make_microbatches(0),
    0.01,
  )
  for model in (one["scan_model"], one["transparent_model"]):
    after = eqx.filter(model, eqx.is_inexact_array)
    for p0, p1, g in zip(_leaves(params), _leaves(after), _leaves(reference)):
      np.testing.assert_allclose(p1, p0 - 0.5 * g, rtol=1e-4, atol=1e-7)  # SGD's first step
  assert np.isfinite(one["inner_loss"])
  many = equinox_multisteps.main(["--steps", "8"])
  assert many["max_form_difference"] < 1e-5


def test_data_parallel_guide_matches_one_device_and_names_the_missing_axis():
  result = run_on_cpu_devices(
    "import json\nfrom examples import data_parallel\nprint(json.dumps(data_parallel.main([])))",
    devices=4,
  )
  assert result["devices"] == 4
  assert result["max_difference"] < 1e-6
  assert "batch_axis_name='data'" in result["error"]


def test_frozen_parameters_guide_keeps_frozen_leaves_bit_identical():
  from examples import frozen_parameters

  results = frozen_parameters.main([])
  initial = frozen_parameters.initial_params()
  heads = []
  for params in results.values():
    np.testing.assert_array_equal(params["embedding"], initial["embedding"])
    assert float(jnp.max(jnp.abs(params["head"]["w"] - initial["head"]["w"]))) > 1e-3
    heads.append(_leaves(params["head"]))
  for other in heads[1:]:  # three ways of freezing train the head alike
    for a, b in zip(heads[0], other):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bfloat16_guide_nearest_loses_the_second_order_term_and_stochastic_keeps_part():
  from examples import bfloat16

  errors = bfloat16.main(["--seeds", "32"])["errors"]
  nearest, one_seed, mean = errors.values()
  assert nearest > 0.9
  assert mean < 0.75 * nearest and mean < one_seed


def test_inner_point_guide_saves_one_parameter_copy_at_the_same_pseudo_gradient():
  from examples import inner_point_memory

  result = inner_point_memory.main([])
  assert result["relative_difference"] < 1e-6
  saved = result["temp_bytes"]["default"] - result["temp_bytes"]["loss_takes_displacement"]
  assert saved >= 0.9 * result["parameter_bytes"]


def test_gamma_and_k_guide_second_order_grows_as_gamma_squared_and_consensus_is_exact():
  from examples import choosing_gamma_and_k

  rows = {(row["gamma"], row["k"]): row for row in choosing_gamma_and_k.main([])["rows"]}
  for k in (2, 4, 8):
    slope = math.log10(rows[1e-2, k]["second_order_norm"] / rows[1e-3, k]["second_order_norm"])
    assert 1.8 < slope < 2.2, (k, slope)
    assert abs(rows[1e-3, k]["consensus"] - rows[1e-3, k]["exact_mean_cosine"]) < 2e-3
  for gamma in choosing_gamma_and_k.GAMMAS:
    assert math.isnan(rows[gamma, 1]["consensus"])
    assert rows[gamma, 1]["second_order_norm"] == 0.0
    assert rows[gamma, 1]["pseudo_grad_norm"] == pytest.approx(gamma, rel=1e-5)


def test_pod_costs_guide_counts_k_all_reduces_against_one():
  result = run_on_cpu_devices(
    "import json\nfrom examples import pod_collectives\n"
    "print(json.dumps(pod_collectives.main([])))",
    devices=4,
  )
  counted, k = result["all_reduced_bytes"], result["k"]
  assert counted["accumulation"] == result["parameter_bytes"]
  # K gradients, plus the K scalar losses that Nexus averages with them.
  assert counted["nexus"] == k * (result["parameter_bytes"] + 4)


def test_every_guide_includes_a_runnable_example_and_every_example_has_a_guide():
  included = set()
  for page in sorted(GUIDES.glob("*.md")):
    if page.name == "index.md":
      continue
    names = re.findall(r"```\{literalinclude\} \.\./\.\./examples/(\w+\.py)", page.read_text())
    assert names, f"{page.name} includes no example"
    for name in names:
      assert (ROOT / "examples" / name).exists(), name
    included.update(names)
  guide_examples = {
    path.name
    for path in (ROOT / "examples").glob("*.py")
    if path.name not in ("__init__.py", "quickstart.py", "own_data.py")
  }
  assert guide_examples <= included
  index = (GUIDES / "index.md").read_text()
  for page in GUIDES.glob("*.md"):
    assert page.name == "index.md" or page.stem in index, page.name
