"""reproduce.sh: the job's own command, without machine-specific paths."""

from scfate.utils.reproduce import command_line, write_reproduce


def test_commands_drop_machine_paths_and_point_into_the_artifacts_tree(tmp_path):
    art = tmp_path / "artifacts"
    line = command_line("train.py", ["dataset=norman", f"paths.artifacts_dir={art}", "seed=2",
                                     f"run_dir={art}/flow_heads/norman/seed2", "+paths.data_dir=/data"], art)
    assert line == "python train.py dataset=norman seed=2 'run_dir=${paths.artifacts_dir}/flow_heads/norman/seed2'"
    path = write_reproduce(tmp_path / "run", "reflow.py", [f"teacher={art}/flow_heads/k562/base", "K=2"], art)
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash") and path.stat().st_mode & 0o111
    assert text.rstrip().endswith("python reflow.py 'teacher=${paths.artifacts_dir}/flow_heads/k562/base' K=2")
