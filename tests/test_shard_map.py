"""Nexus under shard_map (batch_axis_name), on explicit meshes, and its memory on auto meshes.

One subprocess with 8 CPU devices runs every check and prints a JSON summary.
"""

import textwrap

import pytest
from conftest import run_on_cpu_devices

SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
    import nexus_optax as nx

    assert jax.device_count() == 8, jax.devices()
    GAMMA, K, ROWS = 0.05, 3, 16
    rng = np.random.default_rng(0)
    params = {"w1": rng.normal(size=(6, 16)) * 0.3, "b1": np.zeros(16),
              "w2": rng.normal(size=(16, 4)) * 0.3}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    # Each micro-batch from a shifted distribution, so that the sources disagree.
    steps = [{"x": jnp.asarray(rng.normal(size=(K, ROWS, 6)) + np.arange(K)[:, None, None],
                               jnp.float32),
              "y": jnp.asarray(rng.normal(size=(K, ROWS, 4)), jnp.float32)} for _ in range(3)]

    def loss_fn(p, b):
      h = jnp.tanh(b["x"] @ p["w1"] + p["b1"])
      return jnp.mean((h @ p["w2"] - b["y"]) ** 2)

    def max_abs_diff(x, y):
      return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                 for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))

    def reported(state):
      metrics = nx.nexus_metrics(state)
      return jnp.stack([metrics["inner_loss"], metrics["inner_grad_norm"]])

    def scan_form(batch_axis_name):
      tx = nx.nexus(GAMMA, batch_axis_name=batch_axis_name)
      outer = optax.chain(nx.nexus(GAMMA, batch_axis_name=batch_axis_name), optax.adamw(1e-2))

      def run(params, steps):
        g_hat, _ = tx.update(None, tx.init(params), params, loss_fn=loss_fn,
                             microbatches=steps[0])
        state = outer.init(params)
        for microbatches in steps:
          updates, state = outer.update(None, state, params, loss_fn=loss_fn,
                                        microbatches=microbatches)
          params = optax.apply_updates(params, updates)
        return g_hat, params, reported(state)
      return run

    def multisteps_form(batch_axis_name):
      def outer_steps(params, steps, outer):
        tx = nx.nexus_multisteps(outer, every_k=K, inner_lr=GAMMA,
                                 batch_axis_name=batch_axis_name)
        state = tx.init(params)
        for microbatches in steps:
          for m in range(K):
            batch = jax.tree.map(lambda x: x[m], microbatches)
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
            updates, state = tx.update(grads, state, params, value=loss)
            params = optax.apply_updates(params, updates)
        return params, reported(state)

      def run(params, steps):
        after_sgd, _ = outer_steps(params, steps[:1], optax.sgd(1.0))  # theta - g_hat
        g_hat = jax.tree.map(jnp.subtract, params, after_sgd)
        return (g_hat, *outer_steps(params, steps, optax.adamw(1e-2)))
      return run

    one = jax.devices()[0]
    mesh = Mesh(np.array(jax.devices()), ("data",))
    result = {}
    for form, make in (("nexus", scan_form), ("nexus_multisteps", multisteps_form)):
      single = jax.jit(make(None))(jax.device_put(params, one), jax.device_put(steps, one))
      for axis in ("data", None):
        for check_vma in (True, False):
          run = make(axis)
          # Every replica returns its own g_hat, params and metrics, stacked on a new axis.
          def per_replica(params, steps, run=run):
            return jax.tree.map(lambda x: x[None], run(params, steps))
          mapped = jax.jit(jax.shard_map(per_replica, mesh=mesh,
                                         in_specs=(P(), P(None, "data")),
                                         out_specs=P("data"), check_vma=check_vma))
          try:
            replicas = mapped(params, steps)
          except ValueError as error:  # check_vma shows the replicas' losses differ
            result[f"{form}/{axis}/{check_vma}"] = {"error": str(error)}
            continue
          of = lambda r: jax.tree.map(lambda x: x[r], replicas)
          metrics_error = np.abs(np.stack([of(r)[2] for r in range(8)]) / single[2] - 1)
          result[f"{form}/{axis}/{check_vma}"] = {
              "g_hat_and_params": max(max_abs_diff(single[:2], of(r)[:2]) for r in range(8)),
              "metrics_relative": float(np.max(metrics_error))}
      # pmap, with each device's rows on a leading device axis.
      per_device = jax.tree.map(
          lambda x: jnp.moveaxis(x.reshape(K, 8, ROWS // 8, *x.shape[2:]), 1, 0), steps)
      replicas = jax.pmap(make("data"), axis_name="data", in_axes=(None, 0))(params, per_device)
      of = lambda r: jax.tree.map(lambda x: x[r], replicas)
      result[f"{form}/pmap"] = {
          "g_hat_and_params": max(max_abs_diff(single[:2], of(r)[:2]) for r in range(8)),
          "metrics_relative": float(np.max(np.abs(np.stack([of(r)[2] for r in range(8)])
                                                  / single[2] - 1)))}
      result[f"{form}/moved"] = max_abs_diff(single[1], params)

    # An explicit mesh: the carry, the rounding noise and the state keep the sharding.
    explicit = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    specs = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None)}

    def explicit_loss(p, b):
      h = jnp.tanh(b["x"] @ p["w1"] + p["b1"])
      out = jnp.einsum("bh,ho->bo", h, p["w2"], out_sharding=P("data", None))
      return jnp.mean((out - b["y"]) ** 2)

    tx = optax.chain(nx.nexus(GAMMA, inner_rounding="stochastic"), optax.adamw(1e-2))
    with jax.set_mesh(explicit):
      sharded = {k: jax.device_put(v.astype(jnp.bfloat16), NamedSharding(explicit, specs[k]))
                 for k, v in params.items()}
      microbatches = jax.device_put(steps[0], NamedSharding(explicit, P(None, "data")))

      @jax.jit
      def step(params, state, microbatches):
        updates, state = tx.update(None, state, params, loss_fn=explicit_loss,
                                   microbatches=microbatches)
        return optax.apply_updates(params, updates), state

      new_params, new_state = step(sharded, tx.init(sharded), microbatches)
      noise_specs = []

      def collect(jaxpr):
        for eqn in jaxpr.eqns:
          # The draw meets the value elementwise: added to its bits (bfloat16) or compared
          # with the rounding probability (float16).
          if eqn.primitive.name == "lt" or (
            eqn.primitive.name == "add" and eqn.invars[0].aval.dtype == jnp.uint32
          ):
            noise_specs.extend(str(v.aval.sharding.spec) for v in eqn.invars
                               if hasattr(v, "aval") and len(v.aval.shape) > 0)
          for value in eqn.params.values():
            for inner in (value if isinstance(value, (list, tuple)) else [value]):
              if hasattr(inner, "jaxpr"):
                collect(getattr(inner.jaxpr, "jaxpr", inner.jaxpr))

      collect(jax.make_jaxpr(step)(sharded, tx.init(sharded), microbatches).jaxpr)
    adam = new_state[1][0]
    result["explicit"] = {
        "params": {k: str(v.sharding.spec) for k, v in new_params.items()},
        "mu": {k: str(v.sharding.spec) for k, v in adam.mu.items()},
        "nu": {k: str(v.sharding.spec) for k, v in adam.nu.items()},
        "noise": sorted(set(noise_specs)),
        "want": {k: str(s) for k, s in specs.items()},
        "finite": bool(all(np.isfinite(np.asarray(v, np.float32)).all()
                           for v in new_params.values())),
    }

    # The auto mesh: Nexus's compiled temp is gradient accumulation's, plus next to nothing.
    auto = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    shapes = {"w1": (256, 1024), "b1": (1024,), "w2": (1024, 256)}
    abstract = {k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=NamedSharding(auto, specs[k]))
                for k, s in shapes.items()}
    batch = {name: jax.ShapeDtypeStruct((4, 16, 256), jnp.float32,
                                        sharding=NamedSharding(auto, P(None, "data")))
             for name in ("x", "y")}

    def auto_loss(p, b):
      return jnp.mean((jnp.tanh(b["x"] @ p["w1"] + p["b1"]) @ p["w2"] - b["y"]) ** 2)

    def accumulate(p, m):
      def add(total, b):
        return jax.tree.map(jnp.add, total, jax.grad(auto_loss)(p, b)), None
      return jax.lax.scan(add, jax.tree.map(jnp.zeros_like, p), m)[0]

    outputs = {k: NamedSharding(auto, s) for k, s in specs.items()}
    temp = {}
    for name, fn in (("nexus", lambda p, m: nx.inner_loop(auto_loss, p, m, GAMMA).displacement),
                     ("accumulate", accumulate)):
      compiled = jax.jit(fn, out_shardings=outputs).lower(abstract, batch).compile()
      temp[name] = compiled.memory_analysis().temp_size_in_bytes
    temp["param_bytes_per_device"] = 4 * sum(np.prod(s) for s in shapes.values()) / 4
    result["auto_temp"] = temp
    print(json.dumps(result))
