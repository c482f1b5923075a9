"""Token caches hold what prepare wrote, and held-out text stays out of training.

References are independent of the code under test: ``hashlib`` over the files' bytes,
bytes flipped or cut by the test, documents written by the test, and the byte tokenizer's
stream rebuilt from their UTF-8 bytes.
"""

import hashlib
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from train.data import DataError, TokenCache, load_spec
from train.data import prepare as prepare_lib
from train.data import verify as verify_lib
from train.data.prepare import prepare

REPO = pathlib.Path(__file__).resolve().parents[1]
END_OF_DOCUMENT = 256  # the byte tokenizer's

PARAGRAPH = "A long paragraph that a benchmark copies: " + "words and more words " * 20
# Training documents; the third is the paragraph with its whitespace rearranged, indented
# past the characters that a match's first check reads.
TRAIN = [
  "The quick brown fox jumps over the lazy dog.\n",
  "def square(x):\n    return x * x\n",
  "\n" + " " * 300 + PARAGRAPH.replace(" ", "  \n\t") + "   ",
  "Ünïcödé: naïve café, 日本語.",
  "an ordinary document that nothing copies",
  "one more training document\n\nwith a blank line",
]
VALIDATION = ["a validation document of its own", "another validation document"]
# Two copies of training documents (one exact, one with other whitespace) and a new one.
HELDOUT = [TRAIN[0], PARAGRAPH, "a benchmark question that training never saw"]


def sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def write_corpus(folder: pathlib.Path) -> pathlib.Path:
  for name, documents in (("train", TRAIN), ("val", VALIDATION), ("bench", HELDOUT)):
    (folder / name).mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"text": d}) + "\n" for d in documents)
    (folder / name / "docs.jsonl").write_text(lines)
  spec = folder / "spec.yaml"
  spec.write_text(
    "domains:\n  prose: {train: [train/docs.jsonl], validation: [val/docs.jsonl]}\n"
    "heldout:\n  bench: [bench/docs.jsonl]\n"
  )
  return spec


