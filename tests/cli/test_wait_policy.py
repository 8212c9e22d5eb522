"""OpenMP's waiting threads sleep on a busy machine (the load average above
the core count) unless the user chose a policy; `mingpt env` says which."""
import os
import subprocess
import sys

from conftest import ROOT, invoke

PROBE = ("import os; os.getloadavg = lambda: ({load}, {load}, {load}); import mingpt_c._lib as L; "
         "print(os.environ.get('OMP_WAIT_POLICY'), '|', L.WAIT_POLICY)")


def probe(load: float, **env) -> str:
    e = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    r = subprocess.run([sys.executable, "-c", PROBE.format(load=load)], capture_output=True, text=True,
                       env=e, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_busy_machine_gets_passive_waits():
    out = probe(10_000.0)
    assert out.startswith("PASSIVE |") and "above" in out


def test_quiet_machine_keeps_the_default():
    out = probe(0.0)
    assert out.startswith("None |") and "default" in out


def test_the_users_choice_wins():
    assert probe(10_000.0, OMP_WAIT_POLICY="ACTIVE").startswith("ACTIVE | active (OMP_WAIT_POLICY is set)")


def test_env_reports_the_policy():
    res = invoke("env")
    assert res.exit_code == 0 and "waiting threads:" in res.output
