"""The Llama placed by the logical-axis rules on a data x fsdp x tensor mesh of 8 CPU
devices gives the single-device loss and gradients."""

import textwrap

from conftest import run_on_cpu_devices

from models.sharding import DEFAULT_RULES

SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from flax import nnx
    from models import PRESETS, Llama, named_shardings, next_token_loss

    assert jax.device_count() == 8, jax.devices()
    model = Llama(PRESETS["tiny"], rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 384, (8, 33)), jnp.int32)
    loss_and_grad = jax.jit(jax.value_and_grad(
        lambda p, t: next_token_loss(nnx.merge(graphdef, p), t)))
    one = jax.devices()[0]
    loss1, grad1 = loss_and_grad(jax.device_put(params, one), jax.device_put(tokens, one))

    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    shardings = named_shardings(params, mesh)
    sharded = jax.tree.map(lambda x, s: jax.device_put(x, s), params, shardings)
    batch = jax.device_put(tokens, NamedSharding(mesh, P(("data", "fsdp"))))
    loss8, grad8 = loss_and_grad(sharded, batch)
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree.leaves(grad1), jax.tree.leaves(grad8)))
    gate = sharded["blocks"]["mlp"]["gate"].get_value()
    print(json.dumps({"loss": [float(loss1), float(loss8)], "grad_diff": diff,
                      "gate_spec": [str(a) for a in gate.sharding.spec],
                      "gate_shard_shape": list(gate.addressable_shards[0].data.shape)}))
""")


def test_logical_rules_shard_the_llama_without_changing_its_math():
  report = run_on_cpu_devices(SCRIPT, timeout=300)
  assert abs(report["loss"][0] - report["loss"][1]) < 1e-5
  assert report["grad_diff"] < 1e-5
  assert report["gate_spec"] == ["None", "fsdp", "tensor"]
  assert report["gate_shard_shape"] == [2, 32, 96]  # [layers, 64 / fsdp 2, 192 / tensor 2]


ACTIVATION_SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from flax import nnx
    from models import Llama, get_preset, named_shardings, next_token_loss
    from models.sharding import activation_sharding

    model = Llama(get_preset("tiny", max_seq_len=512), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 384, (8, 513)), jnp.int32)
    one = jax.devices()[0]
    reference = jax.device_get(jax.jit(jax.value_and_grad(
        lambda p, t: next_token_loss(nnx.merge(graphdef, p), t)))(
            jax.device_put(params, one), jax.device_put(tokens, one)))

    mesh = Mesh(np.array(jax.devices()).reshape(1, 8, 1), ("data", "fsdp", "tensor"))
    sharded = jax.tree.map(jax.device_put, params, named_shardings(params, mesh))
    batch = jax.device_put(tokens, NamedSharding(mesh, P(("data", "fsdp"))))
    report = {}
    for placed in (False, True):
      def loss(p, t):
        if not placed:
          return next_token_loss(nnx.merge(graphdef, p), t)
        with activation_sharding(mesh):
          return next_token_loss(nnx.merge(graphdef, p), t)
      step = jax.jit(jax.value_and_grad(loss))
      temp = step.lower(sharded, batch).compile().memory_analysis().temp_size_in_bytes
      value, grads = step(sharded, batch)
      diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                 for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference[1])))
      report[str(placed)] = {
        "temp": int(temp),
        "loss_diff": abs(float(value) - float(reference[0])),
                             "grad_diff": diff}
    print(json.dumps(report))
""")


def test_activation_sharding_keeps_attention_split_by_batch_under_fsdp():
  report = run_on_cpu_devices(ACTIVATION_SCRIPT, timeout=300)
  for run in report.values():
    assert run["loss_diff"] < 1e-5 and run["grad_diff"] < 1e-5
  # One sequence per device: the [heads, 512, 512] float32 attention scores of one
  # sequence are 4 MiB a layer. Left to itself XLA shards the residual stream along
  # ``embed`` like the weights and keeps all 8 sequences' scores on every device.
  per_sequence_scores = 4 * 512 * 512 * 4
  assert report["False"]["temp"] > 4 * per_sequence_scores
  assert report["True"]["temp"] < report["False"]["temp"] / 3


CONSTRAINT_SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from models import sharding
    from models.llama import RESIDUAL

    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    S = sharding
    placements = {
      "residual": RESIDUAL,
      "heads": (S.BATCH, S.ACTIVATION_HEADS, S.LENGTH, None),
      "kv_heads": (S.BATCH, S.LENGTH, S.ACTIVATION_KV_HEADS, None),
      "mlp": (S.BATCH, S.LENGTH, S.ACTIVATION_MLP),
      "logits": (S.BATCH, S.LENGTH, S.ACTIVATION_VOCAB),
    }
    report = {}
    for name, axes in placements.items():
      def place(x, axes=axes):
        with sharding.activation_sharding(mesh):
          return sharding.constrain(x * 2, axes)
      x = jax.device_put(jnp.ones((8, 4, 4, 4)[: len(axes)]), NamedSharding(mesh, P()))
      placed = jax.jit(place)(x).sharding
      free = jax.jit(lambda x, axes=axes: sharding.constrain(x * 2, axes))(x).sharding
      report[name] = {"placed": [placed.spec[i] if i < len(placed.spec) else None
                                 for i in range(len(axes))],
                      "free_is_replicated": free.is_fully_replicated}
    print(json.dumps(report))
""")


def test_activation_constraint_follows_the_first_matching_rule():
  """Inside ``activation_sharding`` each activation gets the mesh axis of the first rule
  naming its logical axis (a plain first-match reading of DEFAULT_RULES, written out here);
  outside it nothing is placed."""
  first = {}
  for name, mesh_axis in DEFAULT_RULES:
    first.setdefault(name, mesh_axis)

  def expected(*names):
    return [list(a) if isinstance(a, tuple) else a for a in (first.get(n) for n in names)]

  report = run_on_cpu_devices(CONSTRAINT_SCRIPT, timeout=300)
  wanted = {
    "residual": expected("activation_batch", "activation_length", "activation_embed"),
    "heads": expected("activation_batch", "activation_heads", "activation_length", None),
    "kv_heads": expected("activation_batch", "activation_length", "activation_kv_heads", None),
    "mlp": expected("activation_batch", "activation_length", "activation_mlp"),
    "logits": expected("activation_batch", "activation_length", "activation_vocab"),
  }
  assert wanted["mlp"] == [["data", "fsdp"], None, "tensor"]
  for name, spec in wanted.items():
    assert report[name]["placed"] == spec, name
    assert report[name]["free_is_replicated"], name
