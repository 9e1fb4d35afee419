"""Security: what a sweep exposes on the network, what it loads from disk, and which user strings
become paths.

- The embedded local Ray listens on loopback only and keeps Ray's token authentication on: the GCS
  refuses a client without the token (checked against a real instance in a subprocess).
- Checkpoints load with weights_only=True: a planted malicious pickle is refused and never runs.
- No module unpickles anything (pickle, torch.load without weights_only=True, yaml.load, ...).
- Strings that become paths (trial ids, sweep names) cannot leave the results folder.
(cluster.yaml opening SSH only is checked in tests/cluster/test_cluster_yaml.py.)
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from orchestrator.spec import LRStudySpec, SweepSpec
from trainer.config import TrialConfig
from trainer.loop import CHECKPOINT_FILE, CheckpointError, load_checkpoint
from trainer.schema import CHECKPOINTS_DIR

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("trainer", "orchestrator", "analysis", "benchmarks")

# ---- (a) the embedded local Ray: loopback only, token authentication on -----------------------------

LOCAL_RAY = r"""
import json, os, subprocess, sys, time
from pathlib import Path
from orchestrator.tune import runtime
import ray
from ray._raylet import AuthenticationMode, get_authentication_mode

handle = runtime.start_ray(num_cpus=1, local=True, temp_root=sys.argv[1])
try:
    gcs = ray.get_runtime_context().gcs_address
    time.sleep(1.0)  # let the agents and the first worker open their ports

    def descendants(root):
        parent = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                parent[int(pid)] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
        found, grew = {root}, True
        while grew:
            new = {p for p, pp in parent.items() if pp in found} - found
            found |= new
            grew = bool(new)
        return found

    def listening_sockets(pids):
        # inode -> local address of every listening TCP socket, then the ones these processes hold
        listening = {}
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A":  # TCP_LISTEN
                    listening[f[9]] = f[1]
        held = []
        for pid in pids:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                inode = target[len("socket:["):-1] if target.startswith("socket:[") else None
                if inode in listening:
                    held.append(listening[inode])
        return held

    probe = (
        "import sys\n"
        "from ray._raylet import GcsClient\n"
        "try:\n"
        "    GcsClient(address=sys.argv[1]).internal_kv_keys(b'', None, timeout=10)\n"
        "    print('ACCEPTED')\n"
        "except Exception as exc:\n"
        "    print('REFUSED', type(exc).__name__)\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    probes = {}
    for label, extra in {"no token": {"RAY_AUTH_MODE": "disabled"},
                         "wrong token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32},
                         "the token": {"RAY_AUTH_MODE": "token"}}.items():
        done = subprocess.run([sys.executable, "-c", probe, gcs], env={**clean, **extra}, capture_output=True,
                              text=True, timeout=60)
        probes[label] = (done.stdout.strip().splitlines() or ["?"])[-1]

    print(json.dumps({
        "mode": handle.mode,
        "auth": "token" if get_authentication_mode() == AuthenticationMode.TOKEN else "disabled",
        "gcs": gcs,
        "nodes": [n["NodeManagerAddress"] for n in ray.nodes()],
        "node_ip": ray.util.get_node_ip_address(),
        "listening": listening_sockets(descendants(os.getpid())),
        "probes": probes,
    }), flush=True)
finally:
    handle.stop()
"""


def is_loopback(hex_address: str) -> bool:
    """/proc/net/tcp{,6} 'HEXIP:PORT' -> whether the IP is 127.0.0.0/8 or ::1 (or ::ffff:127.x)."""
    ip = hex_address.split(":")[0]
    if len(ip) == 8:  # IPv4, little-endian
        return ip[-2:] == "7F"
    if ip == "00000000000000000000000001000000":  # ::1
        return True
    return ip[:24] == "0000000000000000FFFF0000" and ip[-2:] == "7F"  # ::ffff:127.x.x.x


def test_is_loopback_reads_proc_net_addresses():
    assert is_loopback("0100007F:1F90") and is_loopback("0000000000000000FFFF00000100007F:1F90")
    assert is_loopback("00000000000000000000000001000000:0016")
    assert not is_loopback("00000000:1F90")  # 0.0.0.0: every interface
    assert not is_loopback("0A00000A:1F90")  # 10.0.0.10
    assert not is_loopback("00000000000000000000000000000000:1F90")  # ::


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_local_ray_listens_on_loopback_only_and_requires_the_token(tmp_path_factory, subprocess_env, python):
    env = {k: v for k, v in subprocess_env.items() if not k.startswith("RAY_AUTH")}  # Ray's default, untouched
    temp = tmp_path_factory.mktemp("rs", numbered=True)
    done = subprocess.run(
        [python, "-c", LOCAL_RAY, str(temp)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        start_new_session=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["mode"] == "local"
    assert facts["gcs"].startswith("127.0.0.1:")
    assert facts["node_ip"] == "127.0.0.1" and set(facts["nodes"]) == {"127.0.0.1"}
    assert facts["listening"], "found no listening socket of the Ray processes; the check proves nothing"
    assert all(is_loopback(a) for a in facts["listening"]), facts["listening"]
    assert facts["auth"] == "token"
    assert facts["probes"] == {
        "no token": "REFUSED AuthenticationError",
        "wrong token": "REFUSED AuthenticationError",
        "the token": "ACCEPTED",
    }, facts["probes"]


def test_runtime_never_turns_token_authentication_off():
    source = (ROOT / "orchestrator" / "tune" / "runtime.py").read_text()
    assert "RAY_AUTH_MODE" not in re.sub(r'""".*?"""|#.*', "", source, flags=re.S)  # only mentioned in prose


# ---- (c) checkpoints: weights_only ------------------------------------------------------------------


class Payload:
    """Pickles as `open(marker, "w")`: loading it with plain pickle creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(folder: Path, marker: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_FILE
    torch.save({"step": 10, "wall_s": 1.0, "model": {}, "optimizers": [], "note": Payload(marker)}, path)
    assert not marker.exists()
    return path


def test_the_planted_checkpoint_would_run_code_if_unpickled(tmp_path):
    """The control: without weights_only the file does run its payload (so the next tests mean something)."""
    marker = tmp_path / "PWNED"
    path = plant(tmp_path / "ckpt", marker)
    subprocess.run(
        [sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=False)"],
        capture_output=True,
        timeout=60,
    )
    assert marker.exists()


def test_load_checkpoint_refuses_a_malicious_pickle(tmp_path):
    marker = tmp_path / "PWNED"
    path = plant(tmp_path / "ckpt", marker)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path.parent)
    assert not marker.exists()
    assert str(path) in str(caught.value) and "open" in str(caught.value)
    assert "weights_only=False" not in str(caught.value)  # no advice to turn the protection off


def test_trainer_refuses_to_resume_from_a_planted_checkpoint(tmp_path, subprocess_env, python):
    config = tmp_path / "trial.yaml"
    settings = {
        "corpus": "synthetic",
        "width": 32,
        "d_head": 16,
        "depth": 1,
        "seq_len": 32,
        "batch_size": 4,
        "steps": 20,
        "warmup": 2,
        "eval_every": 10,
        "checkpoint_every": 5,
        "device": "cpu",
    }
    config.write_text(yaml.safe_dump(settings))
    out = tmp_path / "out"
    marker = tmp_path / "PWNED"
    trial_id = TrialConfig(**settings).trial_id()
    path = plant(out / CHECKPOINTS_DIR / trial_id, marker)  # where `python -m trainer.train` resumes from
    done = subprocess.run(
        [python, "-m", "trainer.train", "--config", str(config), "--out", str(out)],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert not marker.exists()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and str(path) in done.stderr and "refusing" in done.stderr
    assert not (out / "metrics").exists()  # it trained nothing on top of it


# ---- (d) nothing unpickles --------------------------------------------------------------------------


def unsafe_loads(source: str) -> list[str]:
    """Calls that can run code from a file's contents: pickle-family loads, torch.load without
    weights_only=True, numpy allow_pickle=True, yaml.load/unsafe_load/full_load, eval/exec."""
    picklers = ("pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            for name in filter(None, names):
                if name.split(".")[0] in picklers:
                    found.append(f"line {node.lineno}: import {name}")
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        kwargs = {k.arg: k.value for k in node.keywords}

        def const(key, kwargs=kwargs):
            return isinstance(kwargs.get(key), ast.Constant) and kwargs[key].value

        if func in ("eval", "exec") or func.endswith(("read_pickle", "unsafe_load", "full_load")):
            found.append(f"line {node.lineno}: {func}()")
        elif func.split(".")[0] in picklers and func.rsplit(".", 1)[-1] in ("load", "loads", "Unpickler", "open"):
            found.append(f"line {node.lineno}: {func}()")
        elif func.endswith("torch.load"):
            if const("weights_only") is not True:
                found.append(f"line {node.lineno}: {func}() without weights_only=True")
        elif func.endswith(("np.load", "numpy.load")) and const("allow_pickle") is True:
            found.append(f"line {node.lineno}: {func}(allow_pickle=True)")
        elif func.endswith("yaml.load") and "SafeLoader" not in ast.unparse(node):
            found.append(f"line {node.lineno}: {func}() without SafeLoader")
    return found


def test_the_scanner_finds_unsafe_loads():
    bad = (
        "import pickle\nimport torch, numpy as np, yaml\npickle.loads(b'')\ntorch.load('x')\n"
        "torch.load('x', weights_only=False)\nnp.load('x', allow_pickle=True)\nyaml.load(open('x'))\n"
        "yaml.unsafe_load('')\neval('1')\nfrom cloudpickle import loads\n"
    )
    assert len(unsafe_loads(bad)) == 9
    good = (
        "import torch, numpy as np, yaml\ntorch.load('x', map_location='cpu', weights_only=True)\n"
        "np.load('x')\nyaml.safe_load('a: 1')\nyaml.load('a', Loader=yaml.SafeLoader)\nmodel.eval()\n"
    )
    assert unsafe_loads(good) == []


def test_no_module_unpickles_or_evaluates_file_contents():
    offenders = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found = unsafe_loads(path.read_text())
            if found:
                offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}


# ---- (e) strings that become paths ------------------------------------------------------------------

SAFE_ID = re.compile(r"^[A-Za-z0-9_.+-]+$")


@pytest.mark.parametrize(
    "values",
    [
        dict(lr=5e-324),
        dict(lr=1e-300),
        dict(lr=10.0),
        dict(lr=0.123456789),
        dict(lr=3.0e-3),
        dict(seed=2**32 - 1),
        dict(width=2, d_head=2),
        dict(width=65536, d_head=65536),  # the largest accepted (issue 11)
        dict(optimizer="muon", qk_norm="rms_frozen"),
        dict(qk_norm="layer", corpus="synthetic"),
    ],
)
def test_trial_ids_are_safe_path_components(values, tmp_path):
    cfg = TrialConfig(**values)
    trial_id = cfg.trial_id()
    assert SAFE_ID.match(trial_id), trial_id
    assert not trial_id.startswith((".", "-")) and len(trial_id) < 200
    # The folders named after it stay where they belong.
    for parent in (tmp_path / "metrics", tmp_path / CHECKPOINTS_DIR):
        assert (parent / f"trial_id={trial_id}").resolve().parent == parent.resolve()


@pytest.mark.parametrize(
    "name", ["../../etc", "..", ".", "a/b", "a\\b", "", " ", "x\n", "/abs", "~root", "é", "a b", "name;rm -rf"]
)
def test_sweep_and_study_names_cannot_escape_the_results_folder(name):
    for model, extra in ((SweepSpec, {"grid": {}}), (LRStudySpec, {})):
        with pytest.raises(Exception) as caught:
            model.model_validate({"name": name, **extra})
        assert "name" in str(caught.value)


def test_valid_names_still_pass():
    assert SweepSpec.model_validate({"name": "paradox-v2_gpu", "grid": {}}).name == "paradox-v2_gpu"


def test_the_default_token_is_not_in_the_project():
    """Ray's token lives in ~/.ray/auth_token (or RAY_AUTH_TOKEN*), never in a file this project ships."""
    token_file = Path.home() / ".ray" / "auth_token"
    if not token_file.is_file():
        pytest.skip("no token on this machine")
    token = token_file.read_text().strip()
    assert len(token) >= 16
    files = [p for folder in (*PACKAGES, "tests", "docs", "sweeps") for p in (ROOT / folder).rglob("*")]
    files += list(ROOT.glob("*"))
    for path in files:
        if path.is_file() and path.suffix in (".py", ".yaml", ".yml", ".md", ".toml", ".json", ".txt"):
            assert token not in path.read_text(errors="ignore"), path