def byte_stream(documents) -> np.ndarray:
  """The byte tokenizer's stream of documents, from their UTF-8 bytes."""
  return np.concatenate(
    [np.append(np.frombuffer(d.encode(), np.uint8), END_OF_DOCUMENT) for d in documents]
  ).astype(np.uint16)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def good_cache(corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("good") / "cache"
  prepare(load_spec(corpus), "bytes", out, workers=1, show_progress=False)
  return out


@pytest.fixture
def cache_copy(good_cache, tmp_path):
  """A copy of the good cache for a test to damage, and the spec that prepared it."""
  out = tmp_path / "cache"
  shutil.copytree(good_cache, out)
  return out


def first_part(out: pathlib.Path, key: str = "train/prose") -> dict:
  return json.loads((out / "manifest.json").read_text())["sets"][key]["parts"][0]


def verify_main(out, capsys) -> tuple[int, str, str]:
  code = verify_lib.main([str(out)])
  captured = capsys.readouterr()
  return code, captured.out.strip(), captured.err.strip()


def prepare_main(args, capsys) -> tuple[int, str]:
  code = prepare_lib.main([*map(str, args), "--no-progress"])
  captured = capsys.readouterr()
  assert code == 0, captured.err
  return code, captured.out


# ---- checksums and verify ---------------------------------------------------------------


def test_each_part_records_the_sha256_of_its_bytes_and_verify_passes_a_good_cache(
  good_cache, corpus, tmp_path
):
  manifest = json.loads((good_cache / "manifest.json").read_text())
  parts = [part for entry in manifest["sets"].values() for part in entry["parts"]]
  assert len(parts) == 3
  for part in parts:
    data = good_cache / part["file"]
    docs = data.with_name(data.name.replace(".bin", ".docs.npy"))
    assert part["sha256"] == sha256(data) and data.stat().st_size == 2 * part["tokens"]
    assert part["docs_sha256"] == sha256(docs) and part["docs_size"] == docs.stat().st_size
  result = subprocess.run(
    [sys.executable, "-m", "train.data.verify", str(good_cache)],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  (line,) = result.stdout.strip().splitlines()
  assert "3 parts (6 files" in line and "match their sizes and sha256" in line, line
  # A prepare killed before its manifest keeps its finished parts; they keep their sums.
  rerun = tmp_path / "rerun"
  shutil.copytree(good_cache, rerun)
  (rerun / "manifest.json").unlink()
  stamps = {p: p.stat().st_mtime_ns for p in rerun.glob("parts/*/*/*.bin")}
  prepare(load_spec(corpus), "bytes", rerun, workers=1, show_progress=False)
  assert {p: p.stat().st_mtime_ns for p in rerun.glob("parts/*/*/*.bin")} == stamps
  for key, entry in json.loads((rerun / "manifest.json").read_text())["sets"].items():
    assert entry["parts"][0]["sha256"] == sha256(rerun / entry["parts"][0]["file"]), key


def test_a_flipped_byte_fails_verify_naming_the_part_and_a_rerun_of_prepare_repairs_it(
  cache_copy, corpus, capsys
):
  part = first_part(cache_copy)
  path = cache_copy / part["file"]
  original = sha256(path)
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01  # same size: only a full read can tell
  path.write_bytes(bytes(data))
  TokenCache(cache_copy)  # opening checks sizes only, so a run still starts without a read
  code, out, err = verify_main(cache_copy, capsys)
  assert code == 2 and not out
  (line,) = err.splitlines()
  assert line.startswith("error: ") and str(path) in line and "fails its checksum" in line
  assert "rerun its `python -m train.data.prepare`" in line
  prepare(load_spec(corpus), "bytes", cache_copy, workers=1, show_progress=False)
  assert sha256(path) == original
  assert verify_main(cache_copy, capsys)[0] == 0


@pytest.mark.parametrize("damage", ["cut", "missing"])
@pytest.mark.parametrize("which", ["bin", "docs"])
def test_a_cut_or_missing_part_fails_verify_naming_it(cache_copy, capsys, damage, which):
  part = first_part(cache_copy, "heldout/bench")
  path = cache_copy / part["file"]
  if which == "docs":
    path = path.with_name(path.name.replace(".bin", ".docs.npy"))
  if damage == "cut":
    path.write_bytes(path.read_bytes()[:-3])
  else:
    path.unlink()
  code, _, err = verify_main(cache_copy, capsys)
  assert code == 2
  (line,) = err.splitlines()
  size = part["tokens"] * 2 if which == "bin" else part["docs_size"]
  want = f"has {size - 3:,} bytes where the manifest records {size:,}"
  want = "is missing" if damage == "missing" else want
  assert line.startswith("error: ") and f"{path} {want}" in line, line
  assert "set heldout/bench" in line and "python -m train.data.prepare" in line
  with pytest.raises(DataError, match="is incomplete: .* rerun its `python -m train.data.prepare`"):
    TokenCache(cache_copy)


def test_a_cache_prepared_before_checksums_still_opens_and_verify_says_it_has_none(
  cache_copy, corpus, capsys
):
  before = TokenCache(cache_copy).identity()
  manifest = json.loads((cache_copy / "manifest.json").read_text())
  for entry in manifest["sets"].values():
    for part in entry["parts"]:
      for field in ("sha256", "docs_size", "docs_sha256"):
        del part[field]
  del manifest["contamination"]
  (cache_copy / "manifest.json").write_text(json.dumps(manifest))
  cache = TokenCache(cache_copy)
  assert cache.identity() == before
  assert cache.decode_documents("train", "prose") == TRAIN
  code, out, err = verify_main(cache_copy, capsys)
  assert code == 0 and not err
  (line,) = out.splitlines()
  assert "prepared before checksums were recorded" in line
  assert "to add them, rerun its `python -m train.data.prepare`" in line
  prepare(load_spec(corpus), "bytes", cache_copy, workers=1, show_progress=False)
  code, out, _ = verify_main(cache_copy, capsys)
  assert code == 0 and "match their sizes and sha256" in out
  assert TokenCache(cache_copy).identity() == before


# ---- held-out contamination -------------------------------------------------------------


def test_prepare_reports_held_out_documents_that_training_also_holds(corpus, tmp_path, capsys):
  _, out = prepare_main(
    ["--spec", corpus, "--tokenizer", "bytes", "--out", tmp_path / "c", "--workers", 2], capsys
  )
  lines = {line.split()[0]: line for line in out.splitlines()[-4:]}
  assert "2 of 3 contaminated (in train/prose)" in lines["heldout/bench"]
  assert "0 of 2 contaminated" in lines["validation/prose"]
  assert "2 training documents match them; rerun with --decontaminate" in out
  report = json.loads((tmp_path / "c" / "manifest.json").read_text())["contamination"]
  assert report["sets"]["heldout/bench"] == {
    "documents": 3,
    "contaminated": 2,
    "found_in": ["train/prose"],
  }
  assert report["sets"]["validation/prose"]["contaminated"] == 0
  assert report["train"] == {"train/prose": {"documents": 2, "removed": 0}}
  part = first_part(tmp_path / "c")  # reported, not removed
  np.testing.assert_array_equal(
    np.fromfile(tmp_path / "c" / part["file"], np.uint16), byte_stream(TRAIN)
  )


def test_decontaminate_drops_the_copies_from_training_and_never_reuses_the_others_parts(
  corpus, tmp_path, capsys
):
  from train.config import ConfigError
  from train.training_data import check_resumed_data

  clean = tmp_path / "clean"
  _, out = prepare_main(
    ["--spec", corpus, "--tokenizer", "bytes", "--out", clean, "--decontaminate"], capsys
  )
  assert "--decontaminate removed 2 training documents" in out
  kept = [d for i, d in enumerate(TRAIN) if i not in (0, 2)]
  stream = np.fromfile(clean / first_part(clean)["file"], np.uint16)
  np.testing.assert_array_equal(stream, byte_stream(kept))
  report = json.loads((clean / "manifest.json").read_text())["contamination"]
  assert report["decontaminate"] and report["train"]["train/prose"]["removed"] == 2
  assert report["sets"]["heldout/bench"]["contaminated"] == 2
  assert TokenCache(clean).decode_documents("heldout", "bench") == HELDOUT
  # A run started on one cannot resume on the other: they train on different documents.
  plain = tmp_path / "plain"
  prepare(load_spec(corpus), "bytes", plain, workers=1, show_progress=False)
  with pytest.raises(ConfigError, match="another data spec"):
    check_resumed_data({"dataset": TokenCache(plain).identity()}, TokenCache(clean))
  # A complete cache made the other way is refused, not rewritten under a run.
  with pytest.raises(DataError, match="prepared with --decontaminate; rerun with it"):
    prepare(load_spec(corpus), "bytes", clean, workers=1, show_progress=False)
  # An unfinished one (no manifest yet) is redone, not reused, whichever way it was made.
  for out, flag, documents in ((clean, False, TRAIN), (plain, True, kept)):
    (out / "manifest.json").unlink()
    prepare(load_spec(corpus), "bytes", out, workers=1, show_progress=False, decontaminate=flag)
    stream = np.fromfile(out / first_part(out)["file"], np.uint16)
    np.testing.assert_array_equal(stream, byte_stream(documents))
    assert verify_main(out, capsys)[0] == 0


def test_the_built_in_corpus_reports_no_contamination(small_cache):
  report = small_cache.manifest["contamination"]
  assert set(report["sets"]) == {
    key for key in small_cache.manifest["sets"] if not key.startswith("train/")
  }
  for key, entry in report["sets"].items():
    assert entry["documents"] > 0 and entry["contaminated"] == 0, key
  assert all(entry["documents"] == 0 for entry in report["train"].values())


def test_a_training_document_matches_the_targets_it_equals_up_to_whitespace():
  rng = np.random.default_rng(0)
  words = ["a", "bb", "ccc", "dddd", "é", "日本"]
  spaces = [" ", "  ", "\n", "\t ", " " * 120, "\u3000"]

  def spaced(tokens):
    gaps = rng.choice(spaces, len(tokens) + 1)
    return "".join(str(g) + t for g, t in zip(gaps, tokens)) + str(gaps[-1])

  texts = [list(rng.choice(words, int(n))) for n in rng.integers(1, 120, 60)]
  targets = [spaced(tokens) for tokens in texts[:30]]
  texts += [tokens[:-1] + ["x"] for tokens in texts[:30]]  # same head, another end
  reference = {" ".join(t.split()) for t in targets}
  scanned = prepare_lib.Targets(
    frozenset(prepare_lib.normalized_digest(t) for t in targets),
    frozenset(" ".join(t.split())[: prepare_lib.PREFIX] for t in targets),
  )
  for tokens in texts:
    document = spaced(tokens)
    assert (scanned.match(document) is not None) == (" ".join(tokens) in reference), tokens
