"""Static checks of the local docker-compose cluster (docker-compose.yml, docker/Dockerfile,
conf/docker.yaml). No Docker needed: the files are parsed and cross-checked, so a renamed
service, a moved file, a wrong port or a bucket typo fails here instead of in `docker compose up`.
"""

from __future__ import annotations

import re
import shlex
import urllib.parse
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from em_spark.app.config import load_config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CONFIG_FILE = "conf/docker.yaml"

MINIO, MINIO_SETUP, MASTER, JOB = "minio", "minio-setup", "spark-master", "train"
WORKERS = ("spark-worker-1", "spark-worker-2")
SPARK_SERVICES = (MASTER, *WORKERS, JOB)


# --- parsing helpers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), (
        f"{COMPOSE_FILE.name} must be a mapping with a 'services' mapping"
    )
    return data


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def config():
    return load_config(str(ROOT / CONFIG_FILE))


@pytest.fixture(scope="module")
def config_text() -> str:
    return (ROOT / CONFIG_FILE).read_text()


def command(service: dict) -> list[str]:
    """The service's command as a list of words (string commands are split like a shell would)."""
    cmd = service.get("command")
    if cmd is None:
        return []
    if isinstance(cmd, str):
        return shlex.split(cmd)
    return [str(word) for word in cmd]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def container_ports(service: dict) -> set[int]:
    """Container-side ports a service exposes (`expose` and the target side of `ports`)."""
    ports = set()
    for entry in service.get("expose") or []:
        ports.add(int(str(entry).split("/")[0]))
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def depends_on(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def master_urls(words: list[str]) -> list[str]:
    return [w for w in words if w.startswith("spark://")]


def host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "", parts.port or default_port


def s3_buckets(config) -> dict[str, str]:
    """config key -> bucket, for every s3:// URI in the config."""
    keys = {
        "run.checkpointDir": config.run.checkpointDir,
        "input.path": config.input.path,
        "output.modelPath": config.output.modelPath,
        "score.outputPath": config.score.outputPath,
    }
    return {
        k: urllib.parse.urlsplit(v).netloc.rpartition("@")[2] for k, v in keys.items() if v and v.startswith("s3://")
    }


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    out = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def substitute(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), text)


def build_args(instructions: list[tuple[str, str]]) -> tuple[dict[str, str], str]:
    """The ARG defaults declared before FROM, and the FROM image with them substituted."""
    args = {}
    for keyword, value in instructions:
        if keyword == "ARG":
            name, _, default = value.partition("=")
            args[name.strip()] = default.strip().strip('"')
        elif keyword == "FROM":
            image = value.split()[0]
            return args, substitute(image, args)
    raise AssertionError("the Dockerfile has no FROM")


IMAGE_REPO = "/opt/em_spark"  # where the Dockerfile copies the repo and pip-installs it from
SHELL_OPERATORS = {";", "&&", "||", "|", "&"}


def shell_commands(script: str) -> list[list[str]]:
    """A RUN's shell script as its simple commands (split at ;, &&, ||), each a list of words."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in SHELL_OPERATORS:
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    if current:
        commands.append(current)
    return commands


def install_commands(path: Path) -> list[list[str]]:
    """The python3 commands of the one RUN that pip-installs em_spark, in order (the install and
    the checks after it), with the build ARGs substituted. tests/spark/test_docker_image.py runs
    exactly these in a clean virtualenv."""
    instructions = dockerfile_instructions(path)
    args, _ = build_args(instructions)
    runs = [substitute(v, args) for k, v in instructions if k == "RUN" and re.search(r"\bpip install\b", v)]
    assert len(runs) == 1, f"{path.name} should pip-install in exactly one RUN, found {len(runs)}"
    commands = [words for words in shell_commands(runs[0]) if words[0] == "python3"]
    installs = [words for words in commands if words[1:4] == ["-m", "pip", "install"]]
    assert len(installs) == 1, (
        f"{path.name} should have one `python3 -m pip install ...` (the one the image test replays), got {installs}"
    )
    return commands


def pip_install_targets(path: Path) -> list[str]:
    """What the Dockerfile's pip install installs (its arguments that are not options)."""
    install = next(w for w in install_commands(path) if w[1:4] == ["-m", "pip", "install"])
    return [word for word in install[4:] if not word.startswith("-")]