""")


@pytest.fixture(scope="module")
def result():
  return run_on_cpu_devices(SCRIPT, timeout=600)


@pytest.mark.parametrize("form", ["nexus", "nexus_multisteps"])
@pytest.mark.parametrize("check_vma", [True, False])
def test_shard_map_with_batch_axis_name_matches_one_device(result, form, check_vma):
  assert result[f"{form}/moved"] > 1e-3  # three outer steps did something
  mapped = result[f"{form}/data/{check_vma}"]
  assert mapped["g_hat_and_params"] < 1e-6, result
  # The inner loss and gradient norm are the global micro-batch's too.
  assert mapped["metrics_relative"] < 1e-5, result
  unmapped = result[f"{form}/None/{check_vma}"]
  if check_vma:
    # The replicas' losses differ, which check_vma reveals: a one-line pointer to the fix.
    assert "pass batch_axis_name='data'" in unmapped.get("error", ""), result
  else:
    # Each replica normalizes its own rows' gradient and goes its own way.
    assert unmapped["g_hat_and_params"] > 1e-4, result


@pytest.mark.parametrize("form", ["nexus", "nexus_multisteps"])
def test_pmap_with_batch_axis_name_matches_one_device(result, form):
  assert result[f"{form}/pmap"]["g_hat_and_params"] < 1e-6, result
  assert result[f"{form}/pmap"]["metrics_relative"] < 1e-5, result


def test_explicit_mesh_keeps_every_parameter_sharding(result):
  explicit = result["explicit"]
  assert explicit["finite"]
  assert explicit["params"] == explicit["want"]
  assert explicit["mu"] == explicit["want"] and explicit["nu"] == explicit["want"]
  # The rounding noise reaches its comparison in each parameter's sharding, not replicated.
  assert explicit["noise"] and set(explicit["noise"]) <= set(explicit["want"].values()), explicit


def test_auto_mesh_temp_memory_is_accumulations(result):
  temp = result["auto_temp"]
  # A replicated carry would add 3/4 of a float32 parameter copy per device.
  assert temp["nexus"] - temp["accumulate"] < 0.01 * temp["param_bytes_per_device"], temp
