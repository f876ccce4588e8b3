"""The two images, built here without a Docker engine and checked from the inside.

scripts/build-images.sh builds them with podman from the binary already built (the newer of
target/release and target/debug, so the test takes seconds, not a release build). Podman cannot
run containers in this sandbox, so each image becomes a container that is created, never
started, and whose filesystem is mounted (`podman create` + `podman mount`). Its programs then
run with chroot, in private mount and network namespaces with /dev and /proc, as a container
runtime would run them: the meter as its image user, the init container's iptables as root in a
fresh network namespace, where its rules are installed for real and read back.

Needs root, podman and buildah (scripts/test.sh installs them): without them it fails, it never
skips. Run through scripts/test.sh, or alone:
    PATH="$PWD/target/venv/bin:$PATH" target/venv/bin/pytest -q deploy/tests/test_images.py
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/helm/proxy-telemetry"
VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
# The Helm chart's (and the injector's) image names, published by .github/workflows/release.yml.
PUBLISHED = "ghcr.io/proxy-telemetry"
IMAGES = {"meter": "proxy-telemetry", "init": "proxy-telemetry-init"}
ENTRYPOINT = ["/usr/local/bin/proxy-telemetry"]
# What a container image must not give an attacker who gets code execution in it.
SHELLS_AND_PACKAGE_MANAGERS = {"sh", "bash", "dash", "ash", "zsh", "busybox", "toybox",
                               "apt", "apt-get", "aptitude", "dpkg", "dpkg-query", "rpm", "apk", "dnf", "yum"}
VENDOR_PASSWORDS = {f"VENDOR_{v}_PASSWORD": "test" for v in "ABC"}  # examples/meter.yaml reads these


def tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: scripts/test.sh installs it (apt-get install podman buildah)", pytrace=False)
    return path


@pytest.fixture(scope="module")
def images():
    """Both images, built by scripts/build-images.sh from the binary already built."""
    if os.geteuid() != 0:
        pytest.fail("the image tests need root (podman's storage, chroot, network namespaces)", pytrace=False)
    for name in ("podman", "buildah", "unshare", "chroot", "mount"):
        tool(name)
    built = [p for p in (ROOT / "target/release/proxy-telemetry", ROOT / "target/debug/proxy-telemetry") if p.exists()]
    if not built:
        pytest.fail("no binary: cargo build -p proxy-telemetry first (scripts/test.sh does)", pytrace=False)
    binary = max(built, key=lambda p: p.stat().st_mtime)
    result = subprocess.run([ROOT / "scripts/build-images.sh", "--binary", binary],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    names = {stage: f"localhost/{image}:{VERSION}" for stage, image in IMAGES.items()}
    for name in names.values():
        assert name in result.stdout, result.stdout
    return names


def inspect(image):
    out = subprocess.run(["podman", "image", "inspect", image], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["Config"]


@pytest.fixture(scope="module")
def config(images):
    return {stage: inspect(image) for stage, image in images.items()}


@pytest.fixture(scope="module")
def rootfs(images):
    """Each image's filesystem as a created (never started) container's, writable like one."""
    roots, containers = {}, []
    try:
        for stage, image in images.items():
            container = subprocess.run(["podman", "create", image], capture_output=True, text=True,
                                       check=True).stdout.strip()
            containers.append(container)
            root = Path(subprocess.run(["podman", "mount", container], capture_output=True, text=True,
                                       check=True).stdout.strip())
            # Mount points a runtime would create.
            for mountpoint in ("dev", "proc"):
                (root / mountpoint).mkdir(exist_ok=True)
            roots[stage] = root
        yield roots
    finally:
        for container in containers:
            subprocess.run(["podman", "umount", container], capture_output=True)
            subprocess.run(["podman", "rm", "--force", container], capture_output=True)


def run(root, *commands, user="0:0", env=None, stdin=None):
    """Runs each command (argv) in `root` as `user` with only `env` (the image's PATH by
    default), like a container process: private mount and network namespaces, /dev and /proc
    mounted. Commands share the namespaces and run in order until one fails."""
    mount, chroot = tool("mount"), tool("chroot")
    q = shlex.quote
    lines = ["set -e", f"{mount} --rbind /dev {q(str(root / 'dev'))}", f"{mount} -t proc proc {q(str(root / 'proc'))}"]
    for argv in commands:
        lines.append(f"{chroot} --userspec={user} {q(str(root))} {' '.join(q(a) for a in argv)}")
    return subprocess.run([tool("unshare"), "--mount", "--net", "--", "/bin/sh", "-c", "\n".join(lines)],
                          env=env if env is not None else {"PATH": "/usr/local/bin:/usr/sbin"},
                          input=stdin, capture_output=True, text=True, timeout=60)


def image_env(config, **extra):
    env = dict(e.split("=", 1) for e in config.get("Env") or [])
    return {**env, **extra}


def files(root):
    """Every file and file symlink in `root`, relative, directories excepted."""
    for directory, _, names in os.walk(root):
        for name in names:
            yield Path(directory, name).relative_to(root)


def is_elf(path):
    if path.is_symlink() or not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def test_images_are_tagged_with_the_names_and_version_the_chart_pulls(images):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["appVersion"] == VERSION
    assert values["image"]["repository"] == f"{PUBLISHED}/{IMAGES['meter']}"
    assert values["injector"]["initImage"]["repository"] == f"{PUBLISHED}/{IMAGES['init']}"
    injector = yaml.safe_load((ROOT / "examples/injector.yaml").read_text())
    assert injector["image"] == f"{PUBLISHED}/{IMAGES['meter']}:{VERSION}"
    assert injector["init_image"] == f"{PUBLISHED}/{IMAGES['init']}:{VERSION}"


@pytest.mark.parametrize("stage", ["meter", "init"])
def test_image_configuration(config, stage):
    c = config[stage]
    assert c["Entrypoint"] == ENTRYPOINT
    if stage == "meter":
        assert c["User"] == "65532:65532"
        assert c["Cmd"] == ["meter", "--config", "/etc/proxy-telemetry/meter.yaml"]
        assert set(c.get("ExposedPorts") or {}) == {"3128/tcp", "9464/tcp"}
    else:
        # The init container installs iptables rules: root, with NET_ADMIN/NET_RAW from the pod.
        assert c["User"] in ("0:0", "0", "root")
        assert c["Cmd"] == ["init-iptables", "--help"]
        assert not c.get("ExposedPorts")
    labels = c["Labels"]
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.revision"] == revision
    assert labels["org.opencontainers.image.source"] == "https://github.com/proxy-telemetry/proxy-telemetry"
    assert labels["org.opencontainers.image.title"] == IMAGES[stage]


@pytest.mark.parametrize("stage", ["meter", "init"])
def test_no_shell_and_no_package_manager(rootfs, stage):
    root = rootfs[stage]
    found = [str(p) for p in files(root) if p.name in SHELLS_AND_PACKAGE_MANAGERS]
    assert not found, found
    assert not (root / "bin/sh").exists() and not (root / "usr/bin").exists()


def test_the_meter_image_holds_the_binary_exactly_its_libraries_and_ca_certificates(rootfs):
    root = rootfs["meter"]
    binary = root / "usr/local/bin/proxy-telemetry"
    # The libraries the binary links, as this machine's loader resolves them (the files the
    # image was assembled from).
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    needed = {Path(os.path.realpath(p)).name for p in re.findall(r"(?:=> |^\s*)(/\S+)", ldd, re.M)}
    elf = {p.name for p in files(root) if is_elf(root / p)}
    assert elf == {"proxy-telemetry", *needed}
    assert b"BEGIN CERTIFICATE" in (root / "etc/ssl/certs/ca-certificates.crt").read_bytes()
    assert "nonroot:x:65532:65532:" in (root / "etc/passwd").read_text()
    assert "nonroot:x:65532:" in (root / "etc/group").read_text()
    assert "hosts: files dns" in (root / "etc/nsswitch.conf").read_text()
    # Scanners and SBOM generators find the Debian packages the libraries came from.
    assert {"libc6", "ca-certificates"} <= {p.name for p in (root / "var/lib/dpkg/status.d").iterdir()}


@pytest.mark.parametrize("stage", ["meter", "init"])
def test_the_binary_runs_as_the_image_user(rootfs, config, stage):
    result = run(rootfs[stage], ENTRYPOINT + ["--version"], user=config[stage]["User"], env=image_env(config[stage]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"proxy-telemetry {VERSION}"


def test_the_meter_checks_the_configuration_where_the_chart_mounts_it(rootfs, config):
    root, c = rootfs["meter"], config["meter"]
    (root / "etc/proxy-telemetry").mkdir(exist_ok=True)
    mounted = root / "etc/proxy-telemetry/meter.yaml"
    shutil.copy(ROOT / "examples/meter.yaml", mounted)
    env = image_env(c, **VENDOR_PASSWORDS)
    result = run(root, c["Entrypoint"] + c["Cmd"] + ["--check-config"], user=c["User"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    # It did read the file: a broken one is refused with the usage exit code.
    mounted.write_text("vendors: 3\n")
    result = run(root, c["Entrypoint"] + c["Cmd"] + ["--check-config"], user=c["User"], env=env)
    assert result.returncode == 64, result.stdout + result.stderr


@pytest.mark.parametrize("program", ["iptables-restore", "ip6tables-restore", "iptables-legacy-restore",
                                     "ip6tables-legacy-restore", "iptables", "ip6tables", "iptables-save"])
def test_iptables_runs_in_the_init_image(rootfs, config, program):
    # By name, through the image's PATH, as init-iptables runs it.
    result = run(rootfs["init"], [program, "--version"], env=image_env(config["init"]))
    assert result.returncode == 0, result.stderr
    backend = "legacy" if "legacy" in program else "nf_tables"
    assert re.fullmatch(rf"\S+ v\d+\.\d+\.\d+ \({backend}\)", result.stdout.strip()), result.stdout


def test_init_iptables_dry_run_names_a_program_the_image_has(rootfs, config):
    root, c = rootfs["init"], config["init"]
    result = run(root, c["Entrypoint"] + ["init-iptables", "--dry-run", "--redirect-to", "15001",
                                          "--port", "8000", "--exclude-uid", "65532"], env=image_env(c))
    assert result.returncode == 0, result.stderr
    assert "-A PROXY_TELEMETRY_OUTPUT -p tcp --dport 8000 -j REDIRECT --to-ports 15001" in result.stdout
    programs = re.findall(r"^# V[46]: (\S+) --noflush$", result.stdout, re.M)
    assert programs == ["iptables-restore", "ip6tables-restore"], result.stdout
    path = image_env(c)["PATH"].split(":")
    for program in programs:
        assert any((root / d.lstrip("/") / program).exists() for d in path), f"{program} is not on the image's PATH {path}"


@pytest.fixture(scope="module")
def injected_pod(rootfs, config):
    """A pod as the injector patches it, computed by `proxy-telemetry inject` in the meter image."""
    root = rootfs["meter"]
    (root / "etc/proxy-telemetry").mkdir(exist_ok=True)
    shutil.copy(ROOT / "examples/injector.yaml", root / "etc/proxy-telemetry/injector.yaml")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crawler", "namespace": "crawl"},
           "spec": {"containers": [{"name": "crawler", "image": "registry.example/crawler:1.0"}]}}
    c = config["meter"]
    result = run(root, c["Entrypoint"] + ["inject", "--config", "/etc/proxy-telemetry/injector.yaml"],
                 user=c["User"], env=image_env(c), stdin=json.dumps(pod))
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def container_env(container, config):
    # Downward API values are the kubelet's to fill in; any value does here.
    return image_env(config, **{e["name"]: e.get("value", "from-the-downward-api") for e in container.get("env", [])})


def test_the_injected_meter_runs_in_the_meter_image_as_the_injector_asks(injected_pod, rootfs, config):
    meter = next(c for c in injected_pod["spec"]["initContainers"] if c["name"] == "proxy-telemetry-meter")
    assert meter["image"] == f"{PUBLISHED}/{IMAGES['meter']}:{VERSION}"
    security = meter["securityContext"]
    user = f"{security['runAsUser']}:{security['runAsGroup']}"
    c = config["meter"]
    result = run(rootfs["meter"], c["Entrypoint"] + meter["args"] + ["--check-config"], user=user,
                 env=container_env(meter, c))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("backend", ["iptables", "iptables-legacy"])
def test_the_injected_init_container_installs_its_rules_from_the_init_image(injected_pod, rootfs, config, backend):
    init = next(c for c in injected_pod["spec"]["initContainers"] if c["name"] == "proxy-telemetry-init")
    assert init["image"] == f"{PUBLISHED}/{IMAGES['init']}:{VERSION}"
    assert init["securityContext"]["runAsUser"] == 0
    c = config["init"]
    command = (init.get("command") or c["Entrypoint"]) + init["args"]
    # --iptables comes from this variable on nodes that still use the legacy backend.
    env = container_env(init, c) | {"PROXY_TELEMETRY_IPTABLES": backend}
    uid = str(init["args"][init["args"].index("--exclude-uid") + 1])
    # In a fresh network namespace: the rules are installed for real, then read back.
    result = run(rootfs["init"], command, [f"{backend}-save", "-t", "nat"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = result.stdout
    assert "-A OUTPUT -p tcp -j PROXY_TELEMETRY_OUTPUT" in rules, rules
    assert f"-A PROXY_TELEMETRY_OUTPUT -m owner --uid-owner {uid} -j RETURN" in rules, rules
    assert re.search(r"^-A PROXY_TELEMETRY_OUTPUT .*-j REDIRECT --to-ports \d+$", rules, re.M), rules
