"""What the scale harness's two parts share: free loopback ports, and processes started by the
harness and stopped by their PID."""

import os
import socket
import subprocess
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A process started by the harness and stopped by its PID."""

    def __init__(self, work, name, cmd, env=None):
        self.name = name
        self.log = work / f"{name}.log"
        self.popen = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"),
                                      env={**os.environ, **(env or {})}, cwd=work)

    def cpu_seconds(self):
        stat = Path(f"/proc/{self.popen.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mib(self):
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