def em_spark_install(path: Path) -> tuple[str, set[str]]:
    """The pip target that installs em_spark from IMAGE_REPO, and the extras it names."""
    targets = pip_install_targets(path)
    found = [(t, re.fullmatch(re.escape(IMAGE_REPO) + r"(?:\[([^\]]*)\])?", t)) for t in targets]
    ours = [(t, m) for t, m in found if m]
    assert len(ours) == 1, (
        f"{path.name} should `pip install {IMAGE_REPO}` (the repo, copied into the image) once; it installs {targets}"
    )
    target, match = ours[0]
    return target, {e.strip() for e in (match.group(1) or "").split(",") if e.strip()}


def image_copies(path: Path) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context into IMAGE_REPO."""
    out = []
    for keyword, value in dockerfile_instructions(path):
        words = shlex.split(value)
        if keyword == "COPY" and not any(w.startswith("--from=") for w in words):
            words = [w for w in words if not w.startswith("--")]
            if words[-1] == IMAGE_REPO or words[-1].startswith(IMAGE_REPO + "/"):
                out.append((words[:-1], words[-1]))
    return out


def pyspark_requirement() -> Requirement:
    """The pyspark of pyproject's ``spark`` extra: em_spark's core dependencies have none (a
    runtime's pyspark must never be replaced), and the image pins its own to the image's Spark."""
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
    except ImportError:  # Python 3.10
        section = text.split("[project.optional-dependencies]", 1)[1]
        dependencies = re.findall(r'^\s*"([^"]+)"', section.split("\nspark = [", 1)[1].split("]\n", 1)[0], re.MULTILINE)
    else:
        dependencies = tomllib.loads(text)["project"]["optional-dependencies"]["spark"]
    for dep in dependencies:
        requirement = Requirement(dep)
        if requirement.name == "pyspark":
            return requirement
    raise AssertionError(f"pyproject.toml's `spark` extra lists no pyspark: {dependencies}")


def pyproject_extras() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
    except ImportError:  # Python 3.10
        section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
        return set(re.findall(r"^([A-Za-z][\w.-]*)\s*=", section, re.MULTILINE))
    return set(tomllib.loads(text)["project"].get("optional-dependencies", {}))


@pytest.fixture(scope="module")
def dockerfile(services) -> Path:
    build = services[JOB].get("build")
    assert isinstance(build, dict), (
        f"service {JOB!r} must have a build section with context and dockerfile, got {build!r}"
    )
    return (ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve()


def to_host_path(service: dict, container_path: str, image_workdir: str) -> Path | None:
    """The repo file behind a path the service's command uses: through a bind mount if one covers
    it, else None (the path is only in the image)."""
    workdir = service.get("working_dir") or image_workdir
    absolute = container_path if container_path.startswith("/") else f"{workdir.rstrip('/')}/{container_path}"
    best = None
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume.get("target", "")
        else:
            source, target = ([*str(volume).split(":"), "", ""])[:2]
        if not source.startswith((".", "/")):
            continue  # a named volume
        covers = absolute == target or absolute.startswith(target.rstrip("/") + "/")
        if covers and (best is None or len(target) > len(best[1])):
            best = (source, target)
    if best is None:
        return None
    source, target = best
    return (ROOT / source / absolute[len(target) :].lstrip("/")).resolve()


# --- the compose file and the files it references --------------------------------------------------


def test_compose_file_has_the_cluster_services(services):
    missing = [name for name in (MINIO, MINIO_SETUP, *SPARK_SERVICES) if name not in services]
    assert not missing, f"docker-compose.yml lacks services {missing}; it has {sorted(services)}"
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"service {name!r} has neither image nor build"


def test_build_contexts_dockerfiles_and_copied_paths_exist(services):
    for name, service in services.items():
        build = service.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = (ROOT / build.get("context", ".")).resolve()
        assert context.is_dir(), (
            f"service {name!r}: build context {build.get('context')!r} is not a directory of the repo"
        )
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), (
            f"service {name!r}: Dockerfile {build.get('dockerfile')!r} does not exist under {context}"
        )
        for keyword, args in dockerfile_instructions(dockerfile):
            if keyword in ("COPY", "ADD") and "--from=" not in args:
                sources = [w for w in shlex.split(args) if not w.startswith("--")][:-1]
                for source in sources:
                    assert (context / source).exists(), (
                        f"{dockerfile.relative_to(ROOT)}: {keyword} source {source!r} does not exist in the build context {context}"
                    )


def test_bind_mounts_and_named_volumes_exist(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume.get("source", "") if isinstance(volume, dict) else str(volume).split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"service {name!r} mounts {source!r}, which does not exist in the repo"
            else:
                assert source in declared, (
                    f"service {name!r} uses volume {source!r}, not declared under top-level volumes {sorted(declared)}"
                )
    mounted = {str(v).split(":")[0] for v in services[JOB].get("volumes") or []}
    for needed in ("./conf", "./jobs"):
        assert needed in mounted, (
            f"service {JOB!r} should mount {needed} (so edits need no rebuild); it mounts {sorted(mounted)}"
        )


def test_master_workers_and_job_run_one_image(services):
    def image_of(name):
        return services[name].get("build"), services[name].get("image")

    reference = image_of(MASTER)
    assert reference[0] is not None, f"service {MASTER!r} should build docker/Dockerfile"
    for name in (*WORKERS, JOB):
        assert image_of(name) == reference, (
            f"service {name!r} runs {image_of(name)}, but {MASTER!r} runs {reference}: drivers and executors "
            "need the same image (the same em_spark)"
        )


# --- the Dockerfile -------------------------------------------------------------------------------


def test_base_image_is_the_official_spark_python_image_matching_pyproject(dockerfile):
    _, image = build_args(dockerfile_instructions(dockerfile))
    match = re.fullmatch(r"apache/spark:(\d+\.\d+\.\d+)-python3", image)
    assert match, f"{dockerfile.name}: base image {image!r} is not an official apache/spark:<version>-python3 tag"
    spark_version = Version(match.group(1))
    requirement = pyspark_requirement()
    assert requirement.specifier.contains(spark_version), (
        f"{dockerfile.name} is based on Spark {spark_version}, but pyproject.toml requires {requirement}"
    )


def test_dockerfile_pins_pyspark_to_the_image_spark(dockerfile):
    instructions = dockerfile_instructions(dockerfile)
    args, image = build_args(instructions)
    spark_version = image.split(":", 1)[1].removesuffix("-python3")
    runs = " ".join(substitute(v, args) for k, v in instructions if k == "RUN")
    pins = re.findall(r"pyspark(?:\[[^\]]*\])?==([\w.]+)", runs)
    assert pins, f"{dockerfile.name} should pin pyspark to the image's Spark ({spark_version}) in its pip install"
    assert set(pins) == {spark_version}, (
        f"{dockerfile.name} pins pyspark=={pins}, but the base image is Spark {spark_version}"
    )


def test_dockerfile_installs_em_spark_as_root_and_runs_as_spark(dockerfile):
    instructions = dockerfile_instructions(dockerfile)
    users = [(i, v) for i, (k, v) in enumerate(instructions) if k == "USER"]
    install = [i for i, (k, v) in enumerate(instructions) if k == "RUN" and re.search(r"\bpip install\b", v)]
    em_spark_install(dockerfile)
    root_before = [v for i, v in users if i < install[0]]
    assert root_before and root_before[-1] == "root", (
        f"{dockerfile.name}: pip install runs as {root_before[-1:] or 'the base image user'}, not root"
    )
    assert users and users[-1][1] == "spark", (
        f"{dockerfile.name} should end as USER spark, ends as {users[-1][1] if users else 'nothing'}"
    )
    copies = [shlex.split(v) for k, v in instructions if k == "COPY"]
    copied = {src for words in copies for src in words[:-1] if words[-1].startswith("/opt/em_spark")}
    for needed in ("pyproject.toml", "em_spark"):
        assert needed in copied, (
            f"{dockerfile.name} does not COPY {needed} into /opt/em_spark (copies {sorted(copied)})"
        )
    env = " ".join(v for k, v in instructions if k == "ENV")
    assert re.search(r"\bPYSPARK_PYTHON=python3\b", env), (
        f"{dockerfile.name} should set PYSPARK_PYTHON=python3, ENV is {env!r}"
    )


def test_dockerfile_installs_the_extras_the_config_needs(dockerfile, config):
    # Every s3:// write goes through boto3 (em_spark's `s3` extra): without it the job stops at
    # its first write with MissingDependencyError.
    target, extras = em_spark_install(dockerfile)
    declared = pyproject_extras()
    assert extras <= declared, (
        f"{dockerfile.name} installs extras {sorted(extras - declared)} that pyproject.toml does not declare ({sorted(declared)})"
    )
    if s3_buckets(config):
        assert "s3" in extras, (
            f"{CONFIG_FILE} writes to S3 ({sorted(s3_buckets(config))}), which needs boto3, but {dockerfile.name} installs "
            f"{target!r} without the `s3` extra: the job would stop with MissingDependencyError"
        )
    assert "test" not in extras, f"{dockerfile.name} installs the `test` extra into the image"


def test_dockerfile_adds_s3a_when_spark_reads_s3(dockerfile, config):
    if not (config.input.path or "").startswith("s3://"):
        pytest.skip("the config's input is not on S3")
    runs = " ".join(v for k, v in dockerfile_instructions(dockerfile) if k == "RUN")
    for artifact in ("hadoop-aws", "awssdk/bundle"):
        assert artifact in runs, (
            f"{CONFIG_FILE} has Spark read {config.input.path}, but {dockerfile.name} does not add {artifact} "
            "(the official image has no S3A connector)"
        )


# --- the job, the config, and how they agree with the services ------------------------------------


def spark_submit(services) -> dict:
    words = command(services[JOB])
    assert words and words[0].rsplit("/", 1)[-1] == "spark-submit", (
        f"service {JOB!r} should run spark-submit, runs {words}"
    )
    assert "--master" in words, f"service {JOB!r} passes no --master to spark-submit: {words}"
    scripts = [w for w in words if w.endswith(".py")]
    assert scripts, f"service {JOB!r} submits no .py script: {words}"
    app_args = words[words.index(scripts[0]) + 1 :]
    assert "--config" in app_args, f"service {JOB!r} passes no --config to {scripts[0]}: {app_args}"
    return {
        "master": words[words.index("--master") + 1],
        "script": scripts[0],
        "config": app_args[app_args.index("--config") + 1],
    }


def test_job_submits_train_with_the_docker_config(services):
    submit = spark_submit(services)
    assert submit["script"].endswith("jobs/train.py"), f"service {JOB!r} submits {submit['script']}, not jobs/train.py"
    workdir = "/opt/em_spark"
    for key, expected in (("script", ROOT / "jobs/train.py"), ("config", ROOT / CONFIG_FILE)):
        host = to_host_path(services[JOB], submit[key], workdir)
        assert host is not None, (
            f"service {JOB!r}: {submit[key]!r} is not under any of its bind mounts {services[JOB].get('volumes')}"
        )
        assert host == expected.resolve(), (
            f"service {JOB!r}: {key} {submit[key]!r} is {host} in the repo, expected {expected}"
        )
        assert host.is_file(), f"service {JOB!r}: {key} {submit[key]!r} maps to {host}, which does not exist"


def test_config_loads_and_is_the_docker_demo(config):
    assert config.run.id, f"{CONFIG_FILE} should set run.id (so a re-run resumes)"
    assert config.spark.master is None, (
        f"{CONFIG_FILE}: spark.master is {config.spark.master!r}; it should be null (spark-submit sets it)"
    )
    assert config.input.generate is not None, (
        f"{CONFIG_FILE} should set input.generate so the compose run is self-contained"
    )
    for key in ("run.checkpointDir", "input.path", "output.modelPath", "score.outputPath"):
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        assert value and value.startswith("s3://"), f"{CONFIG_FILE}: {key} is {value!r}, expected an s3:// URI in MinIO"
    assert config.storage.s3Endpoint, f"{CONFIG_FILE} should set storage.s3Endpoint to the MinIO service"


def test_s3_endpoint_is_the_minio_service(services, config):
    host, port = host_port(config.storage.s3Endpoint, 443)
    assert host in services, (
        f"{CONFIG_FILE}: storage.s3Endpoint {config.storage.s3Endpoint} names host {host!r}, not a service ({sorted(services)})"
    )
    assert host == MINIO, f"{CONFIG_FILE}: storage.s3Endpoint points at service {host!r}, expected {MINIO!r}"
    ports = container_ports(services[MINIO])
    assert port in ports, (
        f"{CONFIG_FILE}: storage.s3Endpoint uses port {port}, but service {MINIO!r} exposes {sorted(ports)}"
    )
    words = command(services[MINIO])
    if "--address" in words:
        address = words[words.index("--address") + 1]
        assert address.rsplit(":", 1)[-1] == str(port), (
            f"service {MINIO!r} listens on {address}, but the config uses port {port}"
        )


def test_spark_s3a_settings_agree_with_the_endpoint(config):
    conf = {k: str(v) for k, v in config.spark.conf.items()}
    endpoint = conf.get("spark.hadoop.fs.s3a.endpoint")
    assert endpoint == config.storage.s3Endpoint, (
        f"{CONFIG_FILE}: spark.hadoop.fs.s3a.endpoint is {endpoint!r} but storage.s3Endpoint is "
        f"{config.storage.s3Endpoint!r}; Spark and pyarrow would talk to different stores"
    )
    assert conf.get("spark.hadoop.fs.s3a.path.style.access") == "true", (
        f'{CONFIG_FILE}: MinIO needs spark.hadoop.fs.s3a.path.style.access: "true"'
    )
    assert conf.get("spark.hadoop.fs.s3.impl") == "org.apache.hadoop.fs.s3a.S3AFileSystem", (
        f"{CONFIG_FILE} uses s3:// URIs, so spark.hadoop.fs.s3.impl must be org.apache.hadoop.fs.s3a.S3AFileSystem, "
        f"got {conf.get('spark.hadoop.fs.s3.impl')!r}"
    )


def test_the_bucket_in_the_config_is_the_bucket_mc_creates(services, config):
    buckets = s3_buckets(config)
    assert len(set(buckets.values())) == 1, f"{CONFIG_FILE} uses several buckets {buckets}; minio-setup creates one"
    bucket = next(iter(buckets.values()))
    script = " ".join(command(services[MINIO_SETUP]))
    created = re.findall(r"mc mb\s+(?:--\S+\s+)*[\w.-]+/([\w.-]+)", script)
    assert created, f"service {MINIO_SETUP!r} runs no `mc mb <alias>/<bucket>`: {script!r}"
    assert bucket in created, f"{CONFIG_FILE} uses bucket {bucket!r} ({buckets}), but {MINIO_SETUP!r} creates {created}"
    assert re.search(r"mc mb\s+--ignore-existing\b", script), (
        f"service {MINIO_SETUP!r} should use `mc mb --ignore-existing` (re-runs): {script!r}"
    )
    aliases = re.findall(r"mc alias set\s+\S+\s+(\S+)", script)
    assert aliases == [config.storage.s3Endpoint], (
        f"service {MINIO_SETUP!r} talks to {aliases}, but the job uses storage.s3Endpoint {config.storage.s3Endpoint}"
    )


def test_mc_waits_for_a_healthy_minio(services):
    assert services[MINIO].get("healthcheck"), f"service {MINIO!r} needs a healthcheck for {MINIO_SETUP!r} to wait on"
    condition = depends_on(services[MINIO_SETUP]).get(MINIO)
    assert condition == "service_healthy", (
        f"service {MINIO_SETUP!r} depends on {MINIO!r} with {condition!r}, expected service_healthy"
    )


def test_job_master_url_is_the_master_service(services):
    master = spark_submit(services)["master"]
    assert master.startswith("spark://"), f"service {JOB!r} submits to {master!r}, not a spark:// standalone master"
    host, port = host_port(master, 7077)
    assert host == MASTER, f"service {JOB!r} submits to host {host!r}, expected the {MASTER!r} service"
    assert port == 7077, f"service {JOB!r} submits to port {port}, expected 7077"
    ports = container_ports(services[MASTER])
    assert port in ports, f"service {MASTER!r} exposes {sorted(ports)}, not the port {port} the job submits to"
    words = command(services[MASTER])
    if "--port" in words:
        assert words[words.index("--port") + 1] == str(port), (
            f"service {MASTER!r} listens on --port {words[words.index('--port') + 1]}, the job uses {port}"
        )
    if "--host" in words:
        assert words[words.index("--host") + 1] == host, (
            f"service {MASTER!r} binds --host {words[words.index('--host') + 1]}, the job uses {host}"
        )
    assert services[MASTER].get("healthcheck"), f"service {MASTER!r} needs a healthcheck for {JOB!r} to wait on"


def test_both_workers_point_at_the_master(services):
    job_master = spark_submit(services)["master"]
    workers = sorted(name for name in services if name.startswith("spark-worker"))
    assert workers == sorted(WORKERS), f"expected workers {list(WORKERS)}, found {workers}"
    for name in workers:
        urls = master_urls(command(services[name]))
        assert urls == [job_master], f"service {name!r} registers with {urls}, but the job submits to {job_master}"
        assert MASTER in depends_on(services[name]), f"service {name!r} does not depend on {MASTER!r}"


def test_job_waits_for_the_bucket_and_the_master(services):
    deps = depends_on(services[JOB])
    assert deps.get(MINIO_SETUP) == "service_completed_successfully", (
        f"service {JOB!r} depends on {MINIO_SETUP!r} with {deps.get(MINIO_SETUP)!r}, expected service_completed_successfully"
    )
    assert deps.get(MASTER) == "service_healthy", (
        f"service {JOB!r} depends on {MASTER!r} with {deps.get(MASTER)!r}, expected service_healthy"
    )


# --- credentials ----------------------------------------------------------------------------------


def test_no_credentials_in_the_config(config_text, services):
    data = yaml.safe_load(config_text)
    suspicious = re.compile(r"access.?key|secret|password|token|credential", re.IGNORECASE)

    def walk(node, path=""):
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}.{key}" if path else str(key)
                assert not suspicious.search(str(key)), f"{CONFIG_FILE} has a credential-like key {where!r}"
                walk(value, where)
        elif isinstance(node, str):
            assert not re.match(r"^\w+://[^/@]+@", node), f"{CONFIG_FILE}: {path} has credentials in its URI"

    walk(data)
    secrets = set()
    for name in (*SPARK_SERVICES, MINIO):
        for key, value in environment(services[name]).items():
            if suspicious.search(key) or key.endswith(("_USER", "_KEY_ID")):
                default = re.fullmatch(r"\$\{\w+:?-([^}]*)\}", value)
                secrets.add(default.group(1) if default else value)
    leaked = sorted(s for s in secrets if s and s in config_text)
    assert not leaked, f"{CONFIG_FILE} contains credential values from docker-compose.yml: {leaked}"


def test_credentials_come_from_the_environment(services):
    minio_env = environment(services[MINIO])
    for key in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert re.fullmatch(r"\$\{\w+(:?-[^}]*)?\}", minio_env.get(key, "")), (
            f"service {MINIO!r}: {key} is {minio_env.get(key)!r}; it should come from an environment variable (${{VAR:-default}})"
        )
    expected = {
        "AWS_ACCESS_KEY_ID": minio_env["MINIO_ROOT_USER"],
        "AWS_SECRET_ACCESS_KEY": minio_env["MINIO_ROOT_PASSWORD"],
    }
    for name in (JOB, *WORKERS):  # the driver (pyarrow, S3A) and the executors (S3A) read MinIO
        env = environment(services[name])
        for key, value in expected.items():
            assert env.get(key) == value, (
                f"service {name!r}: {key} is {env.get(key)!r}, but MinIO's credential is {value!r}"
            )
        assert env.get("AWS_REGION"), f"service {name!r} sets no AWS_REGION"
    script = " ".join(command(services[MINIO_SETUP]))
    # `$$` escapes compose's own interpolation, so the container's shell expands its environment.
    assert "$$MINIO_ROOT_USER" in script and "$$MINIO_ROOT_PASSWORD" in script, (
        f"service {MINIO_SETUP!r} should log in with $$MINIO_ROOT_USER / $$MINIO_ROOT_PASSWORD (its own environment): {script!r}"
    )


# --- the monitoring profile -----------------------------------------------------------------------

PUSHGATEWAY, PROMETHEUS, GRAFANA = "pushgateway", "prometheus", "grafana"
MONITORING = (PUSHGATEWAY, PROMETHEUS, GRAFANA)
PROFILE = "monitoring"
DASHBOARD_FILES = {"executive.json", "on-call.json", "debug.json"}


def bind_mounts(service: dict) -> list[tuple[Path, str]]:
    """(host path in the repo, container path) of the service's bind mounts."""
    out = []
    for volume in service.get("volumes") or []:
        source, target = ([*str(volume).split(":"), "", ""])[:2]
        if source.startswith((".", "/")):
            out.append(((ROOT / source).resolve(), target))
    return out


def host_file(service_name: str, service: dict, container_path: str) -> Path:
    host = to_host_path(service, container_path, "/")
    assert host is not None, f"service {service_name!r}: {container_path} is not under any of its bind mounts"
    assert host.exists(), f"service {service_name!r}: {container_path} maps to {host}, which does not exist"
    return host


def flag(words: list[str], name: str) -> str | None:
    for word in words:
        if word.startswith(f"--{name}="):
            return word.split("=", 1)[1]
    return None


def listen_port(service: dict) -> int:
    address = flag(command(service), "web.listen-address")
    assert address, f"the service's command sets no --web.listen-address: {command(service)}"
    return int(address.rsplit(":", 1)[1])


def test_the_monitoring_services_are_pinned_and_only_in_the_profile(services):
    missing = [name for name in MONITORING if name not in services]
    assert not missing, f"docker-compose.yml lacks the monitoring services {missing}"
    for name in MONITORING:
        assert services[name].get("profiles") == [PROFILE], (
            f"service {name!r} has profiles {services[name].get('profiles')!r}, expected [{PROFILE!r}]"
        )
        image = services[name]["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"service {name!r}: image {image!r} is not pinned"
    for name in (MINIO, MINIO_SETUP, *SPARK_SERVICES):
        assert not services[name].get("profiles"), f"service {name!r} must start without a profile"


def test_the_monitoring_services_mount_files_that_exist(services):
    for name in MONITORING:
        for host, target in bind_mounts(services[name]):
            assert host.exists(), f"service {name!r} mounts {host} at {target}, which does not exist"
            assert str(host).startswith(str(ROOT / "docs" / "monitoring")), (
                f"service {name!r} mounts {host}: monitoring files live under docs/monitoring/"
            )


def test_the_job_pushes_to_the_pushgateway_service(services, config):
    assert config.run.pushgateway, f"{CONFIG_FILE} sets no run.pushgateway"
    host, port = host_port(config.run.pushgateway, 80)
    assert host == PUSHGATEWAY, f"{CONFIG_FILE}: run.pushgateway names host {host!r}, not the {PUSHGATEWAY!r} service"
    assert port == listen_port(services[PUSHGATEWAY]) and port in container_ports(services[PUSHGATEWAY]), (
        f"{CONFIG_FILE}: run.pushgateway uses port {port}; the {PUSHGATEWAY!r} service listens on "
        f"{listen_port(services[PUSHGATEWAY])} and exposes {sorted(container_ports(services[PUSHGATEWAY]))}"
    )
    dependency = (services[JOB].get("depends_on") or {}).get(PUSHGATEWAY)
    assert dependency == {"condition": "service_started", "required": False}, (
        f"service {JOB!r} should start after the Pushgateway when the profile is on and without it otherwise "
        f"(required: false), got {dependency!r}"
    )


@pytest.fixture(scope="module")
def prometheus_config(services) -> tuple[Path, dict]:
    words = command(services[PROMETHEUS])
    path = flag(words, "config.file")
    assert path, f"service {PROMETHEUS!r} sets no --config.file: {words}"
    host = host_file(PROMETHEUS, services[PROMETHEUS], path)
    return host, yaml.safe_load(host.read_text())


def test_prometheus_scrapes_the_pushgateway_and_loads_the_alert_rules(services, prometheus_config):
    _, data = prometheus_config
    [job] = [j for j in data["scrape_configs"] if j["job_name"] == PUSHGATEWAY]
    assert job.get("honor_labels") is True, "the Pushgateway job needs honor_labels: true (pushed job/run_id labels)"
    targets = [t for c in job["static_configs"] for t in c["targets"]]
    assert targets == [f"{PUSHGATEWAY}:{listen_port(services[PUSHGATEWAY])}"], targets
    rules = [host_file(PROMETHEUS, services[PROMETHEUS], r) for r in data["rule_files"]]
    assert rules == [ROOT / "docs" / "monitoring" / "alerts.yml"], rules


def test_promtool_checks_the_provisioned_prometheus_config(services, prometheus_config, tmp_path):
    """Debian's `promtool check config` on the compose Prometheus config, with each mounted
    container path replaced by its repo file (promtool also checks the rule files it names)."""
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: apt-get install -y prometheus (as .ci/run does)")
    _, data = prometheus_config
    data = {**data, "rule_files": [str(host_file(PROMETHEUS, services[PROMETHEUS], r)) for r in data["rule_files"]]}
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(data))
    result = subprocess.run([promtool, "check", "config", str(checked)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_grafana_is_provisioned_with_prometheus_and_the_three_dashboards(services):
    grafana = services[GRAFANA]
    provisioning = host_file(GRAFANA, grafana, "/etc/grafana/provisioning")
    [datasource] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    host, port = host_port(datasource["url"], 80)
    assert (host, port) == (PROMETHEUS, listen_port(services[PROMETHEUS])), datasource["url"]
    assert datasource["type"] == "prometheus"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "em_spark.yml").read_text())["providers"]
    boards = host_file(GRAFANA, grafana, provider["options"]["path"])
    assert boards == ROOT / "docs" / "monitoring" / "dashboards"
    assert {p.name for p in boards.glob("*.json")} == DASHBOARD_FILES
    import json

    for name in DASHBOARD_FILES:
        board = json.loads((boards / name).read_text())
        refs = {json.dumps(t["datasource"], sort_keys=True) for p in board["panels"] for t in p["targets"]}
        assert refs == {json.dumps({"type": "prometheus", "uid": datasource["uid"]}, sort_keys=True)}, (name, refs)
    env = environment(grafana)
    host_file(GRAFANA, grafana, env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert re.fullmatch(r"\$\{\w+:-[^}]*\}", env["GF_SECURITY_ADMIN_PASSWORD"]), (
        "Grafana's admin password should come from the environment (${VAR:-default})"
    )
    assert PROMETHEUS in depends_on(grafana) and PUSHGATEWAY in depends_on(services[PROMETHEUS])
