"""deploy.sh run against stub `helm` and `kubectl`, from a working directory outside the repository.

The stubs are written into a temporary bin directory placed first on PATH. Each logs its argv, its
working directory and, for every `-f`/`--values`, the path and the text it read there (stdin for
`-`), as one JSON line. `kubectl -n NS get secret NAME` succeeds for the `NS/NAME` pairs a test
declares and fails as the API server does otherwise. `helm template` really renders the chart it is
given, with the Helm SDK (helm-python-sdk): values files are parsed by Helm's YAML parser and merged
as `helm -f a -f b` does, so whatever deploy.sh asks Helm to read about the values is answered as a
real helm would. `helm upgrade` and `helm status` only log.

The script runs from a copy in a directory whose name has a space, with the chart linked in, so
`DEPLOY_SH=/path/to/other/deploy.sh` runs these tests against another version of the script (for
example the one before these tests: `git show <commit>:deploy.sh > /tmp/old.sh`). Every test here
fails on that one: it changed directory before reading relative values files, read
`credentials.secretName` with awk (quotes included), and knew only `--opt value` spellings.
"""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/helm/proxy-telemetry"
SCRIPT = Path(os.environ.get("DEPLOY_SH", ROOT / "deploy.sh"))
DEFAULT_SECRET = "monitoring/proxy-vendor-credentials"

HELM = r'''#!{python}
import json, os, sys

args = sys.argv[1:]


def values_files(args):
    """(path, text) of every -f/--values, read as helm reads them (`-` is stdin)."""
    files = []
    for flag, spec in zip(args, args[1:]):
        if flag in ("-f", "--values"):
            for path in spec.split(","):
                try:
                    files.append((path, sys.stdin.read() if path == "-" else open(path).read()))
                except OSError as error:
                    sys.exit(f"Error: open {{path}}: {{error.strerror}}")
    return files


files = values_files(args)
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps({{"tool": "helm", "argv": args, "cwd": os.getcwd(), "values": files}}) + "\n")

if args[:1] == ["template"]:
    import helm_python as helm

    def merge(base, overlay):  # helm's mergeMaps: maps merge key by key, anything else replaces
        for key, value in overlay.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value
        return base

    merged = {{}}
    for _, text in files:
        merge(merged, helm.values_from_yaml(text) or {{}})
    rendered = helm.Chart.load(args[2]).render(merged, name=args[1], namespace="default", is_install=True)
    for source, text in sorted(rendered.items()):
        print(f"---\n# Source: {{source}}\n{{text}}")
elif args[:2] == ["show", "values"]:
    # One write, as helm does (deploy.sh before the values probe piped this into an awk that
    # stops reading at its first match).
    os.write(1, open(os.path.join(args[2], "values.yaml"), "rb").read())
elif args[:1] == ["status"]:
    print("NOTES:\nstub notes")
elif args[:1] != ["upgrade"]:
    sys.exit(f"stub helm: unexpected command {{args}}")
'''

KUBECTL = r'''#!{python}
import json, os, sys

args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps({{"tool": "kubectl", "argv": args, "cwd": os.getcwd()}}) + "\n")
namespace, words, rest = "default", [], list(args)
while rest:
    arg = rest.pop(0)
    if arg in ("-n", "--namespace"):
        namespace = rest.pop(0)
    elif arg.startswith("--namespace="):
        namespace = arg.split("=", 1)[1]
    elif arg.startswith("--request-timeout="):
        pass
    else:
        words.append(arg)
if words[:1] == ["version"]:
    print("Client Version: v1.30.0\nServer Version: v1.30.0")
elif words[:2] == ["get", "secret"] and len(words) == 3:
    if os.environ.get("STUB_FORBIDDEN"):
        sys.exit(f'Error from server (Forbidden): secrets "{{words[2]}}" is forbidden: User "ci" '
                 f'cannot get resource "secrets" in API group "" in the namespace "{{namespace}}"')
    if f"{{namespace}}/{{words[2]}}" not in os.environ["STUB_SECRETS"].split():
        sys.exit(f'Error from server (NotFound): secrets "{{words[2]}}" not found')
    print(f"NAME {{words[2]}}")
else:
    sys.exit(f"stub kubectl: unexpected command {{args}}")
'''


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    calls: list

    def upgrades(self):
        return [c for c in self.calls if c["tool"] == "helm" and c["argv"][:1] == ["upgrade"]]

    def upgrade(self):
        """The one `helm upgrade --install`, after checking the run succeeded."""
        assert self.returncode == 0, self.stderr
        (call,) = self.upgrades()
        return call

    def secret_checks(self):
        """(namespace, name) of every `kubectl get secret`."""
        checks = []
        for c in self.calls:
            argv = c["argv"]
            if c["tool"] == "kubectl" and "secret" in argv:
                checks.append((argv[argv.index("-n") + 1], argv[argv.index("secret") + 1]))
        return checks


