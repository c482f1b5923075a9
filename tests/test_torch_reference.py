"""The PyTorch Algorithm 3 of benchmarks/torch_reference.py against nexus-optax.

The JAX model and nexus-optax are checked against a PyTorch rewrite, which is checked
in turn against its own float64 run: agreement here means two independent code bases
compute the same Llama and the same pseudo-gradient.
"""

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="PyTorch comes with the bench extra on Python 3.11")

# pylint: disable=wrong-import-position
from benchmarks.torch_reference import (  # noqa: E402
  TorchLlama,
  TorchNexus,  # noqa: E402
  compare_pseudo_gradients,
  next_token_loss_torch,
  torch_layout,
)
from models import Llama, get_preset, next_token_loss  # noqa: E402
from train.presets import get_run_preset  # noqa: E402


def _jax_model(**overrides):
  config = get_preset("tiny", **overrides)
  model = Llama(config, rngs=nnx.Rngs(3))
  return config, model, jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
  "overrides", [{}, {"tie_embeddings": True, "num_kv_heads": 4}], ids=["gqa-untied", "mha-tied"]
)
def test_torch_llama_matches_the_jax_llama_in_logits_and_gradients(overrides):
  config, model, params = _jax_model(**overrides)
  tokens = np.random.default_rng(0).integers(0, 257, (2, 33))
  torch_model = TorchLlama(config, params, torch.float64)
  torch_tokens = torch.from_numpy(tokens)

  logits = torch_model(torch_tokens[:, :-1]).detach().numpy()
  graphdef = nnx.graphdef(model)
  jax_logits = jax.jit(lambda p: nnx.merge(graphdef, p)(tokens[:, :-1]))(params)
  np.testing.assert_allclose(np.asarray(jax_logits), logits, rtol=0, atol=2e-5)

  loss = lambda p: next_token_loss(nnx.merge(graphdef, p), tokens)
  jax_grads = jax.jit(jax.grad(loss))(params)
  torch_params = [p for _, p in torch_model.named_parameters()]
  torch_grads = torch.autograd.grad(next_token_loss_torch(torch_model, torch_tokens), torch_params)
  jax_named = torch_layout(jax.device_get(jax_grads), config)
  for (name, _), grad in zip(torch_model.named_parameters(), torch_grads):
    scale = float(np.abs(grad.numpy()).max())
    np.testing.assert_allclose(
      jax_named[name], grad.numpy(), rtol=0, atol=1e-4 * scale, err_msg=name
    )


def test_one_outer_step_gives_the_same_pseudo_gradient_as_pytorch_algorithm_3():
  config = get_run_preset("tiny", optimizer="nexus")
  model_config, model, params = _jax_model()
  shape = (config.microbatches, config.micro_batch_size, config.seq_len + 1)
  tokens = np.random.default_rng(1).integers(0, 257, shape).astype(np.int32)
  result = compare_pseudo_gradients(config, model_config, nnx.graphdef(model), params, tokens)
  # The tolerance, between the two float32 implementations.
  assert result["relative_error"] <= 1e-4
  # nexus-optax against the float64 PyTorch run: the displacement is carried, not
  # differenced, so only float32 rounding of the gradients remains.
  assert result["jax_vs_float64"] <= 5e-6
  # Algorithm 3 as written differences theta_start - theta_end in float32, and that
  # cancellation is the whole of the gap between the two float32 results.
  assert result["torch_vs_float64"] == pytest.approx(result["relative_error"], rel=0.05)
  # A second-order part exists, and the agreement resolves it.
  assert result["second_order_over_g_hat"] > 1e-3
  assert result["error_over_second_order"] < 0.02


def test_torch_nexus_step_is_adamw_on_the_pseudo_gradient():
  config = get_run_preset("tiny", optimizer="nexus", lr=1e-2)
  model_config, _, params = _jax_model()
  tokens = torch.from_numpy(np.random.default_rng(2).integers(0, 257, (4, 2, 17)))
  nexus = TorchNexus(TorchLlama(model_config, params, torch.float64), config)
  before = [p.detach().clone() for p in nexus.params]
  g_hat = nexus.pseudo_gradient(tokens)
  nexus.step(tokens)
  # AdamW's first step from zero moments, bias-corrected: p <- p (1 - lr wd) - lr g / (|g| + eps),
  # with decay on matrices only (train.optimizers.decay_mask); ||g_hat|| < clip_norm here.
  for (name, _), old, g, new in zip(nexus.model.named_parameters(), before, g_hat, nexus.params):
    decay = 0.0 if "norm" in name else config.resolved_weight_decay
    expected = old * (1 - config.lr * decay) - config.lr * g / (g.abs() + config.eps)
    torch.testing.assert_close(new.detach(), expected, rtol=0, atol=1e-4 * config.lr)
