"""Commands about the build and checkpoints as a whole: env, info, import,
export, bench."""
from __future__ import annotations

import json
import sys

import click

from mingpt_c.cli import options
from mingpt_c.errors import MinGPTError

# ------------------------------------------------------------------ env / info


@click.command()
def env():
    """What this build has: compiler, OpenMP and threads, vector path, CUDA."""
    from mingpt_c._lib import build_info

    info = build_info()
    yes = lambda b: "yes" if b else "no"
    click.echo(f"mingpt-c {info['version']}")
    click.echo(f"python      {sys.version.split()[0]}")
    click.echo(f"compiler    {info['compiler']}")
    click.echo(f"openmp      {yes(info['openmp'])} ({info['threads']} threads; waiting threads: "
               f"{info['wait_policy']})")
    click.echo(f"vector path {info['simd']}")
    click.echo(f"cuda        {_cuda_line(info['cuda'])}")
    from mingpt_c.run.distributed import mpi_available
    mpi = mpi_available()
    click.echo(f"mpi         {mpi or 'no (pip install mingpt-c[mpi] for data-parallel training)'}")


def _cuda_line(built: bool) -> str:
    """CUDA build yes/no, and the GPU: name, capability, memory, versions."""
    if not built:
        return "no (this build has no CUDA path; `make cuda` builds it on a machine with nvcc)"
    from mingpt_c import cuda

    try:
        i = cuda.info()
    except MinGPTError as e:
        return f"built, but no usable GPU: {e}"
    return (f"yes: {i['name']}, compute capability {i['capability']}, "
            f"{i['total_memory'] / 2**30:.1f} GiB ({i['free_memory'] / 2**30:.1f} free), "
            f"runtime {i['runtime_version']}, driver {i['driver_version']}; fp32 path deterministic, "
            f"tf32/bf16 products from cuBLAS's heuristics (deterministic on one GPU and version)")


@click.command()
@click.argument("ckpt", type=click.Path())
def info(ckpt):
    """What a checkpoint (or run directory) holds."""
    from mingpt_c import checkpoint
    from mingpt_c.cli import encoder, gpt, seq2seq, vit
    from mingpt_c.encoder import checkpoint as encoder_checkpoint
    from mingpt_c.gpt import checkpoint as gpt_checkpoint
    from mingpt_c.seq2seq import checkpoint as seq2seq_checkpoint
    from mingpt_c.vit import checkpoint as vit_checkpoint

    path = checkpoint.resolve(ckpt)
    kind = json.loads((path / "config.json").read_text()).get("model_type")
    load, describe = {"vit": (vit_checkpoint.load, vit.describe),
                      "bert": (encoder_checkpoint.load, encoder.describe),
                      "seq2seq": (seq2seq_checkpoint.load, seq2seq.describe)}.get(
                          kind, (gpt_checkpoint.load, gpt.describe))
    for key, value in [("checkpoint", str(path)), *describe(load(path), path)]:
        click.echo(f"{key:<11} {value}")


# ------------------------------------------------------------------ import / export


@click.command(name="import")
@click.argument("hf_dir", type=click.Path())
@click.option("--out", required=True, type=options.Writable(file_okay=False), help="checkpoint directory to write")
@click.option("--tokenizer", default="gpt2", help="tokenizer to store with the model")
def import_cmd(hf_dir, out, tokenizer):
    """Import a Hugging Face GPT2LMHeadModel, ViTForImageClassification or
    BERT-family (BertModel) directory (config.json + model.safetensors; BERT: its vocab.txt or tokenizer.json)."""
    from mingpt_c.hub import import_hf

    path = import_hf(hf_dir, out, tokenizer)
    click.echo(f"imported {hf_dir} -> {path}")


@click.command(name="export")
@click.argument("ckpt", type=click.Path())
@click.option("--out", required=True, type=options.Writable(file_okay=False), help="Hugging Face directory to write")
def export_cmd(ckpt, out):
    """Export a checkpoint as a Hugging Face directory: GPT2LMHeadModel for a
    GPT, BertModel / BertForMaskedLM for an encoder, ViTForImageClassification
    for a ViT."""
    from mingpt_c.hub import export_hf

    path = export_hf(ckpt, out)
    click.echo(f"exported {ckpt} -> {path} (load with transformers' from_pretrained)")


# ------------------------------------------------------------------ bench


@click.command()
@click.option("--config", default="baby,small,gpt2", help="comma-separated: baby, small, gpt2")
@click.option("--rounds", type=options.POSITIVE_INT, default=5, help="alternating rounds per side (medians over these)")
@click.option("--steps", type=options.POSITIVE_INT, default=10, help="timed training steps per round")
@click.option("--threads", type=options.POSITIVE_INT, default=2, help="C core (and PyTorch) threads")
@click.option("--sample-tokens", type=options.NON_NEGATIVE_INT, default=256, help="sampling benchmark length (0: skip)")
@click.option("--no-torch", is_flag=True, help="ours only, even where PyTorch is installed")
@click.option("--profile", is_flag=True,
              help="instead: time each kernel group of our training step (matmul, attention, ...)")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu",
              help="cuda: GPU training steps beside PyTorch eager bf16 and torch.compile "
                   "(configs gpt2-1024, gpt2-1024-b32, tiny)")
@click.option("--dtype", type=click.Choice(["fp32", "tf32", "bf16"]), default="bf16",
              help="with --device cuda: precision of our matrix products")
@click.option("--no-compile", is_flag=True, help="with --device cuda: skip the torch.compile side")
def bench(config, rounds, steps, threads, sample_tokens, no_torch, profile, device, dtype, no_compile):
    """Training and sampling tokens/s beside PyTorch: eager on the CPU; eager
    bf16 and torch.compile on the GPU (--device cuda)."""
    from mingpt_c.benchmarks.cpu import parse_configs, run, run_profile

    if device == "cuda":
        from mingpt_c.benchmarks.cuda import CUDA_CONFIGS, run_cuda

        names = [n for n in config.split(",") if n]
        bad = [n for n in names if n not in CUDA_CONFIGS]
        if bad or not names:
            raise click.ClickException(f"--device cuda configs are {', '.join(CUDA_CONFIGS)}; "
                                       f"got {config!r}")
        if profile:
            from mingpt_c.benchmarks.cuda import profile_cuda

            for n in names:
                profile_cuda(n, steps, dtype, echo=click.echo)
            return
        run_cuda(names, rounds, steps, dtype, not no_torch, not no_compile, echo=click.echo)
        return
    try:
        names = parse_configs(config)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if profile:
        run_profile(names, steps, threads, echo=click.echo)
        return
    run(names, rounds, steps, threads, sample_tokens, not no_torch, echo=click.echo)
