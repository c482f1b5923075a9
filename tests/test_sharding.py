"""Sharded params on an 8-device CPU mesh give the single-device result."""

import textwrap

from conftest import run_on_cpu_devices

SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import nexus_optax as nx

    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    params = {"w1": rng.normal(size=(16, 32)) * 0.3, "b1": np.zeros(32),
              "w2": rng.normal(size=(32, 8)) * 0.3}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    batches = [{"x": jnp.asarray(rng.normal(size=(4, 8, 16)) + np.arange(4)[:, None, None],
                                 jnp.float32),
                "y": jnp.asarray(rng.normal(size=(4, 8, 8)), jnp.float32)} for _ in range(3)]

    def loss_fn(p, b):
      h = jax.nn.gelu(b["x"] @ p["w1"] + p["b1"])
      return jnp.mean((h @ p["w2"] - b["y"]) ** 2)

    tx = optax.chain(nx.nexus(0.05), optax.adamw(1e-2, weight_decay=0.2))

    def train(params, batches):
      state = tx.init(params)
      @jax.jit
      def step(params, state, microbatches):
        updates, state = tx.update(None, state, params, loss_fn=loss_fn,
                                   microbatches=microbatches)
        return optax.apply_updates(params, updates), state
      for b in batches:
        params, state = step(params, state, b)
      return params, state

    one = jax.devices()[0]
    single, single_state = train(jax.device_put(params, one), jax.device_put(batches, one))

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    param_specs = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None)}
    sharded_params = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)),
                                  params, param_specs)
    batch_sharding = NamedSharding(mesh, P(None, "data"))
    sharded_batches = [jax.device_put(b, batch_sharding) for b in batches]
    sharded, sharded_state = train(sharded_params, sharded_batches)

    max_abs_diff = lambda x, y: max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                                    for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
    diff = max_abs_diff(single, sharded)
    moved = max_abs_diff(single, params)
    specs = {k: list(v.sharding.spec) for k, v in sharded.items()}
    m1, m2 = nx.nexus_metrics(single_state), nx.nexus_metrics(sharded_state)
    print(json.dumps({"max_abs_diff": diff, "moved": moved, "specs": specs,
                      "consensus": [float(m1["consensus"]), float(m2["consensus"])]}))
""")


def test_sharded_params_match_single_device(tmp_path):
  result = run_on_cpu_devices(SCRIPT, timeout=300)
  assert result["moved"] > 1e-3  # training did something
  assert result["max_abs_diff"] < 1e-5, result
  assert result["specs"]["w1"] == [None, "model"], result["specs"]
  assert abs(result["consensus"][0] - result["consensus"][1]) < 1e-4, result
