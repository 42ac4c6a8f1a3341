"""Run the mops Flower apps with `flwr run`: on Flower's simulation engine, or deployed (SuperLink + SuperNodes).

Both engines run the same ServerApp / ClientApp (`mops.federated.server_app:app`, `...client_app:app`).
For each run we write a small Flower app folder (a `pyproject.toml` naming those components, with the run's
settings as its run config) and a private `FLWR_HOME` whose SuperLink connection points at a SuperLink we
start on a free local port. Simulation: one SuperLink with `--simulation` (Ray runs the clients).
Deployment: a SuperLink plus one `flower-supernode` process per client, each with its `partition-id`.
Every process started here is stopped when the run ends, fails or is interrupted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import torch

from mops.errors import ConfigError, MopsError
from mops.federated.config import FederatedRun
from mops.progress import progress_bar
from mops.settings import changed_settings

ENGINES = ("simulation", "deployment")


class FederatedRunError(MopsError):
    """A Flower process failed; the message points at its log."""


def _bin(name: str) -> str:
    """A Flower console script next to this Python (the venv's bin), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_app(folder: Path, cfg: FederatedRun) -> Path:
    """A Flower app folder whose components are mops' apps and whose run config is `cfg`."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        '[build-system]', 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', '',
        '[project]', f'name = "mops-{cfg.method.replace("_", "-")}"', 'version = "1.0.0"', 'description = "mops federated run"',
        'license = "MIT"', 'dependencies = []', '',
        '[tool.hatch.build.targets.wheel]', 'packages = ["."]', '',
        '[tool.flwr.app]', 'publisher = "mops"', '',
        '[tool.flwr.app.components]', 'serverapp = "mops.federated.server_app:app"',
        'clientapp = "mops.federated.client_app:app"', '',
        '[tool.flwr.app.config]',
        *(f'{key} = {_toml_value(value)}' for key, value in cfg.to_record().items()),
    ]
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return folder


def flower_env(home: Path) -> dict[str, str]:
    """Environment for Flower processes: private FLWR_HOME, no telemetry, no dependency installs."""
    return dict(os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0",
                FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", FLWR_DISABLE_UPDATE_CHECK="1",
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


@contextmanager
def process(cmd: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """Start `cmd` in its own process group (logging to `log`); on exit stop the group and wait."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            stop_group(proc)


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after `grace` seconds, and reap the leader."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while a run is on, so `kill` also stops every Flower process we started."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def processes_with_env(marker: str) -> list[int]:
    """PIDs of live processes whose environment contains `marker` (Linux /proc; empty elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if (marker.encode() in (entry / "environ").read_bytes()
                    and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"):
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return [pid for pid in found if pid != os.getpid()]


def stop_stragglers(marker: str, grace: float = 15.0) -> None:
    """Stop what outlived its process group: Ray starts its workers in sessions of their own."""
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    while pids := processes_with_env(marker):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        time.sleep(0.5)


def wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FederatedRunError(f"flower-superlink exited with code {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise FederatedRunError(f"flower-superlink did not come up on port {port} within {timeout:.0f}s; see {log}")


def superlink_cmd(port: int, simulation: bool) -> list[str]:
    cmd = [_bin("flower-superlink"), "--insecure", "--isolation", "subprocess", "--host", "127.0.0.1",
           "--port", str(port), "--database", ":flwr-in-memory:"]
    return cmd + (["--simulation"] if simulation else [])


def supernode_cmd(superlink_port: int, port: int, pid: int, num: int) -> list[str]:
    return [_bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{superlink_port}", "--port", str(port),
            "--node-config", f"partition-id={pid} num-partitions={num}"]


# settings a resumed run may change
RESUMABLE = ("output", "federation.rounds", "federation.round_timeout", "federation.inject_faults")


def check_resumable(folder: Path, cfg: FederatedRun) -> None:
    """Refuse to continue a run folder with other settings (except more rounds, timeout, fault tests)."""
    file = folder / "settings.json"
    if file.is_file():
        changed = changed_settings(json.loads(file.read_text()), json.loads(json.dumps(cfg.settings())), RESUMABLE)
        if changed:
            raise ConfigError(f"{folder} holds a run with other settings ({'; '.join(changed)}); use another "
                              "--output, or the same settings to resume")
    folder.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(cfg.settings(), indent=2))


def _follow_rounds(driver: subprocess.Popen, rounds_dir: Path, cfg: FederatedRun, timeout: float | None,
                   progress: bool) -> int:
    """Wait for `flwr run` to finish, showing finished rounds (and their test PPL) as they land on disk."""
    start = time.monotonic()
    with progress_bar(cfg.federation.rounds, f"{cfg.method} rounds", enabled=progress) as advance:
        shown = 0
        while True:
            done = sorted(rounds_dir.glob("round-*/round.json"), key=lambda p: int(p.parent.name.split("-")[1]))
            for file in done[shown:]:
                record = json.loads(file.read_text())
                advance(ppl=record["eval_ppl"], accepted=record["clients_accepted"])
            shown = len(done)
            if driver.poll() is not None:
                return driver.returncode
            if timeout is not None and time.monotonic() - start > timeout:
                raise FederatedRunError(f"the federated run took longer than {timeout:.0f}s; logs in {rounds_dir.parent.parent}/flower")
            time.sleep(1.0)


def client_gpu_share(client_gpus: float | None, clients_per_round: int, cuda: bool) -> float:
    """The GPU share of each simulated client: `client_gpus`, or by default 1 / clients_per_round where CUDA is
    visible (the round's clients share it), else 0. Ray hides the GPU from an actor given none, so without a
    share every client would silently train on the CPU."""
    if client_gpus is None:
        return 1.0 / clients_per_round if cuda else 0.0
    if client_gpus < 0:
        raise ConfigError(f"--client-gpus must be >= 0, got {client_gpus}")
    if client_gpus > 0 and not cuda:
        raise ConfigError(f"--client-gpus {client_gpus}: no CUDA GPU is visible to this torch")
    return client_gpus


def run_federated(cfg: FederatedRun, engine: str = "simulation", client_cpus: int = 1,
                  timeout: float | None = None, progress: bool = False, client_gpus: float | None = None) -> Path:
    """Run one federated training with `flwr run`; returns ``output/<method>`` (results.json, adapter, logs)."""
    if engine not in ENGINES:
        raise MopsError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    gpus = client_gpu_share(client_gpus, cfg.federation.clients_per_round, torch.cuda.is_available())
    run_dir = Path(cfg.output).resolve()
    cfg.output = str(run_dir)  # the ServerApp runs in another process and folder
    check_resumable(run_dir / cfg.method, cfg)
    flower = run_dir / "flower" / cfg.method
    home = flower / "home"
    app_dir = write_app(flower / "app", cfg)
    env = flower_env(home)
    results = run_dir / cfg.method / "results.json"
    results.unlink(missing_ok=True)  # only this run's ServerApp may write it
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "mops"\n\n[superlink.mops]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    with ExitStack() as stack:
        stack.callback(stop_stragglers, f"FLWR_HOME={home}")  # runs last
        stack.enter_context(_terminate_as_exit())
        link_log = flower / "superlink.log"
        link = stack.enter_context(process(superlink_cmd(port, engine == "simulation"), link_log, env))
        wait_healthy(port, link, link_log)
        if engine == "deployment":
            for pid in range(cfg.federation.num_clients):
                stack.enter_context(process(supernode_cmd(port, free_port(), pid, cfg.federation.num_clients),
                                            flower / f"supernode-{pid}.log", env))
        cmd = [_bin("flwr"), "run", str(app_dir), "mops", "--stream"]
        if engine == "simulation":
            cmd += ["--federation-config", f"num-supernodes={cfg.federation.num_clients} "
                    f"client-resources-num-cpus={client_cpus} client-resources-num-gpus={gpus}"]
        driver = stack.enter_context(process(cmd, flower / "flwr-run.log", env))
        code = _follow_rounds(driver, run_dir / cfg.method / "rounds", cfg, timeout, progress)
    if code != 0 or not results.is_file():
        tail = (flower / "flwr-run.log").read_text()[-2000:]
        raise FederatedRunError(f"the federated run failed (flwr run exit {code}); logs in {flower}:\n{tail}")
    return run_dir / cfg.method