class Deploy:
    """A copy of deploy.sh beside the chart, stubs on PATH, and a caller directory elsewhere."""

    def __init__(self, tmp: Path):
        self.repo = tmp / "repo dir"
        (self.repo / "deploy/helm").mkdir(parents=True)
        shutil.copy(SCRIPT, self.repo / "deploy.sh")
        (self.repo / "deploy.sh").chmod(0o755)
        (self.repo / "deploy/helm/proxy-telemetry").symlink_to(CHART)
        self.bin = tmp / "bin"
        self.bin.mkdir()
        for name, source in (("helm", HELM), ("kubectl", KUBECTL)):
            (self.bin / name).write_text(source.format(python=sys.executable))
            (self.bin / name).chmod(0o755)
        self.log = tmp / "calls.jsonl"
        self.caller = tmp / "caller"
        self.caller.mkdir()
        self.secrets = [DEFAULT_SECRET]

    def write(self, relative, text):
        path = self.caller / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def run(self, *args, argv0=None, shell=None, stdin=None, cwd=None, forbidden=False):
        """Runs `deploy.sh ARGS` (or `bash -c SHELL deploy.sh`) from the caller's directory;
        `forbidden`: the stub's user may not read Secrets."""
        self.log.write_text("")
        script = str(self.repo / "deploy.sh") if argv0 is None else argv0
        command = ["bash", "-c", shell, script] if shell else [script, *args]
        env = {**os.environ, "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
               "STUB_LOG": str(self.log), "STUB_SECRETS": " ".join(self.secrets),
               **({"STUB_FORBIDDEN": "1"} if forbidden else {})}
        done = subprocess.run(command, cwd=cwd or self.caller, env=env, input=stdin or "",
                              capture_output=True, text=True, timeout=60)
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return Run(done.returncode, done.stdout, done.stderr, calls)


@pytest.fixture
def deploy(tmp_path):
    return Deploy(tmp_path)


def values_passed(call):
    """(path, text) of the values files helm upgrade received, in order."""
    return [tuple(v) for v in call["values"]]


# Relative values files: the caller's directory, not the repository's.


@pytest.mark.parametrize("args, files", [
    (["-f", "values.yaml"], ["values.yaml"]),
    (["-f", "my values/prod values.yaml"], ["my values/prod values.yaml"]),
    (["-f", "./a.yaml", "--values", "sub/b.yaml"], ["a.yaml", "sub/b.yaml"]),
    (["-f", "a.yaml,sub/b.yaml"], ["a.yaml", "sub/b.yaml"]),
], ids=["plain", "spaces", "several", "comma-list"])
def test_relative_values_files_are_resolved_against_the_callers_directory(deploy, args, files):
    for i, name in enumerate(files):
        deploy.write(name, f"commonLabels: {{file: f{i}}}\n")

    passed = values_passed(deploy.run(*args).upgrade())

    assert passed == [(str(deploy.caller / name), f"commonLabels: {{file: f{i}}}\n")
                      for i, name in enumerate(files)]
    assert all(os.path.isabs(path) and os.path.isfile(path) for path, _ in passed)


def test_a_missing_values_file_is_a_usage_error_before_anything_runs(deploy):
    run = deploy.run("-f", "nope.yaml")

    assert run.returncode == 64
    assert str(deploy.caller / "nope.yaml") in run.stderr
    assert run.calls == []


# Option spellings helm accepts.


@pytest.mark.parametrize("args", [
    ["--values=v.yaml", "--namespace=crawl", "--release=meters"],
    ["-f=v.yaml", "-n=crawl", "--release", "meters"],
    ["-fv.yaml", "-ncrawl", "--release=meters"],
], ids=["long=", "short=", "short-attached"])
def test_option_values_may_be_attached(deploy, args):
    deploy.write("v.yaml", "commonLabels: {team: crawl}\n")
    deploy.secrets = ["crawl/proxy-vendor-credentials"]

    call = deploy.run(*args).upgrade()

    assert call["argv"][2:4] == ["meters", str(deploy.repo / "deploy/helm/proxy-telemetry")]
    assert call["argv"][call["argv"].index("--namespace") + 1] == "crawl"
    assert values_passed(call) == [(str(deploy.caller / "v.yaml"), "commonLabels: {team: crawl}\n")]


@pytest.mark.parametrize("args", [["-f"], ["--values"], ["-n"], ["--namespace"], ["--release"],
                                  ["-n", ""]])
def test_an_option_without_its_value_is_a_usage_error(deploy, args):
    run = deploy.run(*args)

    assert run.returncode == 64, run.stderr
    assert args[0].split("=")[0] in run.stderr
    assert run.upgrades() == []


