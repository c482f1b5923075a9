"""Writes part of the built-in corpus as a user's corpus would look, with its data spec.

  python -m examples.own_data --out mydata [--fraction 0.25]

  mydata/code/*.jsonl.gz      the standard library's modules, one JSON object per line,
                              text in field "content"
  mydata/math/*.parquet       generated math problems, column "text"
  mydata/prose/<work>.txt     Shakespeare, one work per file
  mydata/heldout/*.jsonl      HumanEval and Milton, never trained on
  mydata/spec.yaml            the spec (relative paths; validation held out for math and
                              prose, given as files for code)

Then tokenize, prepare and train on it (the README's "Train on your own data").
"""

import argparse
import gzip
import json
import pathlib
import sys

from train.data.corpus import Corpus, ensure_corpus

SPEC = """\
# A data spec: each domain's training files, its weight and (optionally) its validation files.
domains:
  code:  {{train: ["code/train-*.jsonl.gz"], validation: ["code/validation.jsonl.gz"],
          weight: 0.4, text_key: content}}
  math:  {{train: ["math/*.parquet"], weight: 0.3}}
  prose: {{train: ["prose/*.txt"], weight: 0.3, validation_fraction: 0.2}}
validation_fraction: 0.05
heldout:
  humaneval: ["heldout/humaneval.jsonl"]
  milton: ["heldout/milton.jsonl"]
"""


def take(documents: list[str], fraction: float) -> list[str]:
  return documents[: max(1, round(len(documents) * fraction))]


def write_jsonl(path: pathlib.Path, documents, key: str = "text") -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  payload = "".join(json.dumps({key: doc}, ensure_ascii=False) + "\n" for doc in documents)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "wt", encoding="utf-8") as stream:
    stream.write(payload)


def main(argv=None) -> int:
  # pyarrow takes a second to import, and only the Parquet file of the example needs it.
  import pyarrow as pa
  import pyarrow.parquet as pq

  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument(
    "--fraction", type=float, default=0.25, help="share of each built-in training set to write"
  )
  parser.add_argument(
    "--corpus",
    type=pathlib.Path,
    default=None,
    help="a built corpus folder (default: the built-in corpus, built on first use)",
  )
  args = parser.parse_args(argv)
  if not 0 < args.fraction <= 1:
    print(f"error: --fraction must be in (0, 1], got {args.fraction}.", file=sys.stderr)
    return 2
  corpus = Corpus(args.corpus) if args.corpus else ensure_corpus()
  out = args.out
  code = take(corpus.documents("train", "code"), args.fraction)
  half = len(code) // 2
  write_jsonl(out / "code" / "train-0.jsonl.gz", code[:half], key="content")
  write_jsonl(out / "code" / "train-1.jsonl.gz", code[half:], key="content")
  write_jsonl(
    out / "code" / "validation.jsonl.gz", corpus.documents("validation", "code"), key="content"
  )
  (out / "math").mkdir(parents=True, exist_ok=True)
  math = take(corpus.documents("train", "math"), args.fraction)
  pq.write_table(pa.table({"text": math}), out / "math" / "problems.parquet", row_group_size=2000)
  (out / "prose").mkdir(parents=True, exist_ok=True)
  for index, work in enumerate(take(corpus.documents("train", "prose"), args.fraction)):
    (out / "prose" / f"work-{index:02d}.txt").write_text(work, encoding="utf-8")
  for name in ("humaneval", "milton"):
    write_jsonl(out / "heldout" / f"{name}.jsonl", corpus.documents("heldout", name))
  # Prose has few, long documents: its larger fraction holds out two of the ten works.
  (out / "spec.yaml").write_text(SPEC.format())
  print(
    f"wrote {out}: code (JSONL.gz), math (Parquet), prose (text files), held-out sets, "
    f"and {out / 'spec.yaml'}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
