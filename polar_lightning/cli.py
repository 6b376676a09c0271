"""The ``polar-lightning`` command: LightningCLI over GPT2Module and FineWebDataModule.

    polar-lightning fit --config configs/demo.yaml
    polar-lightning fit --config configs/gpt2_small_fineweb.yaml --config configs/method/jordan.yaml
    polar-lightning fit --config configs/demo.yaml --print_config
    polar-lightning prepare ...            # tokenise a corpus into shards (polar_lightning.data.prepare)

Bad input (an unknown key, a wrong type, a preset that does not exist) ends with one line naming it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

PROG = "polar-lightning"


class PolarLightningCLI(LightningCLI):
    """LightningCLI whose optimizer lives in the module (``auto_configure_optimizers=False``: the hybrid
    needs its own parameter groups) and whose model vocabulary follows the data module's."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        from polar_lightning.callbacks.run_info import RunInfo

        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        # Always on: every run's log dir records the code, packages and hardware that produced it.
        parser.add_lightning_class_args(RunInfo, "run_info")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            # Validation errors from the classes' own checks (e.g. GPTConfig) are user input errors.
            raise UsageError(str(err)) from err


    def before_fit(self) -> None:
        # Checked here, not first inside configure_optimizers, so that a bad pair ends as one line.
        max_steps, warmup = self.trainer.max_steps, getattr(self.model.hparams, "warmup_steps", 0)
        if max_steps is None or max_steps <= 0:
            raise UsageError(f"trainer.max_steps must be > 0 (the lr schedule spans it), got {max_steps}")
        if warmup > max_steps:
            raise UsageError(f"model.warmup_steps={warmup} exceeds trainer.max_steps={max_steps}")


class UsageError(Exception):
    """A configuration the classes rejected; reported as one line, not a traceback."""


def one_line(message: str) -> str:
    """Collapse a (possibly multi-line, nested) parser message to one line of at most 400 characters."""
    lines = [line.strip(" -") for line in message.strip().splitlines() if line.strip(" -")]
    text = ""
    for line in lines[:3]:
        text += (" " if text.endswith(":") else "; " if text else "") + line
    text = re.sub(r"<class '(\w+)'>", r"\1", text)
    text = re.sub(r"(an? )?typing\.Literal\[(.*?)\]", r"one of \2", text)
    return text if len(text) <= 400 else text[:397] + "..."


def _prepare(argv: Sequence[str]) -> int:
    from polar_lightning.data.prepare import main as prepare_main

    result = prepare_main(list(argv))
    return int(result) if isinstance(result, int) else 0


def build_cli(args: Sequence[str] | None = None, **kwargs: Any) -> PolarLightningCLI:
    """Parse ``args`` (None: the command line) and run the chosen subcommand."""
    from polar_lightning.data import FineWebDataModule
    from polar_lightning.module import GPT2Module

    parser_kwargs = {"exit_on_error": False, "prog": PROG}
    description = (
        "Train GPT-2 with the Muon (Polar Express) / AdamW hybrid optimizer. "
        "`polar-lightning prepare --help` tokenizes a corpus into shards."
    )
    return PolarLightningCLI(
        GPT2Module,
        FineWebDataModule,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={sub: dict(parser_kwargs) for sub in ("fit", "validate", "test", "predict")}
        | parser_kwargs | {"description": description},
        args=None if args is None else list(args),
        **kwargs,
    )


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the ``polar-lightning`` console script and ``python -m polar_lightning``."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] == "prepare":
        return _prepare(argv[1:])
    try:
        # args=None lets LightningCLI read sys.argv itself (it warns when given both).
        build_cli(None if args is None else argv)
    except (ArgumentError, UsageError) as err:
        print(f"{PROG}: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    return 0
