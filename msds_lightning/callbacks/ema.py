"""EMA with a copy phase: Lightning's :class:`~lightning.pytorch.callbacks.EMAWeightAveraging`, except that
before ``copy_before_step`` the averaged weights simply follow the live ones (a copy after every optimizer
step) instead of staying at the initial weights. This is the EMA policy of BBDM and IDC (decay 0.995 every
8 optimizer steps, copies before 15,000 optimizer steps = 30,000 mini-batches at gradient accumulation 2),
so validation and exported weights early in training are the trained ones, not the initialisation."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import EMAWeightAveraging


class CopyThenEMAWeightAveraging(EMAWeightAveraging):
    """:param decay: EMA decay per update; :param update_every_n_steps: optimizer steps between EMA updates;
    :param copy_before_step: optimizer steps (0-based index) before which the average is a copy.
    Other arguments as :class:`EMAWeightAveraging` (checkpointing of the average is inherited)."""

    def __init__(self, decay: float = 0.995, update_every_n_steps: int = 8, copy_before_step: int = 15000,
                 **kwargs: Any) -> None:  # fmt: skip
        if copy_before_step < 0:
            raise ValueError(f"copy_before_step must be >= 0, got {copy_before_step}")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        super().__init__(decay=decay, update_every_n_steps=update_every_n_steps,
                         update_starting_at_step=copy_before_step, **kwargs)  # fmt: skip
        self.copy_before_step = int(copy_before_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step_idx = trainer.global_step - 1  # 0-based index of the optimizer step just taken
        if 0 <= step_idx < self.copy_before_step and trainer.global_step > self._latest_update_step:
            # AveragedModel copies the weights when it has averaged nothing yet
            self._average_model.n_averaged.zero_()
            self._average_model.update_parameters(pl_module)
            self._latest_update_step = trainer.global_step
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
