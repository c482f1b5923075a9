"""The paths that only an accelerator exercises in earnest: bf16 compute in the training step,
the fused attention kernels, and a step sharded over the real devices.

They run everywhere (the CPU takes the XLA path of each), and ``python -m
benchmarks.accelerator`` runs them, with the rest of the ``accelerator`` marker, on a GPU or
TPU. Each holds the fast path to an independent slower one: float32 compute, the model's own
masked-softmax attention, one device.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import Llama, get_preset, next_token_loss
from train import parallel
from train.build import build_training
from train.presets import get_run_preset

pytestmark = pytest.mark.accelerator
PLATFORM = jax.default_backend()
# cuDNN's flash attention exists on NVIDIA GPUs only; "xla" is dot_product_attention's
# own path everywhere.
IMPLEMENTATIONS = ["xla"] + (["cudnn"] if PLATFORM == "gpu" else [])


def relative(got, want) -> float:
  got, want = np.float64(got), np.float64(want)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def loss_and_grads(config, tokens):
  model = Llama(config, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  step = jax.jit(jax.value_and_grad(lambda p: next_token_loss(nnx.merge(graphdef, p), tokens)))
  return step, params


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_fused_attention_in_bf16_is_as_close_to_float32_as_the_model_s_own(implementation):
  # cuDNN wants a head width that is a multiple of 8 and bf16 operands.
  config = get_preset("tiny", compute_dtype="bfloat16", num_kv_heads=2, head_dim=16)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 257, (4, 129)), jnp.int32)
  reference_step, params = loss_and_grads(
    dataclasses.replace(config, compute_dtype="float32"), tokens
  )
  loss32, grads32 = jax.device_get(reference_step(params))
  errors = {}
  for impl in (None, implementation):
    step, params = loss_and_grads(dataclasses.replace(config, attention_impl=impl), tokens)
    loss, grads = jax.device_get(step(params))
    errors[impl] = (
      abs(float(loss) - float(loss32)) / float(loss32),
      max(relative(g, r) for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads32))),
    )
    if impl == "cudnn":  # the kernel really runs, not a fallback
      assert "cudnn" in step.lower(params).compile().as_text().lower()
  (own_loss, own_grads), (fused_loss, fused_grads) = errors[None], errors[implementation]
  assert own_grads > 1e-4, errors  # bf16 really ran
  assert fused_loss <= 2 * own_loss + 1e-3, errors
  assert fused_grads <= 2 * own_grads + 1e-3, errors


def test_a_bf16_compute_training_step_stays_close_to_float32():
  mesh = parallel.make_mesh(parallel.parse_mesh("data=1", jax.device_count()), False)
  config = get_run_preset("tiny", optimizer="nexus")
  tokens = np.random.default_rng(1).integers(0, 257, (4, 4, 65)).astype(np.int32)
  metrics = {}
  for dtype in ("float32", "bfloat16"):
    training = build_training(config, mesh, model_config=get_preset("tiny", compute_dtype=dtype))
    state = training.init()
    batch = jax.device_put(tokens, training.batch_sharding)
    _, metrics[dtype] = jax.device_get(training.step(state, batch))
    assert training.model_config.param_dtype == "float32"
  for name in ("train_loss", "update_norm", "nexus/pseudo_grad_norm"):
    want, got = float(metrics["float32"][name]), float(metrics["bfloat16"][name])
    assert abs(got - want) / abs(want) < 2e-2, (name, got, want)
  assert float(metrics["float32"]["train_loss"]) != float(metrics["bfloat16"]["train_loss"])


@pytest.mark.skipif(jax.local_device_count() < 2, reason="one device: nothing to shard over")
def test_a_nexus_step_sharded_over_every_device_gives_the_one_device_step():
  devices = jax.local_device_count()
  config = get_run_preset("tiny", optimizer="nexus", micro_batch_size=2 * devices)
  tokens = np.random.default_rng(2).integers(0, 257, (4, 2 * devices, 65)).astype(np.int32)
  every = f"data={devices // 2},fsdp=-1" if devices % 2 == 0 else "data=-1"
  results = {}
  for name, mesh_text in (("one", "data=1"), ("all", every)):
    mesh = parallel.make_mesh(parallel.parse_mesh(mesh_text, devices), False)
    training = build_training(config, mesh)
    state, metrics = training.step(training.init(), jax.device_put(tokens, training.batch_sharding))
    results[name] = jax.device_get((state.params, metrics))
    if name == "all":
      assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == devices
  (one_params, one), (all_params, every_device) = results["one"], results["all"]
  for name in ("train_loss", "nexus/pseudo_grad_norm"):
    assert abs(float(every_device[name]) / float(one[name]) - 1) < 1e-5, name
  # AdamW's first step is lr * g / (|g| + eps): where |g| is near eps, the shards' other
  # order of summation moves it by more than float32's epsilon, so the bound is 1 % of lr.
  for got, want in zip(jax.tree.leaves(all_params), jax.tree.leaves(one_params)):
    np.testing.assert_allclose(got, want, atol=0.01 * config.lr)
