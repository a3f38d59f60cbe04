"""Reward-vs-KL frontier, diversity and calibration of the alignment objectives on the controlled task.

    python -m tools.frontier                     # default size: 9 objectives × 3 β + the HH-RLHF check -> docs/
    python -m tools.frontier --quick             # minutes: 3 objectives × 2 β on a small task -> runs/frontier_quick
    python -m tools.frontier --config my.yaml    # any setting from YAML; --print_config lists them all

Stages, each cached under ``--workdir``, so a rerun only does what changed:

1. the controlled task (corpus, tokenizer, SFT reference, oracle-labelled pairs), built once, shared by all runs;
2. the sparse autoencoder FPO reads (``tools/train_sae.py`` on the SFT model), when FPO is swept;
3. one alignment run per objective × β: a real ``AlignmentModule`` and ``PreferenceDataModule`` over the task's
   ``ControlledTask`` source, fit with the :class:`~lit_align.eval.SamplingEvaluation` callback (KL both ways,
   reward, win rate, entropy, distinct-n and held-out calibration every ``eval_every_n_steps``), then the reward
   margin and sequential KL of every held-out pair. Each run is a fresh process (``--jobs`` at once, ``--threads``
   torch threads each) and writes ``runs/<objective>_b<β>_<key>/results.json`` (and its TensorBoard logs) there;
   ``key`` hashes everything the run depends on, and a run whose results exist is skipped;
4. the HH-RLHF sanity check: a BPE tokenizer and a small Llama warmed up by SFT on the chosen transcripts of
   the training split, a short DPO run, held-out reward accuracy and ECE;

then checks the papers' claims (:mod:`tools.frontier.claims`), draws ``frontier.png``, ``diversity.png`` and
``calibration.png`` and writes ``frontier.md`` to ``--out_dir``.

One torch thread per run is deliberate: on a shared 2-core machine a 2-thread run of these tiny models can be
25 times slower than a 1-thread run (OpenMP threads spin-waiting for a core), while two 1-thread runs side by
side use both cores.
"""

