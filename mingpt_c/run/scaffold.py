"""The run scaffold: everything a training command does besides its
model's arithmetic, written once for every family. A family's loop stays
short and explicit (its batches, forward, backward, evaluation) and calls
the scaffold for the rest:

    with Run(tc, resume, given, log) as run:   # MPI world, lock, config, device, threads
        tc = run.cfg                           # a resumed run's saved configuration
        ...data, model, optimizer (from run.dir / "latest" when run.resume)...
        run.average_weights(opt, average)      # --ema (average: a resumed run's)
        run.begin(start, total, save=..., state=..., best_key=..., command=...)
        while it < total and not run.should_stop():
            ...for each micro-batch: scale, w = run.weights(n, n_step); forward; backward(scale)...
            loss = run.all_reduce(model.grads, loss)
            norm = run.step(opt, model.grads, loss, lr, it)    # the non-finite policy
            it += 1
            run.tick(it, loss, lr, norm, count)                # log.jsonl, progress
            ...evaluate (with run.evaluating(model.params)): run.record(...), run.save_best(...),
               run.save_latest(...), which write run.checkpoint_weights(model.params)
        return run.finish(it, result)

What the scaffold owns:
- the MPI world (run.distributed) or one process, the C core's threads,
  the device (--device, --dtype; the GPU only without MPI);
- the run directory (run.rundir): its lock, stale temporaries, refusing a
  new run over an old one, the --resume rule (the saved configuration
  wins, a contradicting option is an error), the global batch kept when a
  run resumes on another number of ranks;
- run_config.json; log.jsonl, cut back to the resumed iteration; the
  progress bar or plain lines; the final plot (run.plot);
- SIGINT and SIGTERM: the loop stops after the step, latest/ is saved, and
  the result carries the signal (the CLI exits with 128 + its number);
- an error raised on one rank inside the loop (rank 0's disk is full)
  aborts every rank at once, with that rank's line;
- the non-finite policy: a step whose loss or gradient is not finite is
  skipped; --max-nan-steps of them in a row stop the run with an error;
- --ema D: an exponential moving average of the weights (nn/optim.py
  WeightAverage), updated after every step taken, is the model evaluated
  and saved; training goes on from its own weights, which checkpoints keep
  beside AdamW's moments for --resume;
- best/ and latest/ through the family's save function, with the train
  state every checkpoint carries (iteration, best metric, global batch,
  options, seconds of training so far);
- the run's clock, elapsed(): seconds since the run began, a resumed run
  going on from its checkpoint's, so log.jsonl and the summary count the
  whole run over all its sittings;
- gradient accumulation and data parallelism: weights() makes every
  micro-batch on every rank count in proportion to its items (rows,
  tokens), so a step's gradient is the mean over the global batch whatever
  the number of ranks and micro-batches; all_reduce() averages the one flat
  gradient buffer over the ranks and sums the loss.
Rank 0 alone locks, logs, shows progress and writes checkpoints.

--device cuda puts the model's buffers and AdamW's moments in GPU memory;
checkpoints hold host copies, so a run may resume, and a model be
evaluated, on either device.
"""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from mingpt_c._lib import set_num_threads
from mingpt_c.device import Device, default_dtype
from mingpt_c.errors import MinGPTError
from mingpt_c.files import write_atomic
from mingpt_c.nn.optim import WeightAverage
from mingpt_c.run.distributed import default_threads, get_world
from mingpt_c.run.plot import plot_log
from mingpt_c.run.progress import Progress
from mingpt_c.run.rundir import (RUN_CONFIG, DirectoryLock, RunDirError, cut_log, has_run,
                                 remove_stale_temporaries, resolve_resumed, saved_config)
from mingpt_c.run.signals import StopFlag

LOG = "log.jsonl"
_SHORT = {"tokens": "tok", "images": "img"}   # the progress bar's names of the units


class Diverged(MinGPTError):
    """Too many non-finite steps in a row. The loss is all-reduced, so every
    rank raises it at the same step: the one error of the loop that is not
    one rank's alone."""


