"""Stage 6: publish the dataset, the LoRA and the re-ID model as versioned repos.

Two targets with the same files:
- `hub`: the Hugging Face Hub's HTTP API (huggingface_hub): create the repo, upload the folder, tag the commit.
- `mirror`: a directory of git repos laid out as `{datasets,models}/ORG/NAME`, the layout the `olah` package
  serves offline as a Hub endpoint (air-gapped clusters): `olah-cli -c olah.toml`, then `HF_ENDPOINT=...`.

Every push ends with the tag `--version`. Re-running a finished publish changes nothing; a version that exists
with other content is refused unless `--force`; an interrupted publish is finished by running it again.
Each repo holds `publish.json`: the version and the sha256 of every file.

    vehicle-diff publish --dataset out/dataset --lora out/lora --reid out/reid --version v1.0 --target mirror --mirror_dir mirror
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .config import parse_config, save_config
from .errors import UserInputError
from .io import sha256_file

# artifact -> (repo type, files that go into its repo; globs relative to the artifact folder)
ARTIFACTS = {
    "dataset": ("dataset", ["README.md", "preview.png", "data/*.parquet"]),
    "lora": (
        "model",
        ["README.md", "pytorch_lora_weights.safetensors", "validation.png", "config.yaml", "training_stats.json"],
    ),
    "reid": ("model", ["README.md", "model.safetensors", "config.json", "metrics.json", "training_stats.json"]),
}
MANIFEST = "publish.json"


def collect_files(folder: Path, patterns: list[str], required: str) -> dict[str, Path]:
    """The artifact's files (relative name -> path); the `required` file must be among them."""
    if not folder.is_dir():
        raise UserInputError(f"{folder}: not a folder")
    files = {str(p.relative_to(folder)): p for pattern in patterns for p in sorted(folder.glob(pattern)) if p.is_file()}
    if required not in files and not any(name.startswith(required) for name in files):
        raise UserInputError(f"{folder}: {required} is missing; is this the right stage's output?")
    return files


def manifest(files: dict[str, Path], version: str) -> dict:
    return {"version": version, "files": {name: sha256_file(path) for name, path in sorted(files.items())}}


def stage_folder(files: dict[str, Path], version: str) -> Path:
    """A temporary copy of exactly what the repo will hold (files + publish.json)."""
    staging = Path(tempfile.mkdtemp(prefix="vehicle-diff-publish-"))
    for name, path in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, staging / name)
    (staging / MANIFEST).write_text(json.dumps(manifest(files, version), indent=2, sort_keys=True) + "\n")
    return staging


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"git {' '.join(args)} in {repo}: {result.stderr.strip()}")
    return result.stdout.strip()


def publish_to_mirror(staging: Path, mirror_dir: Path, repo_type: str, repo_id: str, version: str, force: bool) -> str:
    """Commit the staged files to the mirror's git repo (branch main) and tag them; returns what happened."""
    repo = mirror_dir / f"{repo_type}s" / repo_id
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        git(repo, "init", "-q", "-b", "main")
        git(repo, "config", "user.name", "vehicle-diff")
        git(repo, "config", "user.email", "publish@vehicle-diff.invalid")
    for entry in repo.iterdir():  # the working tree becomes exactly the staged files
        if entry.name != ".git":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    shutil.copytree(staging, repo, dirs_exist_ok=True)
    git(repo, "add", "-A")
    tree = git(repo, "write-tree")
    has_head = (
        subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True).returncode
        == 0
    )
    if git(repo, "tag", "--list", version):
        same = git(repo, "rev-parse", f"{version}^{{tree}}") == tree
        if same or not force:
            if has_head:
                git(repo, "reset", "-q", "--hard")  # leave the working tree as the branch has it
            if same:
                return f"{repo_type} {repo_id}@{version}: already published, unchanged"
            raise UserInputError(
                f"{repo_type} {repo_id}: version {version} exists with other content; use a new --version, or --force to move it"
            )
    if not has_head or git(repo, "rev-parse", "HEAD^{tree}") != tree:
        git(repo, "commit", "-q", "-m", f"Publish {version}")
    git(repo, "tag", "-f", version) if force else git(repo, "tag", version)
    return f"{repo_type} {repo_id}@{version}: published to {repo}"


def publish_to_hub(
    staging: Path, repo_type: str, repo_id: str, version: str, *, force: bool, private: bool, endpoint: str | None
) -> str:
    """Upload the staged folder to the Hub (or any HF-compatible endpoint) and tag the commit."""
    from huggingface_hub import HfApi, get_token, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=endpoint, token=get_token())
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    tags = {ref.name for ref in api.list_repo_refs(repo_id, repo_type=repo_type).tags}
    local = json.loads((staging / MANIFEST).read_text())
    if version in tags:
        try:
            remote = json.loads(
                Path(
                    hf_hub_download(repo_id, MANIFEST, repo_type=repo_type, revision=version, endpoint=endpoint)
                ).read_text()
            )
        except (EntryNotFoundError, RevisionNotFoundError):
            remote = None
        if remote == local:
            return f"{repo_type} {repo_id}@{version}: already published, unchanged"
        if not force:
            raise UserInputError(
                f"{repo_type} {repo_id}: version {version} exists with other content; use a new --version, or --force to move it"
            )
        api.delete_tag(repo_id, tag=version, repo_type=repo_type)
    commit = api.upload_folder(folder_path=str(staging), repo_id=repo_id, repo_type=repo_type,
                               commit_message=f"Publish {version}", delete_patterns=["*", "**/*"])  # fmt: skip
    api.create_tag(repo_id, tag=version, repo_type=repo_type, revision=commit.oid)
    return f"{repo_type} {repo_id}@{version}: published to {api.endpoint}"


