"""Stage 6: publish the dataset, the LoRA and the re-ID model as versioned repos.

Two targets with the same files:
- `hub`: the Hugging Face Hub's HTTP API (huggingface_hub): create the repo, commit the files, tag the commit.
- `mirror`: a directory of git repos laid out as `{datasets,models}/ORG/NAME`, the layout the `olah` package
  serves offline as a Hub endpoint (air-gapped clusters): `olah-cli -c olah.toml`, then `HF_ENDPOINT=...`.

Every push ends with the tag `--version`. Re-running a finished publish changes nothing; a version that exists
with other content is refused unless `--force`; a publish stopped at any moment (Ctrl-C, SIGKILL, a lost
connection) is finished by running it again. Each repo holds `publish.json`: the version and the sha256 of every
file. The cards are rendered again with the repo id and version they are published under; configs and metrics
are published with machine-local paths reduced to their last component.

Safety: repo ids pass huggingface_hub's own validator and every mirror repo is proven to lie inside
`--mirror_dir`; a mirror repo is created atomically (initialised beside it, then renamed) and publish touches no
folder it did not create; the version is checked with `git check-ref-format` before anything is written.

    vehicle-diff publish --dataset out/vehicle-diff --lora out/lora --reid out/reid --version v1.0 --target mirror --mirror_dir mirror
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from .config import parse_config, save_config
from .errors import UserInputError
from .faults import fault_point
from .io import atomic_path, sha256_file
from .jobs import Job, check_output_path, files_digest, output_settings

LORA_FILE, KOHYA_LORA_FILE = "pytorch_lora_weights.safetensors", "pytorch_lora_weights_kohya.safetensors"
# artifact -> (repo type, files that go into its repo (globs relative to the artifact folder), files it must have)
ARTIFACTS = {
    "dataset": ("dataset", ["README.md", "preview.png", "data/*.parquet"], ["data/"]),
    "lora": (
        "model",
        ["README.md", LORA_FILE, KOHYA_LORA_FILE, "validation*.png", "config.yaml", "training_stats.json"],
        [LORA_FILE],
    ),
    "reid": (
        "model",
        [
            "README.md",
            "config.json",
            "model.safetensors",
            "reid_heads.safetensors",
            "config.yaml",
            "metrics.json",
            "training_stats.json",
        ],
        ["model.safetensors", "reid_heads.safetensors"],
    ),
}
MANIFEST = "publish.json"
TEXT_SUFFIXES = (".md", ".json", ".yaml", ".yml", ".txt", ".toml")
# git runs with these whatever the user's git config says: no hooks, no signing prompts, bytes kept as they are,
# no background gc that would outlive us in the repo
GIT_CONFIG = [
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "commit.gpgSign=false",
    "-c",
    "tag.gpgSign=false",
    "-c",
    "core.autocrlf=false",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "gc.auto=0",
    "-c",
    "maintenance.auto=false",
]
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "vehicle-diff",
    "GIT_AUTHOR_EMAIL": "publish@vehicle-diff.invalid",
    "GIT_COMMITTER_NAME": "vehicle-diff",
    "GIT_COMMITTER_EMAIL": "publish@vehicle-diff.invalid",
}
MIRROR_MARKER = "vehicle-diff.mirror"  # git config key set in every mirror repo publish creates
PUBLISH_INDEX = "vehicle-diff-publish.index"  # the private index a publish builds its tree in
GIT_WAIT_S = 60  # how long to wait for a git process still working in a repo before giving up
STALE_LOCK_AGE_S = 600  # without /proc: a git lock this old is taken to be left by a killed git


# -- inputs ------------------------------------------------------------------------------------------------------


def check_repo_id(repo_id: str, flag: str) -> str:
    """`namespace/name` by huggingface_hub's own rules (no `..`, `--`, spaces, slashes in a part, ...)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UserInputError(f"{flag}: {repo_id!r} is not a valid repo id ({error})") from None
    if repo_id.count("/") != 1:
        raise UserInputError(f"{flag}: {repo_id!r} needs a namespace, as in ORG/NAME")
    return repo_id


