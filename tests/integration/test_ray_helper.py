"""One Ray helper: local Ray with explicit CPUs, and stage outputs read as Ray Datasets."""

from persodpo.cli import main
from persodpo.raycluster import read_output


def test_local_ray_reads_a_stage_output(ray_local, tmp_path):
    assert ray_local.cluster_resources()["CPU"] >= 2
    out = str(tmp_path / "prompts")
    assert main(["ingest", "--output", out]) == 0
    ds = read_output(out)
    assert ds.count() == 40
    assert set(ds.schema().names) >= {"prompt_id", "persona", "history", "gold"}
