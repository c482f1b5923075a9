"""scripts.table_drift: the main job's table compared cell by cell, losses step by step."""

import json

import pytest

from scripts import table_drift

HEADER = "| optimizer | pretrain (val) | champ (held-out) |\n|---|---|---|\n"


def write_run(folder, nexus_champ, losses):
  rows = f"| AdamW | 5.5000 | 6.1000 |\n| AdamW + Nexus | 5.4000 | {nexus_champ:.4f} |\n"
  rows += f"| Nexus - AdamW | -0.1000 | {nexus_champ - 6.1:+.4f} |\n"
  folder.mkdir()
  (folder / "summary.md").write_text("# title\n\n" + HEADER + rows)
  for optimizer in ("adamw", "nexus"):
    (folder / optimizer).mkdir()
    records = [{"step": s, "train_loss": loss} for s, loss in losses[optimizer].items()]
    (folder / optimizer / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in records + [{"step": 20, "validation/x": 1.0}])
    )


def test_cells_and_losses_differ_where_they_were_changed(tmp_path, capsys):
  same = {"adamw": {1: 6.0, 10: 5.9, 20: 5.8}, "nexus": {1: 6.0, 10: 5.8, 20: 5.6}}
  moved = {"adamw": same["adamw"], "nexus": {1: 6.0, 10: 5.8001, 20: 5.603}}
  write_run(tmp_path / "before", 6.0121, same)
  write_run(tmp_path / "after", 6.0108, moved)
  assert table_drift.main([str(tmp_path / "before"), str(tmp_path / "after")]) == 1
  result = json.loads(capsys.readouterr().out.splitlines()[-1])
  assert result["cells"]["AdamW"] == {"max_abs": 0.0, "column": "pretrain (val)"}
  assert result["cells"]["AdamW + Nexus"]["column"] == "champ (held-out)"
  assert abs(result["cells"]["AdamW + Nexus"]["max_abs"] - 0.0013) < 1e-9
  nexus = {int(step): value for step, value in result["train_loss"]["nexus"].items()}
  assert nexus[1] == 0.0 and abs(nexus[20] - 0.003) < 1e-9
  assert table_drift.main(["--tolerance", "0.002", *map(str, (tmp_path / "before",) * 2)]) == 0


def test_a_folder_of_tables_only_is_compared_by_cells_and_bad_paths_are_one_line(tmp_path, capsys):
  same = {"adamw": {1: 6.0}, "nexus": {1: 6.0}}
  write_run(tmp_path / "run", 6.0121, same)
  tables_only = tmp_path / "docs"  # like docs/main_run/: summary.md and plots, no runs
  tables_only.mkdir()
  (tables_only / "summary.md").write_text((tmp_path / "run" / "summary.md").read_text())
  assert table_drift.main([str(tables_only), str(tmp_path / "run")]) == 0
  assert "train_loss" not in json.loads(capsys.readouterr().out.splitlines()[-1])
  (tmp_path / "plain.md").write_text("no table here\n")
  for bad, message in (("missing", "does not exist"), ("plain.md", "no main-job table")):
    with pytest.raises(SystemExit, match=message):
      table_drift.main([str(tmp_path / bad), str(tmp_path / "run")])