def check_version_tag(version: str) -> str:
    """A tag name git accepts (`git check-ref-format`), checked before anything is written."""
    if not version:
        raise UserInputError("--version: give a tag name, e.g. v1.0")
    if shutil.which("git"):
        valid = subprocess.run(["git", "check-ref-format", f"refs/tags/{version}"], capture_output=True).returncode == 0
    else:  # git's rules, for a Hub-only machine without git
        valid = not (
            re.search(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(/|$)", version)
            or version.startswith((".", "/"))
            or version.endswith((".", "/"))
            or version == "@"
        )
    if not valid:
        raise UserInputError(f"--version {version!r}: not a valid git tag name (see `git check-ref-format`); e.g. v1.0")
    if ambiguous_revision(version):
        raise UserInputError(
            f"--version {version!r}: clients would read it as a branch, a commit or a Hub ref, not this tag "
            "(revision= resolves a branch before a tag); choose a version name such as v1.0"
        )
    return version


# names a `revision=` resolves to something else than a tag: the repos' branch (and git's usual ones), HEAD,
# full ref names and the Hub's own refs
BRANCH_LIKE = {"main", "master", "head", "fetch_head", "orig_head"}


def ambiguous_revision(version: str) -> bool:
    """A tag that a branch or a commit id would shadow (`revision="main"` is the branch), or that looks like one
    (`Main` on a case-insensitive filesystem, an abbreviated commit id, `refs/...`, the Hub's `convert/...`)."""
    return (
        version.casefold() in BRANCH_LIKE
        or version.startswith(("refs/", "convert/", "pr/"))
        or re.fullmatch(r"[0-9a-fA-F]{7,64}", version) is not None
    )


def collect_files(folder: Path, patterns: list[str], required: list[str]) -> dict[str, Path]:
    """The artifact's files (relative name -> path); every `required` file (or folder prefix) must be among them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder}: not a folder")
    files = {
        p.relative_to(folder).as_posix(): p for pattern in patterns for p in sorted(folder.glob(pattern)) if p.is_file()
    }
    for name in required:
        if name not in files and not any(file.startswith(name) for file in files):
            raise UserInputError(f"{folder}: {name} is missing; is this the right stage's output?")
    return files


# -- what a repo holds -------------------------------------------------------------------------------------------


def _is_absolute(text: str) -> bool:
    return text.startswith(("/", "~")) or re.match(r"[A-Za-z]:[\\/]", text) is not None


def public_path(text: str) -> str:
    """A machine-local absolute path (also after a `kind:` prefix such as `veri776:` or `local-dir:`) reduced to its
    last component; anything else unchanged."""
    if _is_absolute(text) and "\n" not in text:
        return PurePath(text).name
    prefix, sep, rest = text.partition(":")
    if sep and re.fullmatch(r"[A-Za-z][\w-]*", prefix) and not rest.startswith("//") and _is_absolute(rest):
        return f"{prefix}:{PurePath(rest).name}"
    return text


def scrub_paths(value):
    if isinstance(value, dict):
        return {key: scrub_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub_paths(item) for item in value]
    return public_path(value) if isinstance(value, str) else value


def public_config(path: Path) -> bytes:
    """A JSON or YAML file with its local paths reduced (bytes unchanged when there is none)."""
    import yaml

    raw = path.read_bytes()
    if path.suffix == ".json":
        data = json.loads(raw)
        clean = scrub_paths(data)
        return raw if clean == data else (json.dumps(clean, indent=2) + "\n").encode()
    data = yaml.safe_load(raw)
    clean = scrub_paths(data)
    return raw if clean == data else yaml.safe_dump(clean, sort_keys=False).encode()


def local_prefixes(*folders: Path) -> set[str]:
    """Paths of this machine that must not appear in a published text file."""
    prefixes = {
        str(Path.home()),
        str(Path.cwd()),
        tempfile.gettempdir(),
        *(str(Path(f).resolve().parent) for f in folders),
    }
    return {p.rstrip("/") + "/" for p in prefixes if p not in ("", "/")}


def check_no_local_paths(tree: dict[str, Path | bytes], prefixes: set[str], repo_id: str) -> None:
    for name, source in tree.items():
        if not name.endswith(TEXT_SUFFIXES):
            continue
        text = (source if isinstance(source, bytes) else source.read_bytes()).decode("utf-8", "replace")
        found = sorted(p for p in prefixes if p in text)
        if found:
            raise UserInputError(
                f"{repo_id}: {name} contains the local path {found[0]}...; re-run the stage that "
                "wrote it (current cards and configs hold no machine paths), then publish again"
            )


def progress(**kwargs):
    from tqdm.auto import tqdm

    return tqdm(disable=None, leave=False, **kwargs)


def build_tree(
    artifact: str, folder: Path, repo_id: str, version: str, *, work_dir: Path, alongside: dict, target: str = "hub"
) -> dict[str, Path | bytes]:
    """Exactly what the repo will hold: the artifact's files (configs with local paths reduced), the card rendered
    for `repo_id`@`version` on `target` (linking the repos published `alongside` it where they are its inputs; how
    to load through an olah mirror, or how to stream from the Hub), a kohya copy of the LoRA if the folder has
    none, and `publish.json`."""
    from vehicle_diff.cards import RENDERERS, load_context

    _, patterns, required = ARTIFACTS[artifact]
    tree: dict[str, Path | bytes] = dict(collect_files(folder, patterns, required))
    for name, path in list(tree.items()):
        if name.endswith((".json", ".yaml", ".yml")):
            tree[name] = public_config(path)
    if artifact == "lora" and KOHYA_LORA_FILE not in tree:
        from vehicle_diff.training.lora_files import save_kohya_lora

        tree[KOHYA_LORA_FILE] = save_kohya_lora(folder / LORA_FILE, work_dir / f"{artifact}-{KOHYA_LORA_FILE}")
    context = load_context(folder)
    if context is not None:
        extra = {}
        if artifact == "lora":
            context = {**context, "kohya_file": KOHYA_LORA_FILE}
        lora = (context.get("generation") or {}).get("lora")
        if artifact == "dataset" and "lora" in alongside and lora and lora.get("sha256") == alongside["lora"]["sha256"]:
            generation = {**context["generation"], "lora": {**lora, "repo": alongside["lora"]["repo_id"]}}
            context = {**context, "generation": generation}  # the LoRA that made the images
        if artifact == "reid" and "dataset" in alongside:
            trained_on = [(context.get(key) or {}).get("path") for key in ("synthetic_data", "eval_data")]
            if alongside["dataset"]["folder"] in trained_on:
                extra = {"dataset_repo": alongside["dataset"]["repo_id"], "dataset_revision": version}
        card = RENDERERS[artifact](context, repo_id=repo_id, revision=version, target=target, **extra)
        tree["README.md"] = str(card).encode()
    hashes = {}
    total = sum(len(s) if isinstance(s, bytes) else s.stat().st_size for s in tree.values())
    with progress(total=total, unit="B", unit_scale=True, desc=f"hashing {repo_id}") as bar:
        for name, source in sorted(tree.items()):
            if isinstance(source, bytes):
                import hashlib

                hashes[name] = hashlib.sha256(source).hexdigest()
            else:
                hashes[name] = sha256_file(source)
            bar.update(len(source) if isinstance(source, bytes) else source.stat().st_size)
    tree[MANIFEST] = (json.dumps({"version": version, "files": hashes}, indent=2, sort_keys=True) + "\n").encode()
    return tree


# -- local mirror (git) ------------------------------------------------------------------------------------------


def git_env() -> dict:
    """The environment git runs in: none of the caller's GIT_* settings (GIT_DIR, GIT_INDEX_FILE ... would point
    it elsewhere), a fixed identity, never a prompt."""
    return (
        {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | GIT_IDENTITY | {"GIT_TERMINAL_PROMPT": "0"}
    )


def git(repo: Path, *args: str, input: bytes | None = None, index: Path | None = None) -> str:
    """git on the mirror repo `repo` (its `.git` named explicitly: never a repo found above it)."""
    env = git_env()
    if index is not None:
        env["GIT_INDEX_FILE"] = str(index)
    command = ["git", *GIT_CONFIG, f"--git-dir={repo / '.git'}", f"--work-tree={repo}", *args]
    result = subprocess.run(command, cwd=repo, input=input, capture_output=True, env=env)
    if result.returncode:
        raise RuntimeError(f"git {' '.join(args[:3])} in {repo}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode().strip()


def rev_parse(repo: Path, revision: str) -> str | None:
    try:
        return git(repo, "rev-parse", "-q", "--verify", revision) or None
    except RuntimeError:
        return None


def mirror_repo_path(mirror_dir: Path, repo_type: str, repo_id: str) -> Path:
    """The repo's folder, proven to lie inside `mirror_dir/{type}s/` (ids are validated, but a symlinked org
    folder could still point anywhere)."""
    root = (Path(mirror_dir).resolve() / f"{repo_type}s").resolve()
    repo = (root / repo_id).resolve()
    if not repo.is_relative_to(root) or len(repo.relative_to(root).parts) != 2:
        raise UserInputError(f"{repo_type} {repo_id}: its mirror folder {repo} is not inside {root}; refusing")
    return repo


def is_mirror_repo(repo: Path) -> bool:
    """A git repo whose `.git` is its own and that publish made (its marker), or that holds a published manifest."""
    if not (repo / ".git").is_dir():
        return False
    try:
        if git(repo, "config", "--get", MIRROR_MARKER) == "true":
            return True
    except RuntimeError:
        pass
    return rev_parse(repo, f"refs/heads/main:{MANIFEST}") is not None


def ensure_mirror_repo(repo: Path) -> None:
    """An existing mirror repo, or a new one: initialised in a temporary folder beside it and renamed into place,
    so a killed publish leaves either no repo or a whole one. Anything else at that path is left alone."""
    for stale in repo.parent.glob(f".{repo.name}.init-*"):  # a killed earlier init (we hold the repo's lock)
        shutil.rmtree(stale, ignore_errors=True)
    if repo.exists() and repo.is_dir() and not any(repo.iterdir()):
        repo.rmdir()
    if repo.exists():
        if not is_mirror_repo(repo):
            raise UserInputError(
                f"{repo} exists and is not a mirror repo made by `vehicle-diff publish`; refusing to "
                "touch it: move it away or choose another --mirror_dir"
            )
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{repo.name}.init-", dir=repo.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private; a mirror repo is as readable as the mirror
    try:
        subprocess.run(
            ["git", *GIT_CONFIG, "init", "-q", "-b", "main", str(tmp)], check=True, capture_output=True, env=git_env()
        )
        git(tmp, "config", MIRROR_MARKER, "true")
        os.rename(tmp, repo)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def git_processes_in(repo: Path) -> list[int] | None:
    """Live git processes working in `repo` (by working directory or a path in their arguments); None when the
    system has no /proc to tell."""
    proc = Path("/proc")
    if not (proc / "self" / "cmdline").exists():
        return None
    repo_text, found = str(repo), []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if not argv or not Path(argv[0].decode(errors="replace")).name.startswith("git"):
                continue
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone, or not ours to look at
            continue
        if Path(cwd).is_relative_to(repo) or any(repo_text in arg.decode(errors="replace") for arg in argv[1:]):
            found.append(int(entry.name))
    return found


def clear_stale_git_locks(repo: Path) -> list[str]:
    """Remove the `*.lock` files a killed git left in `repo/.git` (they block every later git command), but only
    when no git process works in the repo any more; returns what was removed. The caller holds the publish lock,
    so no other publish of ours is running git here."""
    git_dir = repo / ".git"
    candidates = [
        git_dir / name
        for name in (
            "index.lock",
            "HEAD.lock",
            "config.lock",
            "packed-refs.lock",
            "shallow.lock",
            f"{PUBLISH_INDEX}.lock",
        )
    ]
    candidates += list((git_dir / "refs").rglob("*.lock")) if (git_dir / "refs").is_dir() else []
    locks = [lock for lock in candidates if lock.exists()]
    if not locks:
        return []
    deadline = time.monotonic() + GIT_WAIT_S
    while True:
        busy = git_processes_in(repo)
        if busy is None:  # no /proc: trust only old locks
            recent = [lock for lock in locks if time.time() - lock.stat().st_mtime < STALE_LOCK_AGE_S]
            if recent:
                raise UserInputError(
                    f"{recent[0]} is recent: if no git is running in {repo}, delete it and publish again"
                )
            break
        if not busy:
            break
        if time.monotonic() > deadline:
            raise UserInputError(
                f"git process(es) {busy} still work in {repo}; wait for them to finish (or stop them), "
                "then publish again"
            )
        time.sleep(0.5)
    for lock in locks:
        lock.unlink(missing_ok=True)
    return [lock.relative_to(git_dir).as_posix() for lock in locks]


def write_tree(repo: Path, tree: dict[str, Path | bytes], label: str) -> str:
    """Store every file as a git object and build the tree in a private index: the repo's own index and working
    tree play no part in what is committed."""
    index = repo / ".git" / PUBLISH_INDEX
    index.unlink(missing_ok=True)
    entries = []
    total = sum(len(s) if isinstance(s, bytes) else s.stat().st_size for s in tree.values())
    with progress(total=total, unit="B", unit_scale=True, desc=f"git objects {label}") as bar:
        for name, source in sorted(tree.items()):
            if any(c in name for c in '\t\n\\"') or name.startswith("/") or ".." in PurePath(name).parts:
                raise UserInputError(f"{label}: file name {name!r} cannot be published")
            if isinstance(source, bytes):
                oid = git(repo, "hash-object", "-w", "--no-filters", "--stdin", input=source)
            else:
                oid = git(repo, "hash-object", "-w", "--no-filters", "--", str(Path(source).resolve()))
            entries.append(f"100644 {oid}\t{name}")
            bar.update(len(source) if isinstance(source, bytes) else source.stat().st_size)
    git(repo, "update-index", "--add", "--index-info", input=("\n".join(entries) + "\n").encode(), index=index)
    tree_oid = git(repo, "write-tree", index=index)
    index.unlink(missing_ok=True)
    return tree_oid


def publish_to_mirror(
    tree: dict[str, Path | bytes],
    mirror_dir: Path,
    repo_type: str,
    repo_id: str,
    version: str,
    force: bool,
    force_flag: str = "--force",
) -> str:
    """Commit `tree` to the mirror's git repo (branch main), tag it `version`, check the files out."""
    from filelock import FileLock

    repo = mirror_repo_path(mirror_dir, repo_type, repo_id)
    repo.parent.mkdir(parents=True, exist_ok=True)
    label = f"{repo_type} {repo_id}"
    with FileLock(str(repo.parent / f".{repo.name}.publish.lock")):  # released by the OS if we are killed
        ensure_mirror_repo(repo)
        clear_stale_git_locks(repo)
        tree_oid = write_tree(repo, tree, label)
        fault_point("publish_objects_written")
        with progress(total=3, unit="step", desc=f"git commit {label}") as bar:
            tagged = rev_parse(repo, f"refs/tags/{version}")
            if tagged and rev_parse(repo, f"refs/tags/{version}^{{tree}}") == tree_oid:
                sync_working_tree(repo)
                return f"{label}@{version}: already published, unchanged"
            if tagged and not force:
                raise UserInputError(
                    f"{label}: version {version} exists with other content; use a new --version, or {force_flag} to "
                    "move it"
                )
            head = rev_parse(repo, "refs/heads/main")
            if head and rev_parse(repo, "refs/heads/main^{tree}") == tree_oid:
                commit = head  # committed by a publish that stopped before tagging
            else:
                commit = git(repo, "commit-tree", tree_oid, *(["-p", head] if head else []), "-m", f"Publish {version}")
                git(repo, "update-ref", "-m", f"publish {version}", "refs/heads/main", commit, head or "")
            fault_point("publish_committed")
            bar.update(1)
            git(repo, "update-ref", "-m", f"publish {version}", f"refs/tags/{version}", commit, tagged or "")
            fault_point("publish_tagged")
            bar.update(1)
            sync_working_tree(repo)
            bar.update(1)
    return f"{label}@{version}: published to {repo}"