def olah_config(mirror_dir: Path, host: str = "127.0.0.1", port: int = 8090) -> str:
    """The olah configuration that serves `mirror_dir` offline."""
    return (f'[basic]\nhost = "{host}"\nport = {port}\nmirror-scheme = "http"\nmirror-netloc = "{host}:{port}"\n'
            f'mirrors-path = ["{mirror_dir.resolve()}"]\n\n[accessibility]\noffline = true\n')  # fmt: skip


def mirror_client_env(endpoint: str, hf_home: Path) -> dict:
    """Environment for a fresh process whose Hub clients read from `endpoint` (set before they are imported)."""
    return {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(hf_home),
    }


@contextmanager
def serve_mirror(mirror_dir: Path, work_dir: Path, timeout_s: float = 60):
    """Run olah on a free 127.0.0.1 port serving `mirror_dir` offline; yields its endpoint, stops it on exit."""
    import socket
    import sys
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "olah-serve.toml").write_text(olah_config(mirror_dir, port=port))
    server = subprocess.Popen([sys.executable, "-m", "olah.server", "-c", "olah-serve.toml"], cwd=work_dir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout_s
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2)
                break
            except urllib.error.HTTPError:  # it answers: it is up
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise UserInputError(f"olah did not start serving {mirror_dir} within {timeout_s:.0f} s") from None
                time.sleep(0.3)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


@dataclass
class PublishConfig:
    """Publish the dataset, the LoRA and the re-ID model as versioned repos (Hub or local olah mirror)."""

    output_dir: str = field(default="vehicle-diff-output/publish", metadata={"help": "where the publish report goes"})
    preset: str = field(default="paper", metadata={"help": "paper, tiny, or a YAML file"})
    dataset: str | None = field(default=None, metadata={"help": "the export stage's folder"})
    lora: str | None = field(default=None, metadata={"help": "the finetune stage's folder"})
    reid: str | None = field(default=None, metadata={"help": "the train-reid stage's folder"})
    namespace: str = field(default="vehicle-diff", metadata={"help": "user or organisation of the repos"})
    dataset_repo: str = "vehicle-diff"
    lora_repo: str = "vehicle-diff-sdxl-lora"
    reid_repo: str = "vehicle-diff-reid"
    version: str = field(default="v1.0", metadata={"help": "the tag every repo gets"})
    target: str = field(default="mirror", metadata={"help": "mirror (local olah layout) or hub"})
    mirror_dir: str = field(default="vehicle-diff-mirror", metadata={"help": "root of the mirror's git repos"})
    hub_endpoint: str | None = field(default=None, metadata={"help": "default: HF_ENDPOINT or the Hub"})
    private: bool = False
    force: bool = field(default=False, metadata={"help": "move an existing version tag to new content"})

    def __post_init__(self):
        if self.target not in ("mirror", "hub"):
            raise UserInputError(f"--target {self.target!r}: use mirror or hub")
        if not (self.dataset or self.lora or self.reid):
            raise UserInputError("nothing to publish: give --dataset, --lora and/or --reid")
        if not self.version or any(c.isspace() for c in self.version):
            raise UserInputError(f"--version {self.version!r}: a tag name without spaces, e.g. v1.0")


def main(argv: list[str] | None = None) -> list[str]:
    return publish(parse_config(PublishConfig, "publish", argv))


def publish(config: PublishConfig) -> list[str]:
    if config.target == "hub":
        from huggingface_hub import get_token

        if not get_token():  # before any upload
            raise UserInputError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then publish again")
    jobs = []
    for artifact in ("dataset", "lora", "reid"):
        folder = getattr(config, artifact)
        if folder:
            repo_type, patterns = ARTIFACTS[artifact]
            required = {"dataset": "data/", "lora": "pytorch_lora_weights.safetensors", "reid": "model.safetensors"}[
                artifact
            ]
            files = collect_files(Path(folder), patterns, required)  # every input is checked before anything is pushed
            jobs.append((repo_type, f"{config.namespace}/{getattr(config, artifact + '_repo')}", files))
    report = []
    for repo_type, repo_id, files in jobs:
        staging = stage_folder(files, config.version)
        try:
            if config.target == "mirror":
                report.append(
                    publish_to_mirror(
                        staging, Path(config.mirror_dir), repo_type, repo_id, config.version, config.force
                    )
                )
            else:
                report.append(publish_to_hub(staging, repo_type, repo_id, config.version, force=config.force, private=config.private,
                                             endpoint=config.hub_endpoint or os.environ.get("HF_ENDPOINT")))  # fmt: skip
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.target == "mirror":
        (out_dir / "olah.toml").write_text(olah_config(Path(config.mirror_dir)))
        report.append(f"serve the mirror offline: olah-cli -c {out_dir / 'olah.toml'}; then HF_ENDPOINT=http://127.0.0.1:8090 "
                      f"and load_dataset('{config.namespace}/{config.dataset_repo}', revision='{config.version}')")  # fmt: skip
    (out_dir / "report.txt").write_text("\n".join(report) + "\n")
    save_config(config, out_dir / "config.yaml", stage="publish")
    print("\n".join(report))
    return report


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)
