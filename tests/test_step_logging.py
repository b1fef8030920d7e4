"""Training steps log only where Lightning's loggers write (scfate.models.step_logging): the CSV a run writes, and
the epoch's last value its epoch line prints, are those of logging every step."""

import csv

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from scfate.models.step_logging import logs_this_step


class Tiny(pl.LightningModule):
    def __init__(self, every_step: bool):
        super().__init__()
        self.lin, self.every_step = torch.nn.Linear(3, 1), every_step

    def training_step(self, batch, batch_idx):
        loss = self.lin(batch[0]).pow(2).mean()
        if self.every_step or logs_this_step(self, batch_idx):
            self.log("train/loss", loss, batch_size=len(batch[0]))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def run(tmp_path, every_step: bool):
    torch.manual_seed(0)
    model = Tiny(every_step)
    loader = DataLoader(TensorDataset(torch.randn(28, 3)), batch_size=4)  # 7 batches: the last is no 3rd step
    logger = pl.loggers.CSVLogger(tmp_path, name=str(every_step))
    trainer = pl.Trainer(max_epochs=2, log_every_n_steps=3, logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, loader)
    with open(f"{logger.log_dir}/metrics.csv") as f:
        return list(csv.DictReader(f)), float(trainer.callback_metrics["train/loss"])


def test_logging_only_on_logger_steps_writes_the_same_rows(tmp_path):
    rows, last = run(tmp_path, every_step=False)
    assert rows == run(tmp_path, every_step=True)[0] and last == run(tmp_path, every_step=True)[1]
    assert len(rows) >= 4  # every 3rd step and each epoch's last batch


def test_a_bare_call_without_trainer_logs():
    assert logs_this_step(Tiny(False), 0)