def sync_working_tree(repo: Path) -> None:
    """The repo's checkout shows branch main (for people and `git clone`; olah reads the objects)."""
    if rev_parse(repo, "refs/heads/main"):
        git(repo, "reset", "-q", "--hard", "refs/heads/main")


# -- Hub ---------------------------------------------------------------------------------------------------------


def transport_errors() -> tuple[type[BaseException], ...]:
    """The network failures of the HTTP client huggingface_hub runs on (httpx2 in 2.x, httpx in 1.x)."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


@contextmanager
def hub_errors(endpoint: str, what: str):
    """What goes wrong talking to the Hub, as one line that says what to do."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        first = (str(error).strip().splitlines() or [""])[0]
        if status == 401:
            raise UserInputError(
                f"{endpoint} refused the token ({what}): run `hf auth login` with a token that can "
                "write, or set HF_TOKEN, then publish again"
            ) from None
        if status == 403:
            raise UserInputError(
                f"{endpoint} refused {what} (403: {first}); the token needs write access to that namespace"
            ) from None
        raise UserInputError(
            f"{endpoint} answered {status} to {what} ({first}); re-run the same command to finish"
        ) from None
    except transport_errors() as error:
        raise UserInputError(
            f"cannot reach {endpoint} ({what}: {type(error).__name__}: {error}); check the network, "
            "proxy or HF_ENDPOINT, or publish with --target mirror; a re-run finishes the publish"
        ) from None


