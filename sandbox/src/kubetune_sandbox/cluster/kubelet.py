"""The sandbox's kubelet: runs every Pod as local processes and reports back through the API.

How a pod maps onto this machine:
- each pod gets its own loopback address (127.1.x.y) as `status.podIP`; servers that the pod binds to
  `0.0.0.0` are bound to that address instead (the literal argument is rewritten), so pods never fight
  over ports and the operator reaches trainer metrics at podIP:9400 as in a cluster;
- volumes (ConfigMap, Secret, emptyDir, generic ephemeral) become directories under
  `ROOT/pods/<ns>_<name>_<uid>/volumes/`; a PersistentVolumeClaim is `ROOT/claims/<ns>/<claim>/`, shared by
  every pod that mounts it and kept when they end, as a ReadWriteMany volume (the emulator serves no
  PersistentVolumeClaim objects, so any claim name is bound); a subPath is created on first mount;
  the processes see them through **path rewriting**: every mount path (and the termination-message path)
  is replaced by the pod's directory in the command, args and env values (`/etc/kubetune/x.json` ->
  `.../volumes/config/x.json`; also after `=`, `,`, `:` as in `--lora-modules a=/models/adapters/a`).
  `TMPDIR` points at the pod's `/tmp` volume (or a private temp directory). Programs that hard-code an
  absolute path of their image do not fit this model; kubetune's own read every path from config or env;
- images (images.py) are mapped the same way: the image's directories (the trainer's venv `/opt/kubetune`)
  are local ones, its PATH comes first on the container's PATH, its ENV under the pod's; the container's
  `command` and `args` run as written (only those paths translated), the image's entrypoint without one;
- `NAME.NAMESPACE.svc[.cluster.local]` in args/env become the Service's loopback clusterIP (cluster DNS);
- each container's stdout+stderr go to `.../logs/<container>.log`, which the emulator serves as the pod
  log API (`pods/log`, registered with `EmulatorServer.set_pod_log_source(kubelet.log_file)`), so
  `kubectl logs` and `kubetune logs` read them as on a cluster;
- init containers run in order, then the containers together; restartPolicy Never/OnFailure/Always;
  exit codes, reasons and termination messages (FallbackToLogsOnError honoured) go to
  `status.containerStatuses`; readiness comes from the readinessProbe (httpGet, tcpSocket, exec);
- a deleted pod's process groups get SIGTERM, then SIGKILL after the grace period.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.timestamps import utc_now
from kubetune_sandbox.cluster import decisions
from kubetune_sandbox.cluster.api import CONFIGMAPS, PODS, SECRETS, SERVICES, Cluster, is_not_found, log
from kubetune_sandbox.cluster.images import ImageMap, ImageNotMappedError

Obj = dict[str, Any]
POD_IP_PREFIX = 1  # pods in 127.1.0.0/16; Services in 127.2.0.0/16 (services.py)
HOST_ENV = ("PATH", "LANG", "LC_ALL", "TZ")  # all a container inherits from the host
TERMINATION_MESSAGE_LIMIT = 4096
FALLBACK_LOG_LINES = 80


def now() -> str:
    return utc_now()


class _MissingVolumeError(Exception):
    pass


@dataclass
class _Container:
    spec: Obj
    init: bool
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    ready: bool = False

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self, image_id: str = "") -> Obj:
        status = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": image_id,
            "ready": self.ready,
            "restartCount": self.restarts,
            "started": "running" in self.state,
            "state": self.state,
        }
        if self.last_state:
            status["lastState"] = self.last_state
        return status


class PodWorker:
    """Runs one pod to completion (or until deleted) in its own thread."""

    def __init__(self, kubelet: Kubelet, pod: Obj, ip: str) -> None:
        self.kubelet = kubelet
        self.pod = pod
        meta = pod["metadata"]
        self.namespace, self.name, self.uid = meta.get("namespace", "default"), meta["name"], meta["uid"]
        self.ip = ip
        self.root = pod_directory(kubelet.root, pod)
        spec = pod.get("spec") or {}
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.grace = float(spec.get("terminationGracePeriodSeconds", kubelet.default_grace_seconds))
        self.init = [_Container(c, True) for c in spec.get("initContainers") or []]
        self.main = [_Container(c, False) for c in spec.get("containers") or []]
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.phase = "Pending"
        self.started_at = now()
        self.conditions: dict[str, str] = {}
        self.mounts: dict[str, dict[str, str]] = {}  # container -> mount path -> local path
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)

    # -- status

    def _status(self) -> Obj:
        conditions = []
        stamp = now()
        for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready"):
            conditions.append(
                {"type": kind, "status": self.conditions.get(kind, "False"), "lastTransitionTime": stamp}
            )
        status: Obj = {
            "phase": self.phase,
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "hostIP": "127.0.0.1",
            "startTime": self.started_at,
            "conditions": conditions,
            "containerStatuses": [c.status() for c in self.main],
            "qosClass": "BestEffort",
        }
        if self.init:
            status["initContainerStatuses"] = [c.status() for c in self.init]
        return status

    def report(self) -> None:
        with self.lock:
            status = self._status()
        if self.stopping.is_set():
            return
        try:
            self.kubelet.cluster.patch(
                PODS, self.namespace, self.name, {"status": status}, subresource="status"
            )
        except Exception as error:
            if is_not_found(error):
                self.stopping.set()
            else:
                log.warning("pod %s/%s: status not written: %s", self.namespace, self.name, error)

    # -- setting up

    def _volume_dirs(self) -> dict[str, Path]:
        """Materialise every volume; raises _MissingVolumeError while a ConfigMap/Secret does not exist yet."""
        dirs: dict[str, Path] = {}
        for volume in (self.pod.get("spec") or {}).get("volumes") or []:
            path = self.root / "volumes" / volume["name"]
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim:
                path = self.kubelet.claim_directory(self.namespace, str(claim))
            path.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume or "secret" in volume:
                source = volume.get("configMap") or volume.get("secret") or {}
                is_secret = "secret" in volume
                name = source.get("secretName") if is_secret else source.get("name")
                obj = self.kubelet.cluster.get(
                    SECRETS if is_secret else CONFIGMAPS, self.namespace, str(name)
                )
                if obj is None:
                    if source.get("optional"):
                        dirs[volume["name"]] = path
                        continue
                    kind = "secret" if is_secret else "configmap"
                    raise _MissingVolumeError(f'{kind} "{name}" not found')
                data = _decoded(obj, is_secret)
                items = source.get("items")
                pairs = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
                for key, relative in pairs:
                    if key in data:
                        target = path / relative
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(data[key])
            elif not any(
                kind in volume for kind in ("emptyDir", "ephemeral", "persistentVolumeClaim", "hostPath")
            ):
                log.warning(
                    "pod %s: volume %s of an unsupported type is an empty directory", self.name, volume
                )
            dirs[volume["name"]] = path
        return dirs

    def _mount_map(self, container: Obj, volumes: dict[str, Path]) -> dict[str, str]:
        # The image's own directories first: a volume mounted over one of them wins, as in a container.
        mounts: dict[str, str] = dict(self.kubelet.images.image(str(container.get("image", ""))).paths)
        for mount in container.get("volumeMounts") or []:
            local = volumes.get(mount["name"])
            if local is None:
                continue
            if mount.get("subPath"):
                local = local / mount["subPath"]
                local.mkdir(parents=True, exist_ok=True)  # as the kubelet creates a missing subPath
            mounts[mount["mountPath"]] = str(local)
        termination = container.get("terminationMessagePath", "/dev/termination-log")
        mounts[termination] = str(self.root / "termination" / container["name"])
        return mounts

    def _environment(self, container: Obj, mounts: dict[str, str]) -> dict[str, str]:
        image = self.kubelet.images.image(str(container.get("image", "")))
        env: dict[str, str] = {}
        cluster = self.kubelet.cluster
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            ref = source.get("configMapRef") or source.get("secretRef")
            is_secret = "secretRef" in source
            obj = cluster.get(
                SECRETS if is_secret else CONFIGMAPS, self.namespace, str((ref or {}).get("name"))
            )
            if obj is None:
                if (ref or {}).get("optional"):
                    continue
                raise _MissingVolumeError(
                    f'{"secret" if is_secret else "configmap"} "{(ref or {}).get("name")}" not found'
                )
            for key, value in _decoded(obj, is_secret).items():
                env[prefix + key] = value.decode(errors="replace")
        declared: dict[str, str] = {}
        for entry in container.get("env") or []:
            name = entry["name"]
            if "value" in entry:
                declared[name] = decisions.expand(str(entry["value"]), {**env, **declared})
            elif "valueFrom" in entry:
                declared[name] = self._value_from(entry["valueFrom"])
        env.update(declared)
        cluster_ips = self.kubelet.cluster_ips()
        # Only what the pod declares is rewritten; the host's PATH and friends are this machine's already.
        env = {
            key: decisions.rewrite_service_hosts(decisions.rewrite_paths(value, mounts), cluster_ips)
            for key, value in env.items()
        }
        host = {name: os.environ[name] for name in HOST_ENV if name in os.environ}
        if image.path:
            # The image's PATH before the host's, its own directories where the image map puts them.
            image_path = [decisions.rewrite_paths(entry, image.paths) for entry in image.path]
            host["PATH"] = os.pathsep.join([*image_path, *filter(None, [host.get("PATH")])])
        if "/tmp" in mounts:
            host["TMPDIR"] = mounts["/tmp"]
        else:
            private = self.root / "tmp"
            private.mkdir(parents=True, exist_ok=True)
            host["TMPDIR"] = str(private)
        # The trainer binds its metrics server to this address when it can (see docs/sandbox.md).
        host["KUBETUNE_METRICS_HOST"] = self.ip
        # The image's ENV (local paths already) under everything the pod declares.
        return {**host, **image.env, **env}

    def _value_from(self, value_from: Obj) -> str:
        if "fieldRef" in value_from:
            pod = copy.deepcopy(self.pod)
            pod.setdefault("status", {})["podIP"] = self.ip
            pod["status"]["hostIP"] = "127.0.0.1"
            return decisions.field_ref(pod, value_from["fieldRef"]["fieldPath"])
        for key, resource, is_secret in (
            ("secretKeyRef", SECRETS, True),
            ("configMapKeyRef", CONFIGMAPS, False),
        ):
            if key in value_from:
                ref = value_from[key]
                obj = self.kubelet.cluster.get(resource, self.namespace, ref["name"])
                data = _decoded(obj, is_secret) if obj else {}
                if ref["key"] not in data:
                    if ref.get("optional"):
                        return ""
                    raise _MissingVolumeError(f"{key} {ref['name']}/{ref['key']} not found")
                return data[ref["key"]].decode(errors="replace")
        return ""  # resourceFieldRef: nothing meaningful on this machine

    def _argv(self, container: Obj, env: Mapping[str, str], mounts: dict[str, str]) -> list[str]:
        cluster_ips = self.kubelet.cluster_ips()

        def rewrite(part: str) -> str:
            part = decisions.expand(part, env)
            part = self.ip if part == "0.0.0.0" else part  # bind to the pod's own address
            return decisions.rewrite_service_hosts(decisions.rewrite_paths(part, mounts), cluster_ips)

        # As written: only paths into volumes or the image are translated; no program is substituted.
        command = [rewrite(part) for part in container.get("command") or []]
        args = [rewrite(part) for part in container.get("args") or []]
        return self.kubelet.images.argv(str(container.get("image", "")), command, args)

    # -- running

    def _start(self, container: _Container, volumes: dict[str, Path]) -> None:
        spec = container.spec
        mounts = self._mount_map(spec, volumes)
        self.mounts[container.name] = mounts
        termination = Path(mounts[spec.get("terminationMessagePath", "/dev/termination-log")])
        termination.parent.mkdir(parents=True, exist_ok=True)
        termination.write_text("")
        env = self._environment(spec, mounts)
        argv = self._argv(spec, env, mounts)
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        working_dir = spec.get("workingDir")
        cwd = decisions.rewrite_paths(working_dir, mounts) if working_dir else str(self.root)
        Path(cwd).mkdir(parents=True, exist_ok=True)
        with (logs / f"{container.name}.log").open("ab") as handle:
            # A new session: the container is its own process group, so deletion reaches its children.
            container.process = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - only a prctl call, no imports or locks
            )
        with self.lock:
            container.state = {"running": {"startedAt": now()}}
        log.debug("pod %s/%s container %s: %s", self.namespace, self.name, container.name, argv)

    def _finish(self, container: _Container, code: int) -> Obj:
        spec = container.spec
        mounts = self.mounts.get(container.name, {})
        path = Path(mounts.get(spec.get("terminationMessagePath", "/dev/termination-log"), "/nonexistent"))
        message = ""
        with contextlib.suppress(OSError):
            message = path.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
        if not message and code != 0 and spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = _tail(self.root / "logs" / f"{container.name}.log", FALLBACK_LOG_LINES)
        exit_code = code if code >= 0 else 128 - code  # killed by signal N: 128+N as a runtime reports it
        terminated: Obj = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": (container.state.get("running") or {}).get("startedAt", now()),
            "finishedAt": now(),
        }
        if message:
            terminated["message"] = message
        with self.lock:
            container.state = {"terminated": terminated}
            container.ready = False
        return terminated

    def _run(self) -> None:
        try:
            self._run_pod()
        except Exception:
            log.exception("pod %s/%s: the sandbox kubelet failed", self.namespace, self.name)
            with self.lock:
                self.phase = "Failed"
            self.report()
        finally:
            self._kill_all()

    def _run_pod(self) -> None:
        self.conditions["PodScheduled"] = "True"
        self.report()
        volumes: dict[str, Path] = {}
        while not self.stopping.is_set():
            try:
                volumes = self._volume_dirs()
                break
            except _MissingVolumeError as error:
                with self.lock:
                    for c in [*self.init, *self.main]:
                        c.state = {
                            "waiting": {"reason": "ContainerCreating", "message": f"MountVolume: {error}"}
                        }
                self.report()
                self.stopping.wait(1.0)
        for container in self.init:
            while not self.stopping.is_set():
                code = self._run_to_exit(container, volumes)
                if code is None:
                    return
                if code == 0:
                    break
                if self.restart_policy == "Never":
                    self._set_phase("Failed")
                    return
                self._backoff(container)
        if self.stopping.is_set():
            return
        self.conditions["Initialized"] = "True"
        for container in self.main:
            if not self._try_start(container, volumes):
                return
        self._set_phase("Running")
        self._watch_main(volumes)

    def _try_start(self, container: _Container, volumes: dict[str, Path]) -> bool:
        try:
            self._start(container, volumes)
            return True
        except ImageNotMappedError as error:
            with self.lock:
                container.state = {"waiting": {"reason": "ErrImagePull", "message": str(error)}}
            self.report()
        except (_MissingVolumeError, OSError) as error:
            with self.lock:
                container.state = {"waiting": {"reason": "CreateContainerError", "message": str(error)}}
            self.report()
        return False

    def _run_to_exit(self, container: _Container, volumes: dict[str, Path]) -> int | None:
        if not self._try_start(container, volumes):
            self.stopping.wait(5.0)
            return None if self.stopping.is_set() else 1
        self.report()
        assert container.process is not None
        while container.process.poll() is None:
            if self.stopping.wait(0.2):
                return None
        code = container.process.returncode
        self._finish(container, code)
        self.report()
        return int(container.state["terminated"]["exitCode"])

    def _backoff(self, container: _Container) -> None:
        with self.lock:
            container.last_state = container.state
            container.restarts += 1
            container.state = {"waiting": {"reason": "CrashLoopBackOff"}}
        self.report()
        self.stopping.wait(min(2.0**container.restarts, 30.0))

    def _set_phase(self, phase: str) -> None:
        with self.lock:
            self.phase = phase
            if phase in decisions.TERMINAL_PHASES:
                self.conditions["Ready"] = self.conditions["ContainersReady"] = "False"
        self.report()

    def _watch_main(self, volumes: dict[str, Path]) -> None:
        next_probe: dict[str, float] = {}
        while not self.stopping.is_set():
            changed = False
            for container in self.main:
                process = container.process
                if process is not None and process.poll() is not None and "running" in container.state:
                    terminated = self._finish(container, process.returncode)
                    changed = True
                    failed = terminated["exitCode"] != 0
                    if self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and failed):
                        self._backoff(container)
                        if self.stopping.is_set() or not self._try_start(container, volumes):
                            return
                if "running" in container.state and time.monotonic() >= next_probe.get(container.name, 0):
                    ready, period = self._probe(container)
                    next_probe[container.name] = time.monotonic() + period
                    if ready != container.ready:
                        with self.lock:
                            container.ready = ready
                        changed = True
            if all("terminated" in c.state for c in self.main):
                codes = [c.state["terminated"]["exitCode"] for c in self.main]
                self._set_phase("Succeeded" if all(code == 0 for code in codes) else "Failed")
                return
            all_ready = all(c.ready for c in self.main)
            if self.conditions.get("Ready") != ("True" if all_ready else "False"):
                self.conditions["Ready"] = self.conditions["ContainersReady"] = (
                    "True" if all_ready else "False"
                )
                changed = True
            if changed:
                self.report()
            self.stopping.wait(0.2)

    def _probe(self, container: _Container) -> tuple[bool, float]:
        """(ready?, seconds until the next probe). Without a probe a running container is ready."""
        probe = container.spec.get("readinessProbe")
        if not probe:
            return True, 1.0
        period = min(float(probe.get("periodSeconds", 10)), 1.0)  # faster than a cluster: nobody waits
        timeout = float(probe.get("timeoutSeconds", 1))
        if "httpGet" in probe:
            action = probe["httpGet"]
            port = decisions.resolve_port(action.get("port", 80), [container.spec])
            url = f"http://{self.ip}:{port}{action.get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    return 200 <= response.status < 400, period
            except (urllib.error.URLError, OSError, ValueError):
                return False, period
        if "tcpSocket" in probe:
            port = decisions.resolve_port(probe["tcpSocket"].get("port", 80), [container.spec])
            try:
                with socket.create_connection((self.ip, int(port or 0)), timeout=timeout):
                    return True, period
            except OSError:
                return False, period
        if "exec" in probe:
            mounts = self.mounts.get(container.name, {})
            argv = [decisions.rewrite_paths(p, mounts) for p in probe["exec"].get("command") or []]
            try:
                return subprocess.run(
                    argv, timeout=timeout, capture_output=True, check=False
                ).returncode == 0, period
            except (OSError, subprocess.TimeoutExpired):
                return False, period
        return True, period

    # -- stopping

    def stop(self) -> None:
        """The pod was deleted: stop its processes (SIGTERM, then SIGKILL after the grace period)."""
        self.stopping.set()
        self._kill_all()

    def _kill_all(self) -> None:
        processes = [c.process for c in [*self.init, *self.main] if c.process and c.process.poll() is None]
        for process in processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for process in processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        # Children that outlived their parent but kept its process group.
        for process in processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    def cleanup(self) -> None:
        """Drop the pod's volumes (models, caches); its logs stay for `kubetune logs`."""
        shutil.rmtree(self.root / "volumes", ignore_errors=True)
        shutil.rmtree(self.root / "tmp", ignore_errors=True)


