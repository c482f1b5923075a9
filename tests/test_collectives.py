"""The HLO walker of ``benchmarks.collectives`` counts what an outer step executes.

Checked against programs whose collectives are known by construction: psums of a given
size inside scans of given lengths (a loop's collectives run once per iteration, so the
walker must multiply through nested loops), an all-gather, a sub-axis replica group, a
loop without a known trip count (which must stop the walker rather than be counted
once), and the tiny preset's own training step under data parallelism.
"""

import pathlib
import textwrap

from conftest import run_on_cpu_devices

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(f"""
    import json, sys
    sys.path.insert(0, {str(ROOT)!r})
    import jax, jax.numpy as jnp, numpy as np
    from jax import lax
    from jax.sharding import Mesh, PartitionSpec as P
    from benchmarks.collectives import collectives, compile_step, summarize
    from train import parallel

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))
    OUTER, INNER, N, M = 5, 3, 256, 64

    def body(carry, _):
      x, y = carry
      # Both reductions depend on the carry, so XLA cannot hoist them out of the loops.
      x = x + lax.psum(x, "b") * 0.5
      def inner(y, _):
        return y + lax.psum(y, "b"), None
      y, _ = lax.scan(inner, y, None, length=INNER)
      return (x, y), None

    def program(x, y):
      (x, y), _ = lax.scan(body, (x, y), None, length=OUTER)
      return lax.all_gather(x, "b", tiled=True), lax.all_gather(y, "b", tiled=True)

    fn = jax.jit(jax.shard_map(
        program, mesh=mesh, in_specs=(P(("a", "b")), P(("a", "b"))),
        out_specs=(P("a"), P("a")), check_vma=False))
    x = jax.ShapeDtypeStruct((8 * N,), jnp.float32)
    y = jax.ShapeDtypeStruct((8 * M,), jnp.bfloat16)
    synthetic = summarize(collectives(fn.lower(x, y).compile().as_text(), 8))

    def unknown(x, stop):
      def step(c):
        return c[0] + 1, c[1] + lax.psum(c[1], "b")
      return lax.while_loop(lambda c: c[0] < stop[0], step, (0, x))[1]

    unknown_fn = jax.jit(jax.shard_map(
        unknown, mesh=mesh, in_specs=(P(("a", "b")), P()), out_specs=P(("a", "b"))))
    try:
      collectives(unknown_fn.lower(x, jax.ShapeDtypeStruct((1,), jnp.int32))
                  .compile().as_text(), 8)
      raised = ""
    except ValueError as error:
      raised = str(error)

    def branchy(x, flag):
      # A psum under lax.cond inside a scan of OUTER: which branch runs is unknown.
      def body(x, _):
        return lax.cond(flag[0] > 0, lambda v: lax.psum(v, "b"), lambda v: v * 2.0, x), None
      return lax.scan(body, x, None, length=OUTER)[0]

    branchy_text = jax.jit(jax.shard_map(
        branchy, mesh=mesh, in_specs=(P(("a", "b")), P()), out_specs=P(("a", "b")),
        check_vma=False)).lower(x, jax.ShapeDtypeStruct((1,), jnp.int32)).compile().as_text()
    try:
      collectives(branchy_text, 8)
      refused = ""
    except ValueError as error:
      refused = str(error)
    bound = summarize(collectives(branchy_text, 8, conditionals="upper"))

    step_mesh = parallel.make_mesh(parallel.parse_mesh("data=8", 8), False)
    overrides = dict(micro_batch_size=8, seq_len=16, microbatches=3)
    steps = {{}}
    for optimizer in ("adamw", "nexus"):
      config, training, compiled, _ = compile_step("tiny", optimizer, step_mesh, overrides)
      found = collectives(compiled.as_text(), 8)
      summary = summarize(found)
      steps[optimizer] = {{
        "kinds": summary["kinds"],
        "nests": sorted({{tuple(c.loops) for c in found}}),
        "layers": training.model_config.num_layers,
        "param_bytes": sum(4 * leaf.size
                           for leaf in jax.tree.leaves(training.abstract_state.params)),
      }}
    print(json.dumps({{"synthetic": synthetic, "raised": raised, "refused": refused,
                      "bound": bound, "steps": steps}}))
""")


def test_walker_counts_collectives_through_loops_and_the_training_step():
  report = run_on_cpu_devices(SCRIPT, timeout=300)
  outer, inner, n, m = 5, 3, 256, 64
  kinds = report["synthetic"]["kinds"]
  # One f32[N] psum per outer iteration and one bf16[M] psum per inner one, over the
  # 4 devices of axis "b"; tiled all-gathers of f32[N] and bf16[M] at the top level.
  assert kinds["all-reduce"]["count"] == outer + outer * inner
  assert kinds["all-reduce"]["groups"] == [4]
  assert kinds["all-reduce"]["native_bytes"] == outer * 4 * n + outer * inner * 2 * m
  assert kinds["all-gather"]["count"] == 2
  assert kinds["all-gather"]["native_bytes"] == 4 * (4 * n + 2 * m)
  # XLA:CPU widens bf16 collectives to f32; the compiled bytes say so, or are native.
  assert kinds["all-reduce"]["bytes"] in {
    kinds["all-reduce"]["native_bytes"],
    outer * 4 * n + outer * inner * 4 * m,
  }
  assert kinds["all-gather"]["bytes"] in {kinds["all-gather"]["native_bytes"], 4 * 4 * (n + m)}
  nests = report["synthetic"]["bytes_by_loop_nest"]["all-reduce"]
  assert set(nests) == {f"{outer} n=4", f"{outer}x{inner} n=4"}
  assert nests[f"{outer} n=4"] == outer * 4 * n
  assert "known_trip_count" in report["raised"]
  assert "conditional" in report["refused"]
  assert report["bound"]["conditional_count"] == outer
  assert report["bound"]["conditional_bytes"] == outer * 4 * n

  steps = report["steps"]
  for optimizer, step in steps.items():
    got = step["kinds"]
    # Under data parallelism every element of the float32 gradient is summed over the 8
    # devices at least once per step.
    reduced = got["all-reduce"]["bytes"] + got["reduce-scatter"]["bytes"]
    assert reduced >= step["param_bytes"], (optimizer, reduced, step["param_bytes"])
    assert got["all-reduce"]["groups"] == [8], optimizer
    # The layer scan sits inside the micro-batch scan: K = 3 times L layers.
    assert [3, step["layers"]] in step["nests"], (optimizer, step["nests"])
  # Each inner step of Nexus needs the gradient at its own point: never fewer reductions.
  assert (
    steps["nexus"]["kinds"]["all-reduce"]["count"] >= steps["adamw"]["kinds"]["all-reduce"]["count"]
  )