def check_hub_access(endpoint: str | None) -> None:
    """Before anything is uploaded: online mode, a token, and an endpoint that answers and accepts the token."""
    from huggingface_hub import HfApi, constants, get_token

    endpoint = endpoint or constants.ENDPOINT
    if constants.HF_HUB_OFFLINE:
        raise UserInputError(
            f"--target hub: HF_HUB_OFFLINE is set, so nothing may reach {endpoint}; unset it "
            "(HF_HUB_OFFLINE=0) on a machine with network access, or publish with --target mirror"
        )
    if not get_token():
        raise UserInputError(
            "--target hub: no Hugging Face token; run `hf auth login` or set HF_TOKEN, then publish again"
        )
    with hub_errors(endpoint, "the token check"):
        HfApi(endpoint=endpoint, token=get_token()).whoami()


def publish_to_hub(
    tree: dict[str, Path | bytes],
    repo_type: str,
    repo_id: str,
    version: str,
    *,
    force: bool,
    private: bool,
    endpoint: str | None,
    force_flag: str = "--force",
) -> str:
    """One commit with exactly `tree` (stale files deleted), then the tag. A re-run after an interruption finds
    the commit (same manifest on main) and only tags it."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=endpoint, token=get_token())
    label = f"{repo_type} {repo_id}"
    local = json.loads(tree[MANIFEST])

    def remote_manifest(revision: str) -> dict | None:
        try:
            path = hf_hub_download(
                repo_id, MANIFEST, repo_type=repo_type, revision=revision, endpoint=endpoint, token=get_token()
            )
        except (EntryNotFoundError, RevisionNotFoundError):
            return None
        return json.loads(Path(path).read_text())

    with hub_errors(api.endpoint, f"publishing {label}"), progress(total=3, unit="step", desc=f"upload {label}") as bar:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        refs = api.list_repo_refs(repo_id, repo_type=repo_type)
        tags = {ref.name: ref.target_commit for ref in refs.tags}
        if version in tags:
            if remote_manifest(version) == local:
                return f"{label}@{version}: already published, unchanged"
            if not force:
                raise UserInputError(
                    f"{label}: version {version} exists with other content; use a new --version, or {force_flag} to "
                    "move it"
                )
        bar.update(1)
        main = next((ref.target_commit for ref in refs.branches if ref.name == "main"), None)
        if main and remote_manifest(main) == local:
            commit = main  # uploaded by a publish that stopped before tagging
        else:
            stale = set(api.list_repo_files(repo_id, repo_type=repo_type)) - set(tree) - {".gitattributes"}
            operations = [
                CommitOperationAdd(
                    path_in_repo=name, path_or_fileobj=source if isinstance(source, bytes) else str(source)
                )
                for name, source in sorted(tree.items())
            ]
            operations += [CommitOperationDelete(path_in_repo=name) for name in sorted(stale)]
            commit = api.create_commit(
                repo_id, operations, repo_type=repo_type, commit_message=f"Publish {version}"
            ).oid
        bar.update(1)
        if version in tags:
            api.delete_tag(repo_id, tag=version, repo_type=repo_type)
        api.create_tag(repo_id, tag=version, repo_type=repo_type, revision=commit)
        bar.update(1)
    return f"{label}@{version}: published to {api.endpoint}"


# -- serving the mirror ------------------------------------------------------------------------------------------


def olah_config(mirror_dir: Path, host: str = "127.0.0.1", port: int = 8090) -> str:
    """The olah configuration that serves `mirror_dir` offline."""
    return (
        f'[basic]\nhost = "{host}"\nport = {port}\nmirror-scheme = "http"\nmirror-netloc = "{host}:{port}"\n'
        f"mirrors-path = [{json.dumps(str(Path(mirror_dir).resolve()))}]\n\n[accessibility]\noffline = true\n"
    )


# The user's environment may hold settings that would make a Hub client refuse or bypass a local endpoint.
CLIENT_ENV_CLEARED = (
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_DATASETS_CACHE",
    "HF_XET_CACHE",
    "HF_ASSETS_CACHE",
)


def mirror_client_env(endpoint: str, hf_home: Path) -> dict:
    """Environment for a fresh process whose Hub clients read from `endpoint` (set before they are imported). The
    offline switches are cleared (the endpoint is local, so the process stays offline to the world) and the
    caches live in `hf_home`; no token is sent to the local server."""
    env = {key: value for key, value in os.environ.items() if key not in CLIENT_ENV_CLEARED}
    return {
        **env,
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


@contextmanager
def serve_mirror(mirror_dir: Path, work_dir: Path, timeout_s: float = 60):
    """Run olah on a free 127.0.0.1 port serving `mirror_dir` offline; yields its endpoint, stops it on exit."""
    import socket
    import sys
    import urllib.error
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "olah-serve.toml").write_text(olah_config(mirror_dir, port=port))
    server = subprocess.Popen(
        [sys.executable, "-m", "olah.server", "-c", "olah-serve.toml"],
        cwd=work_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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


# -- the stage ---------------------------------------------------------------------------------------------------


@dataclass
class PublishConfig:
    """Publish the dataset, the LoRA and the re-ID model as versioned repos (Hub or local olah mirror)."""

    output_dir: str = field(default="vehicle-diff-output/publish", metadata={"help": "where the publish report goes"})
    preset: str = field(default="paper", metadata={"help": "paper, toy, tiny, or a YAML file"})
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
    overwrite: bool = field(
        default=False, metadata={"help": "replace an earlier report in --output_dir made for other inputs or settings"}
    )

    def __post_init__(self):
        if self.target not in ("mirror", "hub"):
            raise UserInputError(f"--target {self.target!r}: use mirror or hub")
        if not (self.dataset or self.lora or self.reid):
            raise UserInputError("nothing to publish: give --dataset, --lora and/or --reid")
        for artifact in ARTIFACTS:
            check_repo_id(self.repo_id(artifact), f"--namespace/--{artifact}_repo")
        check_version_tag(self.version)
        if self.target == "mirror" and not shutil.which("git"):
            raise UserInputError("--target mirror needs git on PATH")
        if self.target == "mirror" and Path(self.mirror_dir).exists() and not Path(self.mirror_dir).is_dir():
            raise UserInputError(f"--mirror_dir {self.mirror_dir}: not a folder")
        if self.target == "mirror":
            check_output_path(self.mirror_dir, inputs=self.inputs(), flag="--mirror_dir")
        check_output_path(
            self.output_dir, inputs=[*self.inputs(), *([self.mirror_dir] if self.target == "mirror" else [])]
        )

    def inputs(self) -> list[str]:
        return [getattr(self, artifact) for artifact in ARTIFACTS if getattr(self, artifact)]

    def repo_id(self, artifact: str) -> str:
        return f"{self.namespace}/{getattr(self, artifact + '_repo')}"


def main(argv: list[str] | None = None) -> list[str]:
    return publish(parse_config(PublishConfig, "publish", argv))


def report_job(config: PublishConfig, published: dict[str, dict[str, Path]]) -> Job:
    """`--output_dir` (the report, `olah.toml`) is an output folder like every stage's: fingerprinted by the
    settings and the content of the files published, refused when it is someone else's or made for others."""
    components = {
        "settings": output_settings(config, ignore=("dataset", "lora", "reid", "mirror_dir", "hub_endpoint", "force")),
        "published": {artifact: files_digest(Path(getattr(config, artifact)), files.values())
                      for artifact, files in published.items()},
    }  # fmt: skip
    owned = ["report.txt", "olah.toml", "config.yaml"]
    return Job(
        config.output_dir, "publish", components, owned=owned, overwrite=config.overwrite, inputs=config.inputs()
    )