def pod_directory(root: Path, pod: Mapping[str, Any]) -> Path:
    """Where a pod's volumes and logs live on this machine: ROOT/pods/<ns>_<name>_<uid[:8]>."""
    meta = pod["metadata"]
    return root / "pods" / f"{meta.get('namespace', 'default')}_{meta['name']}_{meta['uid'][:8]}"


def _libc() -> Any:
    with contextlib.suppress(OSError):
        return ctypes.CDLL("libc.so.6", use_errno=True)
    return None


_LIBC = _libc()  # loaded up front: the child between fork and exec must not import or allocate much


def die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the sandbox dies without cleaning up (Linux only)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _decoded(obj: Mapping[str, Any], is_secret: bool) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    for key, value in (obj.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value)
    for key, value in (obj.get("data") or {}).items():
        data[key] = base64.b64decode(value) if is_secret else str(value).encode()
    for key, value in (obj.get("stringData") or {}).items():
        data[key] = str(value).encode()
    return data


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_bytes()[-16384:].decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])[-TERMINATION_MESSAGE_LIMIT:]


class Kubelet:
    """Watches every pod (by polling the emulator) and keeps one PodWorker per live pod."""

    def __init__(
        self,
        cluster: Cluster,
        root: Path,
        images: ImageMap | None = None,
        *,
        poll_seconds: float = 0.25,
        default_grace_seconds: float = 30.0,
    ) -> None:
        self.cluster = cluster
        self.root = Path(root)
        self.images = images or ImageMap()
        self.poll_seconds = poll_seconds
        self.default_grace_seconds = default_grace_seconds
        self.workers: dict[str, PodWorker] = {}
        self._next_ip = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sandbox-kubelet", daemon=True)
        self._cluster_ips: dict[tuple[str, str], str] = {}
        self._cluster_ips_at = 0.0

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        stoppers = [threading.Thread(target=w.stop, daemon=True) for w in self.workers.values()]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join(timeout=self.default_grace_seconds + 15)

    def cluster_ips(self) -> dict[tuple[str, str], str]:
        """(namespace, name) -> clusterIP of every Service, refreshed at most every half second."""
        if time.monotonic() - self._cluster_ips_at > 0.5:
            ips = {}
            for service in self.cluster.list(SERVICES):
                ip = (service.get("spec") or {}).get("clusterIP")
                if ip and ip != "None":
                    ips[(service["metadata"].get("namespace", "default"), service["metadata"]["name"])] = ip
            self._cluster_ips, self._cluster_ips_at = ips, time.monotonic()
        return self._cluster_ips

    def _allocate_ip(self) -> str:
        used = {w.ip for w in self.workers.values()}
        while True:
            self._next_ip += 1
            ip = decisions.loopback_address(POD_IP_PREFIX, self._next_ip)
            if ip not in used:
                return ip

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception:
                log.exception("sandbox kubelet: sync failed")
            self._stop.wait(self.poll_seconds)

    def sync(self) -> None:
        pods = {p["metadata"]["uid"]: p for p in self.cluster.list(PODS)}
        for uid, pod in pods.items():
            if uid in self.workers or pod["metadata"].get("deletionTimestamp"):
                continue
            if decisions.pod_phase(pod) in decisions.TERMINAL_PHASES:
                continue  # finished before this kubelet started: nothing to run
            worker = PodWorker(self, pod, self._allocate_ip())
            self.workers[uid] = worker
            worker.thread.start()
        for uid, worker in list(self.workers.items()):
            current = pods.get(uid)
            if current is None or current["metadata"].get("deletionTimestamp"):
                del self.workers[uid]
                threading.Thread(target=self._terminate, args=(worker,), daemon=True).start()

    def claim_directory(self, namespace: str, claim: str) -> Path:
        """Where a PersistentVolumeClaim's files live: one folder per claim, outliving the pods."""
        return self.root / "claims" / namespace / claim

    def log_file(self, pod: Mapping[str, Any], container: str) -> Path | None:
        """The file holding a container's stdout and stderr so far (restarts append), None before it first
        started: the emulator's `pods/log` source. Logs outlive the pod's volumes, as on a node."""
        path = pod_directory(self.root, pod) / "logs" / f"{container}.log"
        return path if path.is_file() else None

    @staticmethod
    def _terminate(worker: PodWorker) -> None:
        worker.stop()
        worker.thread.join(timeout=5)
        worker.cleanup()


def sandbox_tempdir(prefix: str = "kubetune-sandbox-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
