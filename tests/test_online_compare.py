"""``tools/online_compare.py`` (docs/online.md's offline vs on-policy table): each arm's command line is the real CLI
with the seed in the data order and the sampling, and the table judges each arm against offline paired by seed."""

from __future__ import annotations

from pathlib import Path

from tools.online_compare import ARMS, METRICS, OBJECTIVES, command, table


def test_each_arm_is_the_cli_with_its_seed_in_the_data_order_and_the_sampling(tmp_path):
    offline = command("offline", "DPO", 3, tmp_path, quick=False)
    iterative = command("iterative", "TDPO2", 3, tmp_path, quick=False)
    assert Path(offline[0]).name == "lit-align" and offline[1:4] == ["fit", "--config", "configs/quickstart.yaml"]
    assert "--data.seed=3" in offline and not any("sampling_seed" in arg for arg in offline)
    assert {"--data.seed=3", "--model.sampling_seed=3", "--model.iterative=true", "--trainer.max_steps=100",
            "--trainer.reload_dataloaders_every_n_epochs=1", "--model.objective.variant=2"} <= set(iterative)
    assert "--trainer.max_steps=2" in command("online_tokens", "DPO", 0, tmp_path, quick=True)


def test_the_table_pairs_each_arm_with_offline_by_seed():
    """Per seed, online = offline + 0.1 + a little noise on every metric: paired by seed the gain holds, while the
    seed-to-seed spread (10× the gain) would hide it from an unpaired test."""
    seeds = [0, 1, 2, 3, 4]
    results = [{"arm": arm, "objective": objective, "seed": seed, "seconds": 1.0,
                **{metric: seed + (0.0 if arm == "offline" else 0.1 + 0.001 * (seed % 2)) for metric in METRICS}}
               for arm in ARMS for objective in OBJECTIVES for seed in seeds]
    text = table(results, seeds)
    judged = [line for line in text.splitlines() if "> offline" in line]
    assert len(judged) == len(OBJECTIVES) * (len(ARMS) - 1) * len(METRICS)
    assert all("| holds |" in line and "(paired, n 5, df 4.0)" in line for line in judged)
