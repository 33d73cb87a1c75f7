r"""ModernBERT's long inputs: memory and time of a gradient, attention by blocks against whole.

  python experiments/families/long_inputs.py        # ~2 min on 2 cores; writes long_inputs.md

A random-init ModernBERT of 6 layers of 256 (4 heads, GeGLU 512, every third layer global, a
window of 128 tokens), one row of 2,048 and of 8,192 tokens, dropout on as in training: XLA's
temporaries for the compiled gradient (`memory_analysis`), with the attention by blocks of
`modernbert.QUERY_BLOCK` queries (the default) and of the whole score matrix, and seconds per
gradient (the mean of 3 after a warm-up; the whole matrix at 8,192 tokens is compiled only, its
19 GiB would not leave this machine usable).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
WHOLE = 10 ** 9  # a block no input reaches: the whole matrix


def measure(length: int, block: int, timed: bool) -> dict:
  import jax
  import jax.numpy as jnp
  from research.models import modernbert
  config = modernbert.ModernBertConfig(
      vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=6,
      num_attention_heads=4, max_position_embeddings=8192, attention_dropout=0.0,
      embedding_dropout=0.1, mlp_dropout=0.1)
  model = modernbert.ModernBertModel(config)
  ids = jnp.ones((1, length), jnp.int32)
  params = model.init(jax.random.key(0), ids[:, :8], ids[:, :8])["params"]

  def loss(p):
    out = model.apply({"params": p}, ids, jnp.ones_like(ids), deterministic=False,
                      rngs={"dropout": jax.random.key(0)})
    return (out ** 2).mean()

  modernbert.QUERY_BLOCK = block
  compiled = jax.jit(jax.grad(loss)).lower(params).compile()
  row = {"length": length, "attention": "whole" if block == WHOLE else f"blocks of {block}",
         "temp_gib": compiled.memory_analysis().temp_size_in_bytes / 2 ** 30, "seconds": None}
  if timed:
    jax.block_until_ready(compiled(params))
    start = time.perf_counter()
    for _ in range(3):
      jax.block_until_ready(compiled(params))
    row["seconds"] = (time.perf_counter() - start) / 3
  return row


def main() -> None:
  from research.models import mkl_gemm, modernbert
  block = modernbert.QUERY_BLOCK
  rows = [measure(2048, block, True), measure(2048, WHOLE, True),
          measure(8192, block, True), measure(8192, WHOLE, False)]
  head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                        capture_output=True).stdout.strip()
  lines = ["# ModernBERT's long inputs: attention by blocks against the whole matrix", "",
           f"`python experiments/families/long_inputs.py` at commit {head}, on "
           f"{mkl_gemm.cpu_description()}. A 6 x 256 ModernBERT, one row, the gradient of a "
           "training step (dropout on).", "",
           "| tokens | attention | XLA temporaries (GiB) | seconds per gradient |",
           "|---:|---|---:|---:|"]
  for row in rows:
    seconds = "compiled only" if row["seconds"] is None else f"{row['seconds']:.2f}"
    lines.append(f"| {row['length']:,} | {row['attention']} | {row['temp_gib']:.2f} | "
                 f"{seconds} |")
  (HERE / "long_inputs.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