def test_help_works_from_another_directory_and_shows_only_the_usage(deploy):
    run = deploy.run("--help", argv0="repo dir/deploy.sh", cwd=deploy.repo.parent)

    assert run.returncode == 0, run.stderr
    assert "./deploy.sh --demo" in run.stdout
    assert "--values" in run.stdout
    assert "set -euo" not in run.stdout and "\n#" not in run.stdout
    assert run.calls == []


# credentials.secretName as Helm reads it.

SECRET_SPELLINGS = {
    "double-quoted": 'credentials:\n  secretName: "my-secret"\n',
    "single-quoted": "credentials:\n  secretName: 'my-secret'\n",
    "flow-mapping": "credentials: {secretName: my-secret}\n",
    "commented-out-line-first": "credentials:\n  # secretName: old-secret\n  secretName: my-secret\n",
}


@pytest.mark.parametrize("values", SECRET_SPELLINGS.values(), ids=SECRET_SPELLINGS.keys())
def test_the_secret_named_in_the_values_is_accepted_when_it_exists(deploy, values):
    path = deploy.write("values.yaml", values)
    deploy.secrets = ["crawl/my-secret"]

    run = deploy.run("-n", "crawl", "-f", str(path))

    assert run.secret_checks() == [("crawl", "my-secret")]
    assert values_passed(run.upgrade()) == [(str(path), values)]


@pytest.mark.parametrize("values", [SECRET_SPELLINGS["double-quoted"], SECRET_SPELLINGS["single-quoted"]],
                         ids=["double-quoted", "single-quoted"])
def test_a_missing_secret_is_rejected_by_its_name_and_namespace(deploy, values):
    path = deploy.write("values.yaml", values)
    deploy.secrets = ["crawl/other-secret", "monitoring/my-secret"]

    run = deploy.run("-n", "crawl", "-f", str(path))

    assert run.returncode != 0
    assert run.secret_checks() == [("crawl", "my-secret")]
    assert 'Secret "my-secret" does not exist in namespace "crawl"' in run.stderr
    assert "kubectl -n crawl create secret generic my-secret " in run.stderr
    assert run.upgrades() == []


def test_no_secret_is_required_when_the_chart_creates_it(deploy):
    path = deploy.write("values.yaml", "credentials:\n  secretName: pt-demo\n  createDemoSecret: true\n"
                                       "  demoPasswords: {vendor-a-password: a}\n")
    deploy.secrets = []

    run = deploy.run("-f", str(path))

    assert run.secret_checks() == []
    assert values_passed(run.upgrade()) == [(str(path), path.read_text())]


# Values that can be read only once.


def test_values_from_stdin_reach_helm(deploy):
    values = "credentials:\n  secretName: piped-secret\n"
    deploy.secrets = ["monitoring/piped-secret"]

    run = deploy.run("-f", "-", stdin=values)

    assert run.secret_checks() == [("monitoring", "piped-secret")]
    assert [text for _, text in values_passed(run.upgrade())] == [values]


def test_values_from_process_substitution_reach_helm(deploy):
    values = "credentials:\n  secretName: piped-secret\n"
    deploy.write("source.yaml", values)
    deploy.secrets = ["monitoring/piped-secret"]

    run = deploy.run(shell='"$0" -f <(cat source.yaml)')

    assert run.secret_checks() == [("monitoring", "piped-secret")]
    assert [text for _, text in values_passed(run.upgrade())] == [values]


def test_the_create_command_names_every_vendors_password_key(deploy):
    path = deploy.write("values.yaml", "credentials: {secretName: my-secret}\nvendors:\n"
                                       "  - {name: alpha, url: 'http://a:1', username: u}\n"
                                       "  - {name: beta, url: 'http://b:1', username: u, passwordKey: beta-key}\n"
                                       "  - {name: open, url: 'http://c:1'}\n")
    deploy.secrets = []

    run = deploy.run("-n", "crawl", "-f", str(path))

    assert run.returncode != 0
    assert ("kubectl -n crawl create secret generic my-secret --from-literal=alpha-password=... "
            "--from-literal=beta-key=...\n") in run.stderr


def test_a_user_who_may_not_read_secrets_is_warned_not_stopped(deploy):
    run = deploy.run("-n", "crawl", forbidden=True)

    assert run.returncode == 0, run.stderr
    assert "could not check the Secret" in run.stderr and "Forbidden" in run.stderr
    assert "does not exist" not in run.stderr
    assert len(run.upgrades()) == 1


def test_every_cluster_call_has_a_timeout(deploy):
    run = deploy.run("-n", "crawl")

    kubectl = [c["argv"] for c in run.calls if c["tool"] == "kubectl"]
    assert kubectl and all(any(a.startswith("--request-timeout=") for a in argv) for argv in kubectl), kubectl
