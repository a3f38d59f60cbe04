"""The scale of FPO's feature drift D under each way of reading the features, on two model sizes.

    python -m tools.fpo_scale    # after python -m tools.hh_orderings (and its --quick) built the HH stages

For each model (the SFT warm-ups of ``tools.hh_orderings``: the quick preset's small Llama and the default's
larger one), an SAE is trained (``tools.train_sae``) on the residual stream at the output of the last decoder
layer, the policy is moved from the SFT reference by a few DPO steps on HH pairs, and on held-out pairs D and
D_rel (:func:`lit_align.objectives.fpo.topk_feature_mse`) are measured for every combination of

- site: ``residual`` (the last layer's output, lit-align's default) or ``final_norm`` (the final post-norm
  hidden state, what the FPO authors feed their last-layer SAE);
- pooling: ``response`` (mean over the response, default) or ``padded_shifted`` (the authors' code).

with the mean |m_w − m_l| (SimPO margin) for comparison. Writes ``--out`` (JSON) and prints a Markdown table;
``α_eq`` is the α that gives α·D the strength α = 0.5 has under the default reading.
"""

from __future__ import annotations

import argparse
import json
import statistics
from functools import partial
from pathlib import Path

import lightning as L
import torch

from lit_align.data import PreferenceDataModule
from lit_align.models.policy import PolicySpec, final_hidden
from lit_align.module import AlignmentModule
from lit_align.objectives import DPO
from lit_align.objectives.fpo import topk_feature_mse
from lit_align.sae import ResidualCapture, load_sae, pooled_features
from lit_align.trainer import AlignmentTrainer
from tools.frontier.settings import HHSettings
from tools.frontier.stages import build_hh_stage
from tools.hh_orderings import QUICK
from tools.train_sae import main as train_sae

OPTIONS = [(site, pooling) for site in ("residual", "final_norm") for pooling in ("response", "padded_shifted")]


def moved_policy(stage: Path, hh: HHSettings, steps: int, root: Path) -> tuple[AlignmentModule, PreferenceDataModule]:
    """The SFT model after ``steps`` DPO steps (β 0.1, lr as the HH runs), and the data module."""
    L.seed_everything(0, verbose=False)
    data = PreferenceDataModule(
        path=str(stage / "train.jsonl"), tokenizer=str(stage / "sft"), row_format="hh",
        val_path=str(stage / "val.jsonl"), max_length=hh.max_length, max_prompt_length=hh.max_prompt_length,
        batch_size=hh.batch_size, seed=0,
    )
    module = AlignmentModule(DPO(beta=0.1), PolicySpec(path=str(stage / "sft")),
                             optimizer=partial(torch.optim.AdamW, lr=hh.lr))
    AlignmentTrainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                     default_root_dir=root).fit(module, data)
    return module, data


@torch.no_grad()
def reads(model, batch: dict, layer: int) -> dict[str, torch.Tensor]:
    """The two feature sites of ``model`` on ``batch``, from one forward."""
    model.eval()
    with ResidualCapture(model, layer) as capture:
        hidden = final_hidden(model, batch["input_ids"], batch["attention_mask"])
    return {"residual": capture.activations, "final_norm": hidden}


def measure(stage: Path, hh: HHSettings, args: argparse.Namespace) -> dict:
    config = json.loads((stage / "sft" / "config.json").read_text())
    layer, hidden = config["num_hidden_layers"] - 1, config["hidden_size"]
    sae_dir = stage.parent / f"sae-last-layer{layer}"
    if not (sae_dir / "cfg.json").is_file():
        train_sae(["--model", str(stage / "sft"), "--data", str(stage / "train.jsonl"), "--layer", str(layer),
                   "--output", str(sae_dir), "--d-sae", str(8 * hidden), "--k", "16", "--max-texts", "400",
                   "--max-epochs", "3", "--batch-size", "512", "--max-length", str(hh.max_length)])
    sae = load_sae(str(sae_dir)).eval()
    top_k = min(50, sae.d_sae)
    module, data = moved_policy(stage, hh, args.dpo_steps, stage.parent / "fpo_scale")
    reference = AlignmentModule(DPO(beta=0.1), PolicySpec(path=str(stage / "sft")))
    reference.configure_model()
    values: dict[str, list[float]] = {f"{s}/{p}/{q}": [] for s, p in OPTIONS for q in ("D", "D_rel", "scale")}
    margins: list[float] = []
    seen = 0
    for batch in data.val_dataloader():
        policy_reads, ref_reads = reads(module.policy, batch, layer), reads(reference.policy, batch, layer)
        mask = batch["response_mask"]
        for site, pooling in OPTIONS:
            pol = pooled_features(sae, policy_reads[site], mask, pooling)
            ref = pooled_features(sae, ref_reads[site], mask, pooling)
            key = f"{site}/{pooling}"
            values[f"{key}/D"] += topk_feature_mse(pol, ref, top_k).tolist()
            values[f"{key}/D_rel"] += topk_feature_mse(pol, ref, top_k, relative=True).tolist()
            top = pol.topk(top_k, dim=-1).indices
            values[f"{key}/scale"] += ref.gather(-1, top).pow(2).mean(-1).tolist()
        with torch.no_grad():
            inputs = module.preference_inputs(batch)
            m = [(inputs.policy_chosen_logps - inputs.ref_chosen_logps) / inputs.chosen_lengths,
                 (inputs.policy_rejected_logps - inputs.ref_rejected_logps) / inputs.rejected_lengths]
        margins += (m[0] - m[1]).abs().tolist()
        seen += len(mask) // 2
        if seen >= args.pairs:
            break
    summary = {key: statistics.fmean(v) for key, v in values.items()}
    return {"hidden_size": hidden, "layers": config["num_hidden_layers"], "sae_layer": layer, "d_sae": sae.d_sae,
            "top_k": top_k, "pairs": seen, "dpo_steps": args.dpo_steps,
            "mean_abs_margin": statistics.fmean(margins), **summary}


def table(results: dict[str, dict]) -> str:
    lines = ["| model | site | pooling | mean D | α_eq (for α=0.5 at the default) | mean D_rel | feature scale "
             "(mean c̄_ref² over top-k) | mean \\|m_w − m_l\\| |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        default = r["residual/response/D"]
        for site, pooling in OPTIONS:
            key = f"{site}/{pooling}"
            lines.append(
                f"| {name} (hidden {r['hidden_size']}, d_sae {r['d_sae']}) | {site} | {pooling} | {r[key + '/D']:.3g} "
                f"| {0.5 * default / r[key + '/D']:.3g} | {r[key + '/D_rel']:.3g} | {r[key + '/scale']:.3g} "
                f"| {r['mean_abs_margin']:.3g} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=".cache/fpo_scale.json")
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--dpo-steps", type=int, default=30)
    parser.add_argument("--models", nargs="+", choices=("small", "base"), default=["small", "base"])
    args = parser.parse_args(argv)
    models = {"small": (Path(QUICK["workdir"]), QUICK["hh"]), "base": (Path(".cache/hh_orderings"), HHSettings())}
    results = {name: measure(build_hh_stage(root, hh), hh, args) for name, (root, hh) in models.items()
               if name in args.models}
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
