"""The default sweep, embedded so that `python -m orchestrator.sweep` works from an installed wheel too.

This is a verbatim copy of sweeps/default.yaml (a test keeps the two identical); a checkout or an
editable install reads the file itself.
"""

DEFAULT_SWEEP_YAML = """\
# The embedded default: `python -m orchestrator.sweep` with no flags runs this on a laptop.
# 2 optimizers x 2 qk_norm x 2 widths x 3 LRs x 2 seeds = 48 trials, ~6 minutes on 2 CPU cores
# (one thread per trial, two at a time). Every (width, lr, seed) point has a none/rms pair per
# optimizer, so the report's paired comparisons have 12 pairs each.
name: default
grid:
  optimizer: [adamw, muon]
  qk_norm: [none, rms]
  width: [64, 128]                      # d_head 32: 2 and 4 heads
  lr: [1.0e-3, 5.0e-3, 2.5e-2]          # 5x apart; best (sweeps/lr.yaml): AdamW 1e-3 (w128) to 1e-2 (w64),
                                        # Muon 1.2e-2 to 2.7e-2
  seed: [0, 1]
train:                                  # trainer/config.py field names
  corpus: stdlib                        # the running Python's standard library: real text, no download
  max_corpus_bytes: 4000000
  depth: 2
  d_head: 32
  seq_len: 128
  batch_size: 16
  steps: 200
  warmup: 20
  eval_every: 25                        # probe (singular spectra of wq, wk, q, k) + val loss
  checkpoint_every: 100
  device: cpu
resources:
  cpus_per_trial: 1                     # also the torch thread count of each trial
  gpus_per_trial: 0
  max_concurrent: null                  # as many as the CPUs allow
failure:
  max_retries: 2
results: ./results
"""
