"""Training-length attributes as class attributes, so a short variant is a two-line subclass; SIGUSR1 handling.

nnU-Net sets ``num_epochs`` and friends inside ``nnUNetTrainer.__init__``; a class attribute alone would be
overwritten. :class:`ScheduleMixin` applies the class-level ``schedule`` after nnU-Net's ``__init__``, once, here,
instead of every variant copying an ``__init__``. It also writes nnU-Net's checkpoints atomically (a kill while one is
written leaves the previous one intact), for the variants of nnU-Net's own trainers (``nnUNetTrainer_demo``, budget
variants); the semi-supervised trainers write theirs atomically themselves.

``snapshot_epochs`` keeps extra checkpoints: after each listed epoch count ``E`` a copy of the training state is saved
as ``checkpoint_epoch<E>.pth`` beside nnU-Net's own (the label-efficiency benchmark evaluates the budget's half-way
point from it, to tell whether the supervised baseline converged, without a second training). Functions in
``EPOCH_LISTENERS`` are called with the trainer after every epoch (a progress bar, for example).

Time limits and preemption (Slurm's SIGUSR1)
--------------------------------------------
Slurm sends a signal shortly before a job's time limit or when it preempts the job, if asked to::

    #SBATCH --signal=USR1@120        # SIGUSR1 120 s before the time limit (and on preemption)

nnU-Net has no handler for it (SIGUSR1's default action kills the process, losing everything since the last
``checkpoint_latest.pth``, up to ``save_every`` epochs). Every trainer with :class:`ScheduleMixin` in its bases (every
semi_nnunet trainer, and the budget variants of nnU-Net's ``nnUNetTrainer``) handles it during ``run_training``:

1. The handler only records the signal; the iteration in progress finishes normally.
2. After that iteration, rank 0 writes ``checkpoint_latest.pth`` to the output folder, marked so that continuing
   (``--c``) *redoes* the interrupted epoch: the checkpoint says the epoch has not started and its logging holds
   the finished epochs only (the weights, optimizer and teacher are those after the last iteration done; the
   semi-supervised step counter is put back to the epoch's start, so the ramps and the EMA rule follow the epochs).
   No ``checkpoint_final.pth`` is written and no validation runs.
3. The data loaders are shut down, the previous SIGUSR1 handler is put back, and then
   * if that handler is a Python function, for example submitit's ``checkpoint_and_try_requeue`` (submitit with
     ``SUBMITIT_PREEMPT_SIGNAL=USR1``), it is called with ``(signum, None)``: it requeues the job and exits;
   * otherwise :class:`TrainingInterrupted` is raised: the process exits with :data:`INTERRUPTED_EXIT_CODE` (75,
     ``EX_TEMPFAIL``) after one log line saying where the checkpoint is and to continue with ``--c``.

A stock nnU-Net job script keeps working: the same ``nnUNetv2_train``/``semi_nnUNet_train`` command, with ``--c``
added for the rerun (``--c`` without a checkpoint starts a new training, so a requeued script may always pass it).
A signal that arrives after the last training iteration (during the last validation or ``on_train_end``) lets the
training finish: ``checkpoint_final.pth`` is written, then a Python previous handler is called as above; with none,
nnU-Net's final validation runs.

Details: the handler is installed only in the main thread (elsewhere, e.g. a training inside a thread, nothing
changes). SIGUSR1 is blocked while nnU-Net starts its data-augmentation workers in ``on_train_start``, so the
workers it forks (or spawns) keep it blocked and neither die of it nor run the previous handler; a signal arriving
meanwhile is delivered once the handler is in place. Under DDP the ranks agree after every iteration (one all-reduce
of the flag), so all stop after the same iteration; only rank 0 writes the checkpoint.
"""
import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

EPOCH_LISTENERS: List[Callable[[object], None]] = []

INTERRUPTED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): try again later, here with --c
PREEMPTION_SIGNAL = getattr(signal, "SIGUSR1", None)  # None on Windows: nothing is installed there
_NO_ATTRIBUTE = object()


def progress_bar_mode() -> bool:
    """True when the console shows one bar per training instead of nnU-Net's per-epoch log lines."""
    return os.environ.get("SEMI_NNUNET_PROGRESS", "") == "bar"


