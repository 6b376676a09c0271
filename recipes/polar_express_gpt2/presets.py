"""Sweep presets for reproducing the Polar Express GPT-2 experiments, and the paper's numbers.

A preset names the LightningCLI config files every run stacks (a base file, one file per method, the
sweep's own small overrides), the learning rates swept per method and the seeds. Runs differ only in
the method file, the learning rate and the seed, so the sweep is the CLI, run many times.
"""

from __future__ import annotations

from dataclasses import dataclass

# Method name -> (override file under configs/method/, learning-rate key the sweep varies).
# AdamW trains every parameter with AdamW, so its swept rate is model.adamw_lr; the Muon methods sweep
# the Muon rate and keep the base file's AdamW rate for embeddings, head, gains and biases (paper, sec. 6).
METHODS: dict[str, tuple[str, str]] = {
    "adamw": ("configs/method/adamw.yaml", "model.adamw_lr"),
    "jordan": ("configs/method/jordan.yaml", "model.muon_lr"),
    "you": ("configs/method/you.yaml", "model.muon_lr"),
    "polar_express": ("configs/method/polar_express.yaml", "model.muon_lr"),
}
METHOD_LABELS = {"adamw": "AdamW", "jordan": "Jordan", "you": "You", "polar_express": "Polar Express"}
# The paired comparisons read every method against this one (the paper's baseline polar method).
BASELINE = "jordan"


@dataclass(frozen=True)
class Preset:
    """One reproduction setting.

    Args:
        name: preset name (``--preset``).
        configs: config files stacked before the method file (base first).
        after_method: config files stacked after the method file (size files that must win over the
            method's learning rate, then the sweep-only overrides under configs/sweep/).
        lrs: method -> learning rates swept.
        seeds: method -> seeds (each seed is both ``seed_everything`` and ``data.seed``).
        paper_row: the row of the paper's table this preset reproduces (key of ``PAPER``).
        description: one line for the report.
        resume_from_checkpoint: an unfinished run restarts from its ``last.ckpt`` (long GPU runs)
            instead of from scratch.
        budget_min: default of ``--budget``: start no run expected to end after this many minutes.
    """

    name: str
    configs: tuple[str, ...]
    after_method: tuple[str, ...]
    lrs: dict[str, tuple[float, ...]]
    seeds: dict[str, tuple[int, ...]]
    paper_row: str
    description: str
    resume_from_checkpoint: bool = False
    budget_min: float | None = None

    def __post_init__(self) -> None:
        unknown = (set(self.lrs) | set(self.seeds)) - set(METHODS)
        if unknown:
            raise ValueError(f"preset {self.name!r} names unknown methods {sorted(unknown)}")
        if set(self.lrs) != set(self.seeds):
            raise ValueError(f"preset {self.name!r}: methods with learning rates and with seeds differ")


# Tiny: CPU-scale, on the corpus shipped with the package, sized for about an hour on 2 cores
# (recipes/polar_express_gpt2/README.md has the measurement). Learning rates from issue 7's first
# measurement on this hardware: the best Muon rate was 0.01 or lower, AdamW was unstable at 3e-3.
# AdamW trails Muon by ~0.6 nats there, far beyond the seed spread, and You is the third polar method,
# so they get one seed; the budget goes to paired seeds of Polar Express against Jordan, whose
# difference is small.
TINY = Preset(
    name="tiny",
    configs=("configs/demo.yaml",),
    after_method=("configs/sweep/tiny.yaml",),
    lrs={
        "polar_express": (0.0025, 0.005, 0.01),
        "jordan": (0.0025, 0.005, 0.01),
        "you": (0.0025, 0.005, 0.01),
        "adamw": (5e-4, 1e-3, 2e-3),
    },
    seeds={"polar_express": (0, 1), "jordan": (0, 1), "you": (0,), "adamw": (0,)},
    paper_row="GPT-2 Small, 1B tokens, no WD",
    description="GPT-2 tiny (4 layers, width 256, context 128) on the shipped sample corpus, CPU",
    # Issue 7: make reproduce-tiny finishes within 60 minutes on 2 cores. Runs go seed by seed, so on a
    # slower machine the budget drops runs of the last seed (listed as not run), never a whole method.
    budget_min=57.0,
)

# The paper's GPT-2 settings (context 1024, 32 sequences per batch, 1B tokens, bf16, 5 polar iterations,
# constant-then-linear-decay schedule, no weight decay). Learning-rate grids bracket the paper's best
# rates (shared/reference/polar-express.md): Small 0.01 / 0.005, Large 0.02. The paper reports no AdamW
# run for GPT-2 Large.
GPT2_SMALL_1B = Preset(
    name="gpt2-small-1b",
    configs=("configs/gpt2_small_fineweb.yaml",),
    after_method=("configs/sweep/fineweb.yaml",),
    lrs={
        "adamw": (3e-4, 6e-4, 1.2e-3, 2.4e-3),
        "jordan": (0.0025, 0.005, 0.01, 0.02),
        "you": (0.0025, 0.005, 0.01, 0.02),
        "polar_express": (0.0025, 0.005, 0.01, 0.02),
    },
    seeds={"adamw": (0,), "jordan": (0,), "you": (0,), "polar_express": (0,)},
    paper_row="GPT-2 Small, 1B tokens, no WD",
    description="GPT-2 Small (124M) on FineWeb, 1B tokens, the paper's settings",
    resume_from_checkpoint=True,
)
GPT2_LARGE_1B = Preset(
    name="gpt2-large-1b",
    # configs/gpt2_large_fineweb.yaml is a size file on top of the Small base, stacked after the method.
    configs=("configs/gpt2_small_fineweb.yaml",),
    after_method=("configs/gpt2_large_fineweb.yaml", "configs/sweep/fineweb.yaml"),
    lrs={
        "jordan": (0.005, 0.01, 0.02, 0.04),
        "you": (0.005, 0.01, 0.02, 0.04),
        "polar_express": (0.005, 0.01, 0.02, 0.04),
    },
    seeds={"jordan": (0,), "you": (0,), "polar_express": (0,)},
    paper_row="GPT-2 Large, 1B tokens, no WD",
    description="GPT-2 Large (774M) on FineWeb, 1B tokens, the paper's settings",
    resume_from_checkpoint=True,
)
PRESETS: dict[str, Preset] = {p.name: p for p in (TINY, GPT2_SMALL_1B, GPT2_LARGE_1B)}

# Best validation loss over the learning-rate sweep (best LR), from the paper's GPT-2 table
# (Amsel et al., arXiv 2505.16932; shared/reference/polar-express.md). None: not reported.
PAPER: dict[str, dict[str, tuple[float, float | None] | None]] = {
    "GPT-2 Small, 1B tokens, no WD": {
        "adamw": (4.197, None),
        "jordan": (3.639, 0.01),
        "you": (3.629, 0.01),
        "polar_express": (3.588, 0.005),
    },
    "GPT-2 Large, 1B tokens, no WD": {
        "adamw": None,
        "jordan": (3.398, 0.02),
        "you": (3.399, 0.02),
        "polar_express": (3.340, 0.02),
    },
}
PAPER_SETUP = (
    "FineWeb, context 1024, 32 sequences per batch, 1B tokens, bf16, 4xH100, 5 polar iterations, "
    "LR constant for 40% of steps then linear decay to 0, no weight decay"
)
