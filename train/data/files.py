"""Documents from users' files: ``.txt``, ``.jsonl`` and ``.parquet``, plain, ``.gz`` or ``.zst``.

  .txt      the whole file is one document (UTF-8);
  .jsonl    one JSON object per line, its text in field ``text_key``;
  .parquet  one document per row, its text in column ``text_key``, read a row group at
            a time, so memory holds one row group, never the file.

Every reader streams. A file that cannot be read raises :class:`DataError` naming the
file and, where there is one, the line or row group.
"""

import gzip
import io
import json
import pathlib
import shutil
import tempfile
import zlib
from collections.abc import Iterator

from train.data.spec import DataError, file_format


def _open_binary(path: pathlib.Path, compression: str):
  if compression == ".gz":
    return gzip.open(path, "rb")
  if compression == ".zst":
    import zstandard  # optional: only .zst input needs it

    return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
  return open(path, "rb")


def _corrupt(path: pathlib.Path, error: Exception, where: str = "") -> DataError:
  reason = str(error).splitlines()[0] if str(error) else type(error).__name__
  return DataError(f"{path}{where} is unreadable or corrupt ({reason}); repair or remove the file.")


def _txt(path: pathlib.Path, compression: str) -> Iterator[str]:
  with _open_binary(path, compression) as stream:
    raw = stream.read()
  try:
    yield raw.decode("utf-8")
  except UnicodeDecodeError as error:
    raise DataError(
      f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); convert "
      "it, e.g. with iconv -t utf-8."
    ) from None


def _jsonl(path: pathlib.Path, compression: str, text_key: str) -> Iterator[str]:
  with _open_binary(path, compression) as binary:
    lines = io.TextIOWrapper(binary, encoding="utf-8")
    number = 0
    while True:
      try:
        line = lines.readline()
      except UnicodeDecodeError as error:
        raise DataError(
          f"{path}, line {number + 1}: not UTF-8 ({error.reason}); convert the file to UTF-8."
        ) from None
      if not line:
        return
      number += 1
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise DataError(
          f"{path}, line {number}: not valid JSON ({error.msg}, column "
          f"{error.colno}); fix or remove the line."
        ) from None
      if not isinstance(record, dict) or text_key not in record:
        keys = ", ".join(map(repr, record)) if isinstance(record, dict) else type(record).__name__
        raise DataError(
          f"{path}, line {number}: no field {text_key!r} (it has {keys}); set "
          "text_key in the spec to the field that holds the text."
        )
      text = record[text_key]
      if not isinstance(text, str):
        raise DataError(
          f"{path}, line {number}: field {text_key!r} holds "
          f"{type(text).__name__}, not text; set text_key to a text field."
        )
      yield text


def _parquet(path: pathlib.Path, compression: str, text_key: str) -> Iterator[str]:
  import pyarrow.parquet as pq  # heavy: only Parquet input pays for loading Arrow

  with tempfile.TemporaryDirectory() as scratch:
    if compression:  # Parquet needs seeks: decompress to disk first, not into memory
      plain = pathlib.Path(scratch) / path.name
      with _open_binary(path, compression) as source, open(plain, "wb") as target:
        shutil.copyfileobj(source, target, 1 << 22)
    else:
      plain = path
    try:
      parquet = pq.ParquetFile(plain)
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ...
      raise _corrupt(path, error) from None
    columns = parquet.schema_arrow.names
    if text_key not in columns:
      raise DataError(
        f"{path}: no column {text_key!r} (it has {', '.join(map(repr, columns))}); "
        "set text_key in the spec to the column that holds the text."
      )
    for group in range(parquet.num_row_groups):
      try:
        column = parquet.read_row_group(group, columns=[text_key]).column(0)
      except Exception as error:
        raise _corrupt(path, error, f", row group {group}") from None
      for text in column.to_pylist():
        if text is None:
          continue
        if not isinstance(text, str):
          raise DataError(
            f"{path}, row group {group}: column {text_key!r} holds "
            f"{type(text).__name__}, not text; set text_key to a text column."
          )
        yield text


def read_documents(path: pathlib.Path, text_key: str = "text") -> Iterator[str]:
  """The documents of one file, in file order (empty documents included)."""
  path = pathlib.Path(path)
  kind, compression = file_format(path.name)
  try:
    if kind == "txt":
      yield from _txt(path, compression)
    elif kind == "jsonl":
      yield from _jsonl(path, compression, text_key)
    else:
      yield from _parquet(path, compression, text_key)
  except DataError:
    raise
  except FileNotFoundError:
    raise DataError(f"{path} disappeared while reading; restore it or fix the spec.") from None
  except PermissionError:
    raise DataError(f"{path} is not readable (permission denied); fix its permissions.") from None
  except _stream_errors() as error:  # truncated or corrupt gzip and zstd streams
    raise _corrupt(path, error) from None


def _stream_errors() -> tuple[type[Exception], ...]:
  import zstandard  # optional: only .zst input needs it

  return (OSError, EOFError, zlib.error, ValueError, zstandard.ZstdError)