def snapshot_name(epoch: int) -> str:
    """The file a snapshot after ``epoch`` epochs is saved as (see ``ScheduleMixin.snapshot_epochs``)."""
    return f"checkpoint_epoch{epoch}.pth"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class TrainingInterrupted(SystemExit):
    """Training stopped on SIGUSR1 after writing a checkpoint that ``--c`` continues from; exit code 75.
    ``iteration``/``epoch`` None: the parent of DDP ranks, which knows only that its ranks stopped."""

    def __init__(self, signum: int, iteration: Optional[int], epoch: Optional[int], folder: str,
                 checkpoint_written: bool = True):
        where = f"checkpoint_latest.pth written to {folder}" if checkpoint_written else \
            f"no checkpoint written to {folder} (checkpointing is disabled)"
        if iteration is None:
            self.message = (f"DDP training interrupted by signal {_signal_name(signum)}: the ranks stopped after the "
                            f"same iteration; the latest checkpoint is in {folder}; continue with `--c` (same "
                            f"command).")
        else:
            self.message = (f"Training interrupted by signal {_signal_name(signum)} after iteration {iteration} of "
                            f"epoch {epoch}; {where}; continue with `--c` (same command).")
        super().__init__(INTERRUPTED_EXIT_CODE)
        self.code = INTERRUPTED_EXIT_CODE
        self.signum, self.iteration, self.epoch, self.folder = signum, iteration, epoch, folder
        self.checkpoint_written = checkpoint_written

    def __reduce__(self):  # picklable (e.g. raised in a Ray or multiprocessing worker)
        return type(self), (self.signum, self.iteration, self.epoch, self.folder, self.checkpoint_written)

    def __str__(self) -> str:
        return self.message


@contextlib.contextmanager
def preemption_forwarded_to_ranks(folder: str) -> Iterator[None]:
    """Around nnU-Net's ``mp.spawn`` of the DDP ranks, in their parent: SIGUSR1 to the parent (Slurm signals every
    process of a step, a scheduler or ``scancel --signal`` may signal only the parent, whose default action would kill
    it and orphan the ranks) is passed on to every rank, which checkpoints and stops as above; the parent waits for
    them, then calls a previous Python handler (submitit's requeue) or raises :class:`TrainingInterrupted` (exit 75).
    A rank that had not installed its handler yet dies of the signal before training anything: ``--c`` loses
    nothing. A signal after the ranks' last iteration lets them finish; the previous Python handler is then called."""
    if PREEMPTION_SIGNAL is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    import multiprocessing
    received: List[int] = []

    def forward(signum, frame) -> None:
        if not received:
            received.append(signum)
        for child in multiprocessing.active_children():
            try:
                os.kill(child.pid, signum)
            except (ProcessLookupError, TypeError):  # gone, or not started (pid None)
                pass
    previous = signal.getsignal(PREEMPTION_SIGNAL)
    signal.signal(PREEMPTION_SIGNAL, forward)
    failure = None
    try:
        yield
    except BaseException as e:  # noqa: BLE001 (mp.spawn's exception for a rank that exited 75 or died of the signal)
        if not received:
            raise
        failure = e
    finally:
        signal.signal(PREEMPTION_SIGNAL, previous if previous is not None else signal.SIG_DFL)
    if received:
        if callable(previous):
            previous(received[0], None)  # e.g. submitit: requeue and exit
        if failure is not None:
            interrupted = TrainingInterrupted(received[0], None, None, folder)
            print(interrupted.message, file=sys.stderr, flush=True)
            raise interrupted from failure


