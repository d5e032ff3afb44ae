"""What every local service shares: state folders, processes, waiting for a port."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pipeline.settings import Settings

__all__ = ["Service", "StackError", "apt_install", "port_answers", "wait_for"]


class StackError(RuntimeError):
    """A service of the local stack could not be installed or started."""


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(what: str, check: object, timeout: float, interval: float = 0.25) -> None:
    """Call ``check()`` until it returns true or ``timeout`` seconds pass."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # the service is still starting; remember why
            last_error = exc
        time.sleep(interval)
    raise StackError(f"{what} did not answer within {timeout:.0f} s (last error: {last_error})")


_apt_updated = False


def apt_install(*packages: str) -> None:
    """Install Debian packages (needs root); runs ``apt-get update`` once if needed."""
    global _apt_updated
    if os.geteuid() != 0:
        raise StackError(f"{', '.join(packages)} missing; install them: apt-get install {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if subprocess.run(cmd, env=env, capture_output=True).returncode == 0:
        return
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        _apt_updated = True
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"apt-get install {' '.join(packages)} failed: {result.stderr[-800:]}")


@dataclass
class Service:
    """One local server: knows how to install, start, check and stop itself."""

    settings: Settings
    name: ClassVar[str] = "service"

    @property
    def state_dir(self) -> Path:
        return self.settings.stack_dir / self.name

    @property
    def log_path(self) -> Path:
        return self.settings.stack_dir / "logs" / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    @property
    def address(self) -> str:
        raise NotImplementedError

    def answers(self) -> bool:
        raise NotImplementedError

    def install(self) -> None:
        """Make the binaries available (no-op when they are)."""

    def start(self) -> None:
        raise NotImplementedError

    def prepare(self) -> None:
        """Runs after the service answers: topics, migrations, onboarding."""

    def stop(self) -> None:
        self._stop_pid()

    # helpers -----------------------------------------------------------------

    def spawn(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> int:
        """Start a detached process that outlives this command; log to the service log."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=cwd, start_new_session=True,
            )
        self.pid_path.write_text(str(proc.pid))
        return proc.pid

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def _stop_pid(self, timeout: float = 30.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            # Reap it if it is our child (a test that started the service): a zombie still
            # answers kill(pid, 0), and would be waited for until the timeout.
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pid_path.unlink(missing_ok=True)

    def tail_log(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def which(binary: str, *extra_dirs: str) -> str | None:
    found = shutil.which(binary)
    if found:
        return found
    for folder in extra_dirs:
        candidate = Path(folder) / binary
        if candidate.exists():
            return str(candidate)
    return None
