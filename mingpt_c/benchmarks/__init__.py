"""What the benchmark scripts share: the PyTorch twins (torch_gpt,
torch_seq2seq), the `mingpt bench` runners (cpu, cuda) and the name of the
CPU a sitting ran on."""
from __future__ import annotations

import platform
import subprocess


def cpu_model() -> str:
    """The CPU's model name as lscpu gives it (else the platform's guess)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"
