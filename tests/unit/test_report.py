"""The report turns a directory of finished runs into the exact expected table."""

from __future__ import annotations

import json

import pytest

from uda.report import aggregate, collect, main, markdown


def fake_run(root, name, **fields):
    run = root / name
    run.mkdir(parents=True)
    summary = {
        "dataset": "offline_digits",
        "task": "mnist→uci",
        "baseline": "cdan",
        "harmonizer": "gh",
        "seed": 0,
        "target_acc_last": 0.9,
        "target_acc_best": 0.95,
        "conflict_rate": 0.4,
        "conflict_rate_after": 0.0,
        "sec_per_iter": 0.05,
    }
    summary.update(fields)
    (run / "summary.json").write_text(json.dumps(summary))


def test_mean_and_std_over_seeds(tmp_path, capsys) -> None:
    fake_run(tmp_path, "a", seed=0, target_acc_last=0.90, target_acc_best=0.92)
    fake_run(tmp_path, "b", seed=1, target_acc_last=0.94, target_acc_best=0.96)
    fake_run(
        tmp_path,
        "c",
        seed=0,
        harmonizer="none",
        target_acc_last=0.80,
        target_acc_best=0.85,
        conflict_rate=0.5,
        conflict_rate_after=0.5,
    )
    (tmp_path / "failed").mkdir()  # a run without summary.json (crashed or diverged) is ignored

    table = aggregate(collect(tmp_path))
    md = markdown(table).splitlines()
    assert md[0] == (
        "| task | baseline | harmonizer | target acc, last | target acc, best (oracle) | "
        "conflict before | conflict after | s/iter | seeds |"
    )
    assert (
        md[2] == "| mnist→uci | cdan | gh | 92.0 ± 2.8 | 94.0 ± 2.8 | 40.0 ± 0.0 | 0.0 ± 0.0 | 0.0500 ± 0.0000 | 0,1 |"
    )
    assert md[3] == "| mnist→uci | cdan | none | 80.0 | 85.0 | 50.0 | 50.0 | 0.0500 | 0 |"
    main([str(tmp_path)])
    assert capsys.readouterr().out.strip().splitlines()[2] == md[2]


def test_empty_directory_is_one_sentence(tmp_path) -> None:
    with pytest.raises(SystemExit, match="no summary.json under"):
        main([str(tmp_path)])