class ScheduleMixin:
    """Put before ``nnUNetTrainer`` in the bases. ``schedule`` maps trainer attributes to values.

    Also handles SIGUSR1 during ``run_training`` (Slurm's ``#SBATCH --signal=USR1@120``): the iteration in progress
    finishes, ``checkpoint_latest.pth`` is written so that ``--c`` redoes the interrupted epoch, and the previous
    handler (e.g. submitit's requeue) is called or :class:`TrainingInterrupted` (exit code 75) raised. A stock
    nnU-Net job script keeps working; see the module docstring."""
    schedule: Dict[str, object] = {}
    snapshot_epochs: Tuple[int, ...] = ()  # after these many epochs, also save checkpoint_epoch<E>.pth

    # nnU-Net records its constructor arguments by reading this signature, so it must be nnU-Net's own
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for key, value in type(self).schedule.items():
            if not hasattr(self, key):
                raise AttributeError(f"{type(self).__name__}.schedule sets '{key}', which the trainer does not have")
            setattr(self, key, value)

    def on_epoch_end(self):
        finished = self.current_epoch + 1  # nnU-Net counts the epoch as done at the end of its on_epoch_end
        if finished in tuple(self.snapshot_epochs):
            from batchgenerators.utilities.file_and_folder_operations import join
            self.save_checkpoint(join(self.output_folder, snapshot_name(finished)))
        super().on_epoch_end()
        for listener in list(EPOCH_LISTENERS):
            listener(self)
        self._update_progress_bar()

    # ------------------------------------------------------------------ one progress bar instead of the epoch log
    def print_to_log_file(self, *args, also_print_to_console=True, add_timestamp=True):
        """With ``SEMI_NNUNET_PROGRESS=bar`` (what our commands set unless ``--verbose``) nnU-Net's log lines go to the
        training's log file only; the console shows one progress bar per training."""
        if progress_bar_mode():
            also_print_to_console = False
        super().print_to_log_file(*args, also_print_to_console=also_print_to_console, add_timestamp=add_timestamp)

    def _update_progress_bar(self) -> None:
        if not progress_bar_mode() or EPOCH_LISTENERS or self.local_rank != 0:
            return  # the benchmark draws its own bar through EPOCH_LISTENERS
        bar = getattr(self, "_progress_bar", None)
        if bar is None:
            from tqdm import tqdm
            bar = self._progress_bar = tqdm(total=self.num_epochs, initial=self.current_epoch - 1, unit="epoch",
                                            desc=f"{type(self).__name__} fold {self.fold}", dynamic_ncols=True)
        bar.update(1)
        log = getattr(self.logger, "local_logger", self.logger).my_fantastic_logging
        shown = {}
        for key, name in (("train_losses", "loss"), ("ema_fg_dice", "pseudo_dice")):
            if log.get(key):
                shown[name] = f"{float(log[key][-1]):.4f}"
        bar.set_postfix(shown)
        if self.current_epoch >= self.num_epochs:
            bar.close()
            self._progress_bar = None

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        from semi_nnunet.utilities.file_ops import atomic_path
        with atomic_path(filename) as tmp:
            super().save_checkpoint(tmp)

    # ------------------------------------------------------------------ SIGUSR1: checkpoint, then stop
    def run_training(self):
        try:
            super().run_training()
        finally:  # also when the training fails: no handler of a finished trainer stays installed
            self._restore_preemption_handler()
            bar = getattr(self, "_progress_bar", None)
            if bar is not None:
                bar.close()
                self._progress_bar = None

    def on_train_start(self):
        in_main = PREEMPTION_SIGNAL is not None and threading.current_thread() is threading.main_thread()
        mask = None
        if in_main and hasattr(signal, "pthread_sigmask"):
            # the loader workers nnU-Net starts now inherit the mask: SIGUSR1 stays blocked in them
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {PREEMPTION_SIGNAL})
        try:
            super().on_train_start()
            self._preempt_signal: Optional[int] = None
            self._preempt_step_count = (None, 0)  # (epoch, iterations of it done in this run)
            if in_main:
                self._install_preemption_handler()
        finally:
            if mask is not None:  # a SIGUSR1 that came meanwhile is delivered now (to our handler once installed)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _install_preemption_handler(self) -> None:
        self._restore_preemption_handler()  # a second run_training of the same trainer: never chain to ourselves
        try:
            previous = signal.getsignal(PREEMPTION_SIGNAL)
            signal.signal(PREEMPTION_SIGNAL, self._on_preemption_signal)
        except ValueError:  # not the main thread of the main interpreter: leave signals alone
            return
        self._preempt_previous, self._preempt_installed = previous, True
        self._preempt_saved_step = vars(self).get("train_step", _NO_ATTRIBUTE)
        original = self.train_step  # bound: a subclass's own train_step (SemiSupervisedTrainer's does not call
        # nnU-Net's), or one set on the instance

        def train_step(batch):
            out = original(batch)
            self._after_train_step()
            return out
        self.train_step = train_step

    def _on_preemption_signal(self, signum, frame) -> None:
        """Only records the signal (no I/O in a signal handler); the training loop acts after the iteration."""
        if self._preempt_signal is None:
            self._preempt_signal = signum

    def _restore_preemption_handler(self) -> None:
        if not getattr(self, "_preempt_installed", False):
            return
        previous = self._preempt_previous
        signal.signal(PREEMPTION_SIGNAL, previous if previous is not None else signal.SIG_DFL)
        self._preempt_installed = False
        saved = self._preempt_saved_step
        if saved is _NO_ATTRIBUTE:
            vars(self).pop("train_step", None)
        else:
            self.train_step = saved

    def _iterations_done(self) -> int:
        epoch, count = self._preempt_step_count
        return count if epoch == self.current_epoch else 0

    def _pending_signal(self) -> Optional[int]:
        """The signal that arrived, agreed on by every rank under DDP (so that all stop after the same iteration)."""
        signum = self._preempt_signal
        if getattr(self, "is_ddp", False):
            from torch import distributed as dist
            if dist.is_available() and dist.is_initialized():
                flag = torch.tensor([signum or 0], dtype=torch.int64, device=self.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                signum = int(flag.item()) or None
        return signum

    def _after_train_step(self) -> None:
        self._preempt_step_count = (self.current_epoch, self._iterations_done() + 1)
        signum = self._pending_signal()
        if signum is not None:
            self._preempt_signal = signum
            self._stop_for_preemption(signum)

    def _stop_for_preemption(self, signum: int) -> None:
        from batchgenerators.utilities.file_and_folder_operations import join
        epoch, iteration = self.current_epoch, self._iterations_done()
        self.print_to_log_file(f"Received {_signal_name(signum)}: iteration {iteration} of epoch {epoch} is done; "
                               f"writing checkpoint_latest.pth so that --c redoes epoch {epoch}")
        try:
            self._save_checkpoint_for_redo(join(self.output_folder, "checkpoint_latest.pth"))
            written = not self.disable_checkpointing
            if self.local_rank == 0:
                self.print_to_log_file(
                    f"checkpoint_latest.pth written to {self.output_folder} (continues at epoch {epoch})" if written
                    else f"No checkpoint written to {self.output_folder}: checkpointing is disabled")
            if getattr(self, "is_ddp", False):
                from torch import distributed as dist
                if dist.is_available() and dist.is_initialized():
                    dist.barrier()  # the other ranks exit only once rank 0's checkpoint is on disk
            self._shut_down_loaders()
        finally:
            previous = self._preempt_previous
            self._restore_preemption_handler()
        interrupted = TrainingInterrupted(signum, iteration, epoch, self.output_folder, written)
        self.print_to_log_file(interrupted.message)
        if callable(previous):
            previous(signum, None)  # e.g. submitit: requeue and exit
        raise interrupted

    def _save_checkpoint_for_redo(self, filename: str) -> None:
        """``save_checkpoint`` as if epoch ``current_epoch`` had not started: nnU-Net stores ``current_epoch + 1``
        and resumes at the stored value, and its logger wants one value per finished epoch."""
        epoch = self.current_epoch
        logging = getattr(self.logger, "local_logger", self.logger).my_fantastic_logging
        kept = {key: value for key, value in logging.items() if isinstance(value, list)}
        has_step = isinstance(getattr(self, "global_step", None), int)
        step = self.global_step if has_step else None
        try:
            for key, value in kept.items():
                logging[key] = value[:epoch]
            if has_step:  # the semi-supervised step counter as at the epoch's start (ramps and EMA rule)
                self.global_step = max(0, step - self._iterations_done())
            self.current_epoch = epoch - 1
            self.save_checkpoint(filename)
        finally:
            self.current_epoch = epoch
            logging.update(kept)
            if has_step:
                self.global_step = step

    def _shut_down_loaders(self) -> None:
        """Stop the data-augmentation workers as nnU-Net's ``on_train_end`` does (every ``dataloader*`` with a
        ``_finish``), without its final checkpoint."""
        old_stdout = sys.stdout
        with open(os.devnull, "w") as devnull:
            sys.stdout = devnull  # batchgenerators prints while it stops its workers
            try:
                for name, loader in list(vars(self).items()):
                    finish = getattr(loader, "_finish", None) if name.startswith("dataloader") else None
                    if callable(finish):
                        finish()
            finally:
                sys.stdout = old_stdout

    def on_train_end(self):
        try:
            super().on_train_end()
        finally:
            previous = getattr(self, "_preempt_previous", None)
            installed = getattr(self, "_preempt_installed", False)
            self._restore_preemption_handler()
        signum = getattr(self, "_preempt_signal", None)
        if installed and signum is not None:
            self.print_to_log_file(f"Received {_signal_name(signum)} after the last training iteration: the training "
                                   f"is complete (checkpoint_final.pth)")
            if callable(previous):
                self._shut_down_loaders()
                previous(signum, None)