def publish(config: PublishConfig, *, force_flag: str = "--force") -> list[str]:
    """`force_flag`: how the refusal of a taken version names the way to move it (`run` spells it otherwise)."""
    artifacts = [a for a in ("dataset", "lora", "reid") if getattr(config, a)]
    published = {}
    for artifact in artifacts:  # every input is checked before anything is pushed
        _, patterns, required = ARTIFACTS[artifact]
        published[artifact] = collect_files(Path(getattr(config, artifact)), patterns, required)
    endpoint = config.hub_endpoint or os.environ.get("HF_ENDPOINT")
    if config.target == "hub":
        check_hub_access(endpoint)
    job = report_job(config, published).open()  # the report folder too, before anything is pushed
    # what the cards may link to: the repos published by this run
    alongside = {
        artifact: {"repo_id": config.repo_id(artifact), "folder": str(Path(getattr(config, artifact)).resolve())}
        for artifact in artifacts
    }
    if "lora" in alongside:
        alongside["lora"]["sha256"] = sha256_file(Path(config.lora) / LORA_FILE)
    report = []
    work_dir = Path(tempfile.mkdtemp(prefix="vehicle-diff-publish-"))
    try:
        for artifact in artifacts:
            repo_type = ARTIFACTS[artifact][0]
            folder, repo_id = Path(getattr(config, artifact)), config.repo_id(artifact)
            tree = build_tree(
                artifact, folder, repo_id, config.version, work_dir=work_dir, alongside=alongside, target=config.target
            )
            check_no_local_paths(tree, local_prefixes(folder, Path(config.mirror_dir)), repo_id)
            if config.target == "mirror":
                report.append(
                    publish_to_mirror(
                        tree, Path(config.mirror_dir), repo_type, repo_id, config.version, config.force, force_flag
                    )
                )
            else:
                report.append(
                    publish_to_hub(
                        tree,
                        repo_type,
                        repo_id,
                        config.version,
                        force=config.force,
                        private=config.private,
                        endpoint=endpoint,
                        force_flag=force_flag,
                    )
                )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    out_dir = job.out_dir
    if config.target == "mirror":
        with atomic_path(out_dir / "olah.toml") as tmp:
            tmp.write_text(olah_config(Path(config.mirror_dir)))
        report.append(
            f"serve the mirror offline: olah-cli -c {out_dir / 'olah.toml'}; then HF_ENDPOINT=http://127.0.0.1:8090 "
            f"and load_dataset('{config.repo_id('dataset')}', revision='{config.version}')"
        )
    with atomic_path(out_dir / "report.txt") as tmp:
        tmp.write_text("\n".join(report) + "\n")
    save_config(config, out_dir / "config.yaml", stage="publish")
    job.mark_done({"version": config.version, "repos": [config.repo_id(a) for a in artifacts]})
    print("\n".join(report))
    return report


if __name__ == "__main__":
    from vehicle_diff.cli import run_main

    run_main(main)