class Run:
    """One training run in its directory (see the module's docstring)."""

    def __init__(self, cfg, resume: bool = False, given: dict | None = None, log=print):
        self.t0 = time.perf_counter()
        self.resume, self.log = resume, log
        self.dir = Path(cfg.out)
        self.world = get_world(getattr(cfg, "dist_timeout", 300.0))
        self.is_main = self.world.is_main
        self._lock = self._logf = self._progress = self._stop = None
        self._looping = False
        self.stopped, self.signum = False, 0
        self.resumed_state: dict = {}
        self.best = None
        self.average: WeightAverage | None = None
        self._nan_streak = 0
        self._earlier = 0.0   # seconds the run trained before this sitting (its checkpoint's)
        self.cfg = cfg
        try:
            if resume:   # the directory first: a run in it is refused with its PID
                if not self.dir.is_dir():
                    raise RunDirError(f"--resume: no checkpoint to resume in {self.dir} "
                                      f"(expected {self.dir}/latest)")
                saved, self.resumed_state = self._open_dir()
                self.cfg = resolve_resumed(cfg, saved, given, self.dir)
                self._earlier = float(self.resumed_state.get("seconds") or 0.0)
            for name in ("batch_size", "grad_accum", "log_interval", "max_nan_steps"):
                if getattr(self.cfg, name) < 1:
                    raise MinGPTError(f"--{name.replace('_', '-')} {getattr(self.cfg, name)} must be at least 1")
            if resume:
                self._keep_global_batch()
            self.device = self._device()   # a new run: before its directory exists
            if self.cfg.threads:
                set_num_threads(self.cfg.threads)
            elif self.world.size > 1:
                set_num_threads(default_threads(self.world))
            if not resume:
                self._open_dir()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ setup

    def _device(self) -> Device:
        """The run's device; on the GPU cfg.dtype is resolved to its default."""
        cfg = self.cfg
        if cfg.device == "cuda" and self.world.size > 1:
            raise MinGPTError("data parallelism over MPI runs on the CPU; --device cuda trains "
                              "on one GPU (run without mpiexec)")
        if cfg.device == "cuda" and cfg.dtype is None:
            Device("cuda")   # says plainly when there is no GPU
            cfg.dtype = default_dtype("cuda")
        return Device(cfg.device, cfg.dtype)

    def _keep_global_batch(self) -> None:
        """A run resumed on another number of ranks keeps its global batch
        sequence, cut among the ranks it has now."""
        gb, W = self.resumed_state.get("global_batch"), self.world.size
        if not gb or gb == self.cfg.batch_size * W:
            return
        if gb % W:
            raise MinGPTError(f"the run's global batch of {gb} rows cannot be split among {W} ranks")
        self.cfg.batch_size = gb // W
        self.say(f"resuming a global batch of {gb} rows on {W} rank(s): {self.cfg.batch_size} per rank")

    def _open_dir(self) -> list[dict]:
        """Rank 0 locks the directory, clears what dead writers left, and
        refuses a new run over an old one (a resumed one without its run);
        on --resume it reads the run's saved configuration and train state
        and returns them ([config, state]). Every rank gets them from rank
        0, not from the files, which rank 0 rewrites as soon as its run
        begins; every rank raises if rank 0 failed."""
        failure, saved = None, [{}, {}]
        if self.is_main:
            try:
                self._lock = DirectoryLock(self.dir)
                if self.resume and not has_run(self.dir):
                    raise RunDirError(f"--resume: no checkpoint to resume in {self.dir} "
                                      f"(expected {self.dir}/latest)")
                if not self.resume and has_run(self.dir):
                    raise RunDirError(f"{self.dir} already holds a run: pass --resume to continue it, "
                                      f"or choose another --out")
                for name in remove_stale_temporaries(self.dir):
                    self.say(f"removed {self.dir / name}, a checkpoint left half-written by a process "
                             f"that is gone")
                if self.resume:
                    saved = [saved_config(self.dir), _read_state(self.dir / "latest")]
            except MinGPTError as e:
                failure = e
        if self.world.any(failure is not None):
            raise failure or RunDirError("rank 0 could not open the run directory (see its message)")
        return self.world.broadcast(saved) if self.resume else saved

    def begin(self, start: int, total: int, save, state=None, best_key: str | None = None,
              best_mode: str = "min", unit: str = "tokens", plot: str | None = "loss.png",
              command: str = "mingpt train") -> None:
        """The loop is about to run from iteration start to total: writes
        run_config.json, opens log.jsonl (cut back to start on resume),
        starts the progress display and takes over SIGINT and SIGTERM.
        save(path, train_state) writes a checkpoint; state(it) is the
        family's part of its train state; best_key names the metric that
        picks best/ ("min" or "max" is better), kept in every train state;
        unit names what tick() counts (tokens, images); command, with
        --resume, continues the run."""
        self.start, self.total = start, total
        self._save_fn, self._state_fn = save, state or (lambda it: {})
        self.best_key, self.best_mode = best_key, best_mode
        self.best = self.resumed_state.get(best_key) if best_key else None
        if isinstance(self.best, float) and math.isinf(self.best):
            self.best = None
        self.unit, self.plot, self.command = unit, plot, command
        if self.is_main:
            write_atomic(self.dir / RUN_CONFIG, json.dumps(dataclasses.asdict(self.cfg), indent=2, default=str) + "\n")
            if self.resume:
                cut_log(self.dir / LOG, start)
            # line-buffered; a new run starts a new log (a run that died before its first checkpoint left one)
            self._logf = open(self.dir / LOG, "a" if self.resume else "w", buffering=1)
            if self.cfg.progress:
                self._progress = Progress(total, start, self.log)
        self._stop = StopFlag().__enter__()
        self._looping = True
        self._window = ([], 0, time.perf_counter())

    # ------------------------------------------------------------ messages

    def elapsed(self) -> float:
        """Seconds of the run so far: this sitting's, plus those before the
        checkpoint a resumed run started from."""
        return self._earlier + time.perf_counter() - self.t0

    def say(self, msg: str) -> None:
        """A line on stderr from rank 0 (through the progress bar when there is one)."""
        if self.is_main:
            (self._progress.write if self._progress else self.log)(msg)

    def say_device(self) -> None:
        """On a GPU run, the line naming the GPU and the products' precision."""
        if self.device.is_cuda:
            from mingpt_c import cuda
            self.say(f"device: {cuda.info()['name']}, {self.cfg.dtype} matrix products")

    def record(self, rec: dict) -> None:
        """One line of log.jsonl."""
        if self._logf:
            self._logf.write(json.dumps(rec) + "\n")

    # ------------------------------------------------------------ the step

    def should_stop(self) -> bool:
        """Whether a SIGINT or SIGTERM reached any rank (all ranks agree)."""
        local = (self._stop.signum or signal.SIGINT) if (self._stop and self._stop.requested) else 0
        sig = int(self.world.allreduce_max(float(local)))
        if sig:
            self.stopped, self.signum = True, sig
        return self.stopped

    def weights(self, n: int, n_step: int) -> tuple[float, float]:
        """(loss scale for backward, weight of its loss in the step's loss)
        of a micro-batch of n items (rows, tokens) on this rank, in a step
        of n_step items over all micro-batches and ranks. After all_reduce
        the gradient is the mean over the step's items, whatever the ranks
        and micro-batches: sum over them of (n / n_step) * gradient."""
        n_step = max(n_step, 1)
        return (n * self.world.size) / n_step, n / n_step

    def all_reduce(self, grads, loss: float) -> float:
        """Averages the flat gradient buffer over the ranks in place; returns
        the step's loss (the sum of every rank's weighted losses)."""
        self.world.allreduce_mean_(grads)
        return self.world.allreduce_sum(loss)

    def step(self, opt, grads, loss: float, lr: float, it: int) -> float:
        """The optimizer step, unless the loss or the gradient is not finite:
        then the step is skipped (with a note), and max_nan_steps such steps
        in a row stop the run; a step taken moves the weight average. Returns
        the gradient norm (nan if skipped)."""
        norm = opt.step(grads, lr) if math.isfinite(loss) else float("nan")
        if math.isfinite(loss) and math.isfinite(norm):
            self._nan_streak = 0
            if self.average:
                self.average.update(opt.params, opt.t)
            return norm
        self._nan_streak += 1
        self.say(f"iter {it}: non-finite loss or gradient (loss {loss}, grad norm {norm}): step skipped")
        if self._nan_streak >= self.cfg.max_nan_steps:
            where = (f"the last good checkpoint is in {self.dir / 'latest'}" if has_run(self.dir)
                     else "no checkpoint was saved yet")
            raise Diverged(f"training diverged: {self._nan_streak} non-finite steps in a row at iteration "
                           f"{it}; {where} (try a lower --lr)")
        return norm

    def tick(self, it: int, loss: float, lr: float, norm: float, count: int, **fields) -> None:
        """After the step that brought the run to iteration it: count items
        (tokens, images) went through it. Every log_interval iterations, and
        at the last, a train record (mean loss since the last one, lr,
        gradient norm, throughput, fields) and the progress display."""
        losses, seen, t = self._window
        losses.append(loss)
        seen += count
        if it % self.cfg.log_interval == 0 or it == self.total:
            now = time.perf_counter()
            rate = seen / max(now - t, 1e-9)
            mean = float(np.mean(losses))
            self.record({"type": "train", "iter": it, **fields, "loss": mean, "lr": lr, "grad_norm": norm,
                         f"{self.unit}_per_s": rate})
            if self._progress:
                shown = {k: f"{v:.2f}" if isinstance(v, float) else v for k, v in fields.items()}
                self._progress.show(it, dict(shown, loss=f"{mean:.4f}", lr=f"{lr:.2e}",
                                             **{f"{_SHORT.get(self.unit, self.unit)}_s": f"{rate:,.0f}"}))
            losses, seen, t = [], 0, now
        self._window = (losses, seen, t)
        if self._progress:
            self._progress.update()

    # ------------------------------------------------------------ the weight average (--ema)

    def average_weights(self, opt, average=None) -> None:
        """With --ema (cfg.ema > 0), keeps the average of the weights opt
        trains, starting from average (a resumed run's, from mingpt_c.
        checkpoint.training_weights) or from the weights as they are."""
        decay = self.cfg.ema   # every family's config derives from nn/optim.py OptimConfig
        self.average = WeightAverage(opt.params, decay, average) if decay else None

    def evaluating(self, params):
        """A context in which params hold the model the run evaluates and
        saves: the average with --ema (the training weights come back
        after), else the weights themselves."""
        return self.average.swapped_in(params) if self.average else nullcontext()

    def checkpoint_weights(self, params) -> dict:
        """A family checkpoint's save() arguments for its weights: params, the
        model (the average with --ema), and train_params, the training
        weights kept for --resume (None without --ema)."""
        if self.average:
            return {"params": self.average.avg, "train_params": params}
        return {"params": params, "train_params": None}

    # ------------------------------------------------------------ checkpoints

    def _save(self, name: str, it: int, extra: dict) -> None:
        if not self.is_main:
            return
        W = self.world.size
        st = {"iter": it, **self._state_fn(it), **extra}
        if self.best_key:
            st[self.best_key] = self.best
        st.update(seed=getattr(self.cfg, "seed", None), global_batch=self.cfg.batch_size * W, world_size=W,
                  seconds=self.elapsed(), options=dataclasses.asdict(self.cfg))
        self._save_fn(self.dir / name, st)

    def save_latest(self, it: int, **extra) -> None:
        """latest/: the checkpoint a --resume continues from."""
        self._save("latest", it, extra)

    def save_best(self, it: int, value: float | None = None, **extra) -> bool:
        """best/, when value is better than the best so far (or, with no
        value, unconditionally: a run without a metric keeps its last
        model as its best). Returns whether it was written."""
        if value is not None:
            if self.best is not None and not (value < self.best if self.best_mode == "min" else
                                              value > self.best):
                return False
            self.best = value
        self._save("best", it, extra)
        return True

    # ------------------------------------------------------------ the end

    def finish(self, it: int, result: dict | None = None) -> dict:
        """After the loop: latest/ when a signal stopped it, the plot, the
        summary (iter, interrupted, signal, out, main, seconds: elapsed())."""
        if self.stopped:
            self.save_latest(it)
        self._close_loop()
        if self.is_main and self.plot:
            plot_log(self.dir / LOG, self.dir / self.plot)
        if self.stopped:
            self.say(f"interrupted ({_signal_name(self.signum)}) at iteration {it}: checkpoint saved in "
                     f"{self.dir / 'latest'}; continue with: {self.command} --resume")
        return dict(result or {}, iter=it, interrupted=self.stopped, signal=self.signum, out=str(self.dir),
                    main=self.is_main, seconds=self.elapsed())

    def _close_loop(self) -> None:
        self._looping = False
        if self._progress:
            self._progress.close()
            self._progress = None
        if self._logf:
            self._logf.close()
            self._logf = None
        if self._stop:
            self._stop.__exit__(None, None, None)
            self._stop = None

    def close(self) -> None:
        """Ends the run's hold on everything (also on an error)."""
        self._close_loop()
        if self._lock:
            self._lock.release()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        looping = self._looping
        self.close()
        if looping and self.world.size > 1 and isinstance(exc, Exception) and not isinstance(exc, Diverged):
            # An error inside the loop is this rank's alone (rank 0's disk is
            # full, say): the other ranks already wait in the next collective
            # and would wait --dist-timeout. End the whole job now, with
            # this rank's line. (Errors before the loop come from the same
            # configuration and files on every rank, so every rank raises them.)
            self.world.abort(f"rank {self.world.rank}: {exc}" if isinstance(exc, MinGPTError)
                             else f"rank {self.world.rank}: {type(exc).__name__}: {exc}")
        return False


def _read_state(ckpt: Path) -> dict:
    """The train_state.json of a checkpoint ({} if unreadable: the family's
    loader then says what is wrong)."""
    from mingpt_c.checkpoint import resolve

    try:
        return json.loads((resolve(ckpt) / "train_state.json").read_text())
    except (MinGPTError, OSError, ValueError):
        return {}


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_status(result: dict) -> int:
    """The exit status of a training command: 128 + the signal that stopped
    it (130 SIGINT, 143 SIGTERM), 0 when it finished."""
    return 128 + int(result.get("signal") or 0) if result.get("interrupted") else 0
