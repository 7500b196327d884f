"""Deployment files: the compose file is valid and exposes nothing beyond the machine, the image
installs the package exactly as README does and runs as a non-root user.

No Docker engine is needed (nor used): the compose file is checked with `docker-compose config`,
the Dockerfile by reading it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from pipeline import cli, config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
APP_SERVICES = ("migrate", "ingest", "worker")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def shell_steps(command: str) -> list[str]:
    return [s.strip() for s in re.split(r"&&|;", command) if s.strip()]


def readme_install_steps() -> list[str]:
    first_block = re.search(r"^```[^\n]*\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    assert first_block, "README.md has no code block"
    return shell_steps(first_block.group(1))


# ---- Dockerfile --------------------------------------------------------------------------------
def test_image_installs_exactly_as_readme_says():
    readme = readme_install_steps()
    readme_pip = [s for s in readme if s.startswith("pip ")]
    assert readme_pip == ["pip install ."]
    runs = [shell_steps(args) for word, args in dockerfile_instructions() if word == "RUN"]
    image_pip = [s for steps in runs for s in steps if re.match(r"(\S*/)?pip3? ", s)]
    assert image_pip == readme_pip
    # ... and in a virtualenv made the README's way, activated before the install.
    install_run = next(steps for steps in runs if readme_pip[0] in steps)
    venv = next(s for s in readme if s.startswith("python3 -m venv"))
    assert install_run[0].split()[:3] == venv.split()[:3]
    assert install_run[1].startswith(". ") and install_run[1].endswith("/bin/activate")


def test_image_copies_everything_the_package_build_needs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    mapped = setuptools.get("package-dir", {})
    needed = {project["project"]["readme"], "pyproject.toml"}
    for package in setuptools["packages"]:
        owner = next((mapped[p] for p in mapped if package == p or package.startswith(p + ".")), None)
        needed.add((owner or package).split(".")[0].split("/")[0])
    copied = set()
    for word, args in dockerfile_instructions():
        if word == "COPY":
            copied.update(p.rstrip("/").removeprefix("./") for p in args.split()[:-1])
    assert needed <= copied, needed - copied
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert not needed & ignored


def test_image_runs_as_non_root_with_volumes_and_a_healthcheck():
    ins = dockerfile_instructions()
    assert ins[0][0] == "FROM" and re.match(r"python:3\.11-slim", ins[0][1])
    users = [args for word, args in ins if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert [w for w, _ in ins].index("USER") > max(i for i, (w, _) in enumerate(ins) if w == "RUN")
    volumes = " ".join(args for word, args in ins if word == "VOLUME")
    assert '"/data"' in volumes and '"/models"' in volumes
    env = " ".join(args for word, args in ins if word == "ENV")
    assert "ADSB_DATA_DIR=/data" in env and "ADSB_MODEL_DIR=/models" in env
    health = next(args for word, args in ins if word == "HEALTHCHECK")
    assert "/healthz" in health and "ADSB_METRICS_PORT" in health
    assert ("ENTRYPOINT", '["adsb-pipeline"]') in ins


# ---- docker-compose.yml ------------------------------------------------------------------------
def test_published_ports_are_on_localhost_only(compose):
    published = 0
    for name, service in compose["services"].items():
        assert service.get("network_mode") != "host", name
        assert not service.get("privileged"), name
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)
    assert published >= 3            # psql, and the metrics of ingest and worker


def test_services_and_their_order(compose):
    s = compose["services"]
    assert s["db"]["image"].startswith("postgres:") and "healthcheck" in s["db"]
    assert any(v.startswith("pgdata:") for v in s["db"]["volumes"]) and "pgdata" in compose["volumes"]
    commands = {"migrate": ["db", "upgrade"], "ingest": ["ingest", "--live"], "worker": ["worker"]}
    for name, command in commands.items():
        assert s[name]["command"] == command
        cli.build_parser().parse_args(command)          # a command the CLI really has
    assert s["migrate"]["restart"] == "no"
    for name in ("ingest", "worker"):
        deps = s[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["db"]["condition"] == "service_healthy"
        assert s[name]["env_file"] == ".env"
        assert s[name]["environment"]["ADSB_METRICS_HOST"] == "0.0.0.0"
    sdr = s["readsb"]
    assert sdr["profiles"] == ["sdr"]
    assert any(d.startswith("/dev/bus/usb") for d in sdr["devices"])
    assert all("profiles" not in s[name] for name in ("db", *APP_SERVICES))


def test_no_secrets_in_the_repository(compose):
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key:
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), (name, key)
    assert all("file" in secret for secret in compose["secrets"].values())
    ignored = (ROOT / ".gitignore").read_text().split()
    assert ".env" in ignored and "/secrets/" in ignored
    assert not re.search(r"^\s*\w*PASSWORD\w*=\S", ENV_EXAMPLE.read_text(), re.M)
    url = re.sub(r"\$\{[^}]*\}", "X", compose["x-app"]["environment"]["ADSB_DATABASE_URL"])
    assert not re.match(r"\w+://[^@/]*:[^@/]*@", url), "password in ADSB_DATABASE_URL"


def test_env_example_documents_every_variable():
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))
    used_by_compose = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text()))
    settings = {env for env, _, _ in config.describe()}
    assert not (used_by_compose | settings) - documented, (used_by_compose | settings) - documented
    assert not documented - used_by_compose - settings, "documents variables nobody reads"


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose is not installed (Debian package docker-compose; "
                           ".ci/run installs it when run as root)")
def test_compose_config_is_valid_and_resolves_to_localhost_ports(tmp_path):
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")          # the documented first step
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "db_password").write_text("not-a-real-password\n")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["docker-compose", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)

    r = run("config", "-q")
    assert r.returncode == 0, r.stderr
    resolved = yaml.safe_load(run("config").stdout)
    ports = [str(p) for svc in resolved["services"].values() for p in svc.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports), ports


def test_every_package_of_the_source_tree_is_installed():
    """`pip install .` (not editable) installs only the listed packages: one left out imports
    in a checkout and fails in the image."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "pipeline").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
