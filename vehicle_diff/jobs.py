"""The job layer every stage that writes outputs goes through: safe output folders, a fingerprinted plan,
cooperating workers, self-validating shards, a deterministic merge and a done-marker written last.

An output folder belongs to one stage. Its first file is `job.json` (the stage, the fingerprint of everything
the outputs depend on, and the parts it was computed from); its last is `done.json` (the same fingerprint).
A folder that holds anything else and no `job.json` of this stage is never written into. A stage declares the
files it writes as patterns (`images/*/*.png`, `checkpoint-*/**`); `--overwrite` removes exactly the files that
match them, and refuses, naming the file, when a folder the stage writes into holds a file of someone else.
The only temp files it ever cleans up carry `atomic_path`'s own name pattern and a dead writer.

Work is cut into fixed batches. A worker claims a batch with an exclusive claim file (host, PID, lease) taken
under the folder's lock, writes the batch's files, then its record shard (temp file + rename). A shard ends
with a footer that carries its record count, checksum and the hashes of its side files; a shard whose footer
does not match, or whose ids differ from the plan's, is named, removed and redone. The workers of one
`accelerate launch`, several hand-started invocations or a SLURM array on a shared filesystem all share the
work this way; a dead worker's claim is taken over at once on the same host (its PID is gone) and by other
hosts when its lease expires.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserInputError
from .faults import fault_point
from .io import TEMP_NAME, atomic_path, sha256_file

JOB_FILE = "job.json"
DONE_FILE = "done.json"
PLAN_FILE = "plan.json"
LOCK_FILE = ".lock"
CLAIMS_DIR = ".claims"
SHARD_GLOB = "batch-*.jsonl"
FOOTER_KEY = "__shard__"
CLAIM_LEASE_S = float(os.environ.get("VEHICLE_DIFF_CLAIM_LEASE_S", 6 * 3600))
POLL_S = 0.5
# settings that never change what a stage writes
NOT_OUTPUT_SETTINGS = frozenset(
    {"output_dir", "preset", "overwrite", "dry_run", "resume_from_checkpoint", "dataloader_num_workers"}
)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- fingerprints


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint_of(components: dict) -> str:
    return hashlib.sha256(canonical_json(components).encode()).hexdigest()


def output_settings(config, ignore: Iterable[str] = ()) -> dict:
    """The fields of a stage config that change its outputs (input paths are replaced by content digests)."""
    skip = NOT_OUTPUT_SETTINGS | set(ignore)
    return {name: value for name, value in dataclasses.asdict(config).items() if name not in skip}


def files_digest(root: Path, files: Iterable[Path]) -> str:
    """sha256 over the relative names and contents of `files` (sorted): what a folder of inputs holds."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in files):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def folder_digest(root: Path, ignore: Iterable[str] = ()) -> str:
    """sha256 of every regular file under `root` except hidden ones and the names in `ignore`."""
    root, ignore = Path(root), set(ignore)
    files = [
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") or part in ignore for part in p.relative_to(root).parts)
    ]
    return files_digest(root, files)


def changed_parts(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Readable `key: old -> new` lines for the leaves that differ between two component dicts."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines += changed_parts(a, b, f"{prefix}{key}.")
        elif a != b:
            short = lambda v: (repr(v)[:60] + "...") if len(repr(v)) > 63 else repr(v)  # noqa: E731
            lines.append(f"{prefix}{key}: {short(a)} -> {short(b)}")
    return lines


# ---------------------------------------------------------------- output folders


def check_output_path(
    out_dir: str | Path, *, inputs: Iterable[str | Path | None] = (), flag: str = "--output_dir"
) -> Path:
    """Refuse an output that would destroy or mix with something: `.`, `..`, `/`, the home folder, a folder that
    holds this stage's inputs, a file, or a path that cannot be created. Returns the resolved path."""
    path = Path(out_dir).expanduser()
    resolved = path.resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if resolved == Path(resolved.anchor) or resolved == home or cwd.is_relative_to(resolved):
        raise UserInputError(
            f"{flag} {out_dir}: refusing to use {resolved} as an output folder; give a new "
            "folder of its own, e.g. out/<stage>"
        )
    for source in inputs:
        if source and Path(source).expanduser().resolve().is_relative_to(resolved):
            raise UserInputError(f"{flag} {out_dir}: it holds this stage's input {source}; choose another folder")
    if resolved.exists() and not resolved.is_dir():
        raise UserInputError(f"{flag} {out_dir}: is a file, not a folder; choose a folder path")
    existing = next((parent for parent in [resolved, *resolved.parents] if parent.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserInputError(f"{flag} {out_dir}: {existing} is a file, so the folder cannot be made there")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(f"{flag} {out_dir}: {existing} is not writable; choose a folder you can write to")
    return resolved


def die_with_parent(parent_pid: int) -> None:
    """Called first in a worker: the kernel kills it when the process that started it dies (Linux), so a killed
    command leaves nothing running that still writes into its output. A worker of `parent_pid`'s forkserver dies
    with the server, which exits when `parent_pid` does."""
    import ctypes
    import signal

    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # started by a forkserver, or the parent died before that took effect
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            os._exit(1)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def is_complete(out_dir: str | Path, stage: str, fingerprint: str) -> bool:
    """True when `out_dir` holds a finished output of `stage` made with exactly this fingerprint."""
    done = read_json(Path(out_dir) / DONE_FILE)
    return bool(done) and done.get("stage") == stage and done.get("fingerprint") == fingerprint


def claim_is_alive(claim: dict, now: float) -> bool:
    """A claim holds while its process lives (same host) or its lease runs (another host)."""
    if claim.get("host") == socket.gethostname():
        try:
            os.kill(int(claim["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, KeyError):
            return True
        return True
    return float(claim.get("lease_until", 0)) > now


def temp_file_writer(path: Path) -> dict | None:
    """The host and PID that `atomic_path` put into a temp file's name, as a claim-like dict; None for any other
    name (a user's `.draft.tmp` is not ours)."""
    match = TEMP_NAME.fullmatch(Path(path).name)
    if match is None:
        return None
    return {
        "host": match["host"],
        "pid": int(match["pid"]),
        "lease_until": Path(path).stat().st_mtime + CLAIM_LEASE_S,
    }


def is_own_temp(path: Path) -> bool:
    return TEMP_NAME.fullmatch(Path(path).name) is not None


def matches(relative: str, pattern: str) -> bool:
    """Whether a slash-separated relative path matches a pattern part by part (`*` stays inside one part,
    `**` spans any number of parts), so `images/*/*.png` never matches `images/notes.txt`."""
    return _match_parts(relative.split("/"), pattern.split("/"))


def _match_parts(parts: list[str], pattern: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match_parts(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _match_parts(parts[1:], pattern[1:])


def owned_folders(patterns: Iterable[str]) -> list[str]:
    """The top-level folders a stage writes into (the first part of its patterns that have several)."""
    return sorted({pattern.split("/")[0] for pattern in patterns if "/" in pattern})


def entries(out_dir: Path) -> Iterator[str]:
    """Every file and link under `out_dir` as a relative slash path (links are not followed)."""
    for folder, subfolders, files in os.walk(out_dir):
        base = Path(folder).relative_to(out_dir)
        for name in files + [d for d in subfolders if (Path(folder) / d).is_symlink()]:
            yield (base / name).as_posix()


def inventory(out_dir: Path, patterns: Iterable[str]) -> tuple[list[str], list[str]]:
    """(the files the stage wrote, the files of someone else inside the folders the stage writes into). A file
    at the top that matches no pattern is someone else's too, but it is left where it is and not listed."""
    patterns = list(patterns)
    folders = owned_folders(patterns)
    own, foreign = [], []
    for relative in sorted(entries(out_dir)):
        inside = "/" in relative and any(fnmatch.fnmatchcase(relative.split("/")[0], f) for f in folders)
        if any(matches(relative, p) for p in patterns) or ((inside or "/" not in relative) and is_own_temp(relative)):
            own.append(relative)
        elif inside:
            foreign.append(relative)
    return own, foreign


def remove_files(out_dir: Path, relatives: Iterable[str], patterns: Iterable[str]) -> None:
    """Remove these files by name, then the folders of the stage's patterns that they leave empty."""
    for relative in relatives:
        (out_dir / relative).unlink(missing_ok=True)
    folders = owned_folders(patterns)
    for folder, _, _ in sorted(os.walk(out_dir), key=lambda item: -len(Path(item[0]).parts)):
        relative = Path(folder).relative_to(out_dir)
        top = relative.parts[0] if relative.parts else None
        if top and any(fnmatch.fnmatchcase(top, f) for f in folders) and not any(Path(folder).iterdir()):
            Path(folder).rmdir()


def refuse_foreign_folder(out_dir: Path, stage: str, flag: str = "--output_dir") -> None:
    """A non-empty folder without this stage's `job.json` is someone else's: never write into it."""
    if not out_dir.is_dir():
        return
    names = sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_FILE and not is_own_temp(p))
    plan = read_json(out_dir / PLAN_FILE)
    if plan and plan.get("stage") == stage:
        names.remove(PLAN_FILE)  # a dry run's plan of this stage
    job = read_json(out_dir / JOB_FILE)
    if names and job is None:
        raise UserInputError(
            f"{flag} {out_dir} already holds files that are not an output of `{stage}` ({', '.join(names[:3])}"
            f"{' ...' if len(names) > 3 else ''}); choose a new or empty folder"
        )
    if job is not None and job.get("stage") != stage:
        raise UserInputError(
            f"{flag} {out_dir} is the output of `{job.get('stage')}`, not `{stage}`; choose another folder"
        )


# ---------------------------------------------------------------- shards


class TornShard(ValueError):
    pass


def shard_path(shards_dir: Path, batch_index: int) -> Path:
    return Path(shards_dir) / f"batch-{batch_index:07d}.jsonl"


def write_shard(shards_dir: Path, batch_index: int, records: list[dict], side_files: Iterable[Path] = ()) -> Path:
    """Records as JSON lines and a footer line with their count, their checksum and the side files' hashes."""
    body = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
    footer = {
        "count": len(records),
        "sha256": hashlib.sha256(body.encode()).hexdigest(),
        "files": {Path(p).name: sha256_file(p) for p in side_files},
    }
    path = shard_path(shards_dir, batch_index)
    with atomic_path(path) as tmp:
        tmp.write_text(body + json.dumps({FOOTER_KEY: footer}, sort_keys=True) + "\n")
    return path


def read_shard(path: Path, expected_ids: list | None = None, id_key: str = "image_id") -> list[dict]:
    """The records of a shard, or TornShard saying what is wrong with it."""
    text = Path(path).read_text()
    body, _, last = text.rstrip("\n").rpartition("\n")
    body = body + "\n" if body else ""
    try:
        footer = json.loads(last)[FOOTER_KEY]
    except (ValueError, KeyError, TypeError):
        raise TornShard("its footer is missing or cut") from None
    if hashlib.sha256(body.encode()).hexdigest() != footer["sha256"]:
        raise TornShard("its checksum does not match its records")
    records = [json.loads(line) for line in body.splitlines()]
    if len(records) != footer["count"]:
        raise TornShard(f"it holds {len(records)} records, its footer says {footer['count']}")
    for name, digest in footer.get("files", {}).items():
        side = Path(path).parent / name
        if not side.is_file() or sha256_file(side) != digest:
            raise TornShard(f"its side file {name} is missing or changed")
    if expected_ids is not None and [r.get(id_key) for r in records] != list(expected_ids):
        raise TornShard("its ids are not the plan's ids for this batch")
    return records


# ---------------------------------------------------------------- the job


class Job:
    """One stage's work in one output folder. See the module docstring for the rules it keeps."""

    def __init__(
        self,
        out_dir: str | Path,
        stage: str,
        components: dict,
        *,
        owned: Iterable[str],
        overwrite: bool = False,
        inputs: Iterable = (),
        shards: str = "records",
        result_settings: dict | None = None,
    ):
        """`components`: what the expensive, resumable work depends on (`job.json`). `result_settings`: cheap
        settings applied afterwards (e.g. the filter's thresholds); they enter only the done-marker's fingerprint.
        `owned`: patterns of the files the stage writes (see `matches`); the job layer adds its own."""
        self.out_dir = check_output_path(out_dir, inputs=inputs)
        self.stage, self.components, self.overwrite = stage, components, overwrite
        self.fingerprint = fingerprint_of(components)
        self.done_fingerprint = done_fingerprint(components, result_settings)
        self.shards_dir = self.out_dir / shards
        self.owned = [*owned, f"{shards}/*", f"{CLAIMS_DIR}/batch-*", DONE_FILE, JOB_FILE, PLAN_FILE]
        self._lock = None
        self._opened = False  # the plan in `job.json` is this job's own (see `check_plan`)
        self._held_claims: set[int] = set()  # batches whose shard a writer thread writes later (see hold_claim)

    # -- the folder

    def _acquire(self, blocking: bool) -> None:
        """One reentrant lock object per job: a second lock on the same file in one process would wait on itself."""
        from filelock import FileLock, Timeout

        if self._lock is None:
            self._lock = FileLock(str(self.out_dir / LOCK_FILE))
        try:
            self._lock.acquire(timeout=-1 if blocking else 0)
        except Timeout:
            raise UserInputError(
                f"{self.out_dir} is in use by another `{self.stage}` run (it holds the folder's lock); "
                "wait for it to finish, or choose another --output_dir"
            ) from None

    def release(self) -> None:
        """Let go of a lock held with `open(hold=True)` (the end of the process lets go of it too)."""
        if self._lock is not None:
            self._lock.release(force=True)

    @contextmanager
    def locked(self):
        """The folder's lock (a file lock, so it also holds between hosts on a filesystem that supports it)."""
        self._acquire(blocking=True)
        try:
            yield
        finally:
            self._lock.release()

    def open(self, hold: bool = False) -> Job:
        """Claim the folder for this plan: create it, refuse a foreign or different one, remove what a kill
        left half-written. Safe to call from every worker (it runs under the lock). `hold` keeps the lock
        until this process ends, and refuses at once when another process holds it (trainers, `run`)."""
        refuse_foreign_folder(self.out_dir, self.stage)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if hold:
            self._acquire(blocking=False)
        with self.locked():
            refuse_foreign_folder(self.out_dir, self.stage)
            existing = read_json(self.out_dir / JOB_FILE)
            if existing and existing.get("fingerprint") != self.fingerprint:
                self._replace_plan(existing)
                existing = None
            self._remove_partial_writes()
            self._opened = True
            fault_point(f"{self.stage}.opened")
            if not existing:
                with atomic_path(self.out_dir / JOB_FILE) as tmp:
                    tmp.write_text(
                        json.dumps(
                            {"stage": self.stage, "fingerprint": self.fingerprint, "components": self.components},
                            indent=1,
                            sort_keys=True,
                            default=str,
                        )
                    )
        fault_point(f"{self.stage}.claimed")  # the folder is this plan's, job.json written
        return self

    def live_claims(self) -> list[dict]:
        """The claims of workers that are alive now (see `claim_is_alive`)."""
        now, claims = time.time(), []
        for path in sorted((self.out_dir / CLAIMS_DIR).glob("batch-*")):
            claim = read_json(path)
            if claim is not None and claim_is_alive(claim, now):
                claims.append(claim)
        return claims

    def _replace_plan(self, existing: dict) -> None:
        """Another plan's `job.json` is here. Replace it (removing what that plan wrote) with `--overwrite`, or
        without it when that plan wrote nothing yet (a model that failed to load leaves only its plan); never
        while one of its workers is alive, and never a file of someone else inside the stage's folders."""
        live = self.live_claims()
        if live:
            workers = ", ".join(sorted({f"PID {c.get('pid')} on {c.get('host')}" for c in live}))
            raise UserInputError(
                f"--output_dir {self.out_dir} is being written by another `{self.stage}` run ({workers}) with other "
                "settings; wait for it to finish or stop it before replacing its outputs, or choose a new --output_dir"
            )
        own, foreign = inventory(self.out_dir, self.owned)
        plan_only = {JOB_FILE, PLAN_FILE, "config.yaml"}
        work = [r for r in own if r not in plan_only and not r.startswith(f"{CLAIMS_DIR}/") and not is_own_temp(r)]
        if work and not self.overwrite:
            changes = changed_parts(existing.get("components", {}), self.components)
            raise UserInputError(
                f"--output_dir {self.out_dir} holds a {self.stage} output made from other inputs or settings "
                f"(changed: {'; '.join(changes[:4]) or 'the plan'}{' ...' if len(changes) > 4 else ''}). "
                "Re-run with the original settings to resume it, choose a new --output_dir, or pass "
                "--overwrite to replace this stage's outputs there."
            )
        if foreign:
            raise UserInputError(
                f"--output_dir {self.out_dir}: {foreign[0]}{f' (and {len(foreign) - 1} more)' if len(foreign) > 1 else ''}"
                f" is not a file `{self.stage}` wrote, inside a folder it writes; move it out of {self.out_dir}, "
                "then re-run (nothing was removed)"
            )
        remove_files(self.out_dir, own, self.owned)

    def check_plan(self) -> None:
        """Stop this worker when the folder's plan is no longer the one it opened (another run replaced it with
        `--overwrite`): two plans never mix in one folder. A job that did not open the folder (the filter's
        `--rescore_only` decides on the stored plan's scores) has no plan of its own to lose."""
        if not self._opened:
            return
        job = read_json(self.out_dir / JOB_FILE)
        if job is None or job.get("fingerprint") != self.fingerprint:
            raise UserInputError(
                f"--output_dir {self.out_dir}: another `{self.stage}` run replaced this run's plan there with other "
                "settings; this run stopped. Re-run it into a new --output_dir, or with --overwrite once that "
                "run has finished"
            )

    def _remove_partial_writes(self) -> None:
        """Temp files (by `atomic_path`'s own name pattern) of writes a kill interrupted: never renamed, so
        nothing counts them as done. A live worker's temp files and any other name are left alone."""
        now, folders = time.time(), owned_folders(self.owned)
        for relative in entries(self.out_dir):
            if not is_own_temp(relative):  # the name test first: a paper-scale folder holds ~150,000 images
                continue
            top = relative.split("/")[0]
            if "/" in relative and not any(fnmatch.fnmatchcase(top, folder) for folder in folders):
                continue  # not in a folder this stage writes (a user's folder inside the output)
            path = self.out_dir / relative
            writer = temp_file_writer(path) if path.exists() else None
            if writer is not None and not claim_is_alive(writer, now):
                path.unlink(missing_ok=True)

    @property
    def complete(self) -> bool:
        return is_complete(self.out_dir, self.stage, self.done_fingerprint)

    def mark_done(self, summary: dict | None = None) -> None:
        """The last file the stage writes: its fingerprint, so `run` trusts nothing else."""
        self.check_plan()
        with atomic_path(self.out_dir / DONE_FILE) as tmp:
            tmp.write_text(
                json.dumps(
                    {"stage": self.stage, "fingerprint": self.done_fingerprint, "summary": summary or {}},
                    indent=1,
                    sort_keys=True,
                    default=str,
                )
            )

    # -- batches

    def write_shard(self, batch_index: int, records: list[dict], side_files: Iterable[Path] = ()) -> Path:
        path = write_shard(self.shards_dir, batch_index, records, side_files)
        fault_point(f"{self.stage}.shard_written")
        if batch_index in self._held_claims:
            self._held_claims.discard(batch_index)
            (self.out_dir / CLAIMS_DIR / f"batch-{batch_index:07d}").unlink(missing_ok=True)
        return path

    def hold_claim(self, batch_index: int) -> None:
        """Keep the claim of a batch that `batches` yielded until its shard is written (by `write_shard`, maybe on
        another thread after `batches` moved on), so no other worker takes a batch whose files are still being
        written."""
        self._held_claims.add(batch_index)

    def release_held_claims(self) -> None:
        """Give up the held claims whose shard will not be written (a writer failed): the batches are redone."""
        for batch_index in list(self._held_claims):
            self._held_claims.discard(batch_index)
            (self.out_dir / CLAIMS_DIR / f"batch-{batch_index:07d}").unlink(missing_ok=True)

    def valid_batches(
        self, num_batches: int, ids_of: Callable[[int], list] | None, id_key: str = "image_id"
    ) -> set[int]:
        """The batches whose shard is whole; a torn, short or foreign shard is named, removed and redone."""
        done = set()
        for path in sorted(self.shards_dir.glob(SHARD_GLOB)):
            index = int(path.stem.split("-")[1])
            if index >= num_batches:
                warn(f"{path}: not a batch of this plan; removing it")
                path.unlink(missing_ok=True)
                continue
            try:
                read_shard(path, ids_of(index) if ids_of else None, id_key)
            except (TornShard, OSError, ValueError) as error:
                warn(f"{path} is damaged ({error}); removing it, its batch is redone")
                path.unlink(missing_ok=True)
                continue
            done.add(index)
        return done

    def batches(
        self,
        num_batches: int,
        ids_of: Callable[[int], list] | None = None,
        *,
        id_key: str = "image_id",
        order: list[int] | None = None,
    ) -> Iterator[int]:
        """Yield the batches this worker should do, claiming each first; return once every batch is finished
        (waiting for live claims of other workers, taking over dead ones)."""
        claims = self.out_dir / CLAIMS_DIR
        claims.mkdir(exist_ok=True)
        done = self.valid_batches(num_batches, ids_of, id_key)
        order = order if order is not None else list(range(num_batches))
        while True:
            waiting = False
            for index in order:
                if index in done:
                    continue
                if shard_path(self.shards_dir, index).exists():
                    done.add(index)
                    continue
                if not self._claim(claims / f"batch-{index:07d}"):
                    waiting = True
                    continue
                try:
                    if shard_path(self.shards_dir, index).exists():  # finished while we looked
                        done.add(index)
                        continue
                    yield index
                    done.add(index)
                finally:
                    if index not in self._held_claims:
                        (claims / f"batch-{index:07d}").unlink(missing_ok=True)
            if not waiting:
                return
            time.sleep(POLL_S)

    def _claim(self, path: Path) -> bool:
        """Take the batch's claim under the folder lock; a dead holder's claim is taken over."""
        now = time.time()
        with self.locked():
            self.check_plan()
            if path.exists():
                claim = read_json(path) or {}
                if claim_is_alive(claim, now):
                    return False
            with atomic_path(path) as tmp:
                tmp.write_text(
                    json.dumps(
                        {
                            "host": socket.gethostname(),
                            "pid": os.getpid(),
                            "claimed": now,
                            "lease_until": now + CLAIM_LEASE_S,
                        }
                    )
                )
        return True

    def records(self, num_batches: int, ids_of: Callable[[int], list] | None = None, id_key: str = "image_id"):
        """Every record, in batch order, each shard checked again; the plan's ids appear exactly once."""
        self.check_plan()
        seen = set()
        for index in range(num_batches):
            path = shard_path(self.shards_dir, index)
            if not path.exists():
                raise UserInputError(
                    f"{self.out_dir}: batch {index} is unfinished; re-run the same command to finish it"
                )
            try:
                batch = read_shard(path, ids_of(index) if ids_of else None, id_key)
            except TornShard as error:
                path.unlink(missing_ok=True)
                raise UserInputError(
                    f"{path} is damaged ({error}); removed it, re-run the same command to redo it"
                ) from None
            for record in batch:
                key = record.get(id_key)
                if key in seen:
                    raise UserInputError(f"{self.out_dir}: {id_key} {key!r} appears twice; re-run with --overwrite")
                seen.add(key)
                yield record

    def merge(
        self, num_batches: int, out_file: Path, ids_of=None, *, id_key: str = "image_id", rows_per_group: int = 4096
    ) -> int:
        """Stream every shard into one Parquet file (atomically), the same bytes however the work was split."""
        return write_parquet(lambda: self.records(num_batches, ids_of, id_key), out_file, rows_per_group)


def write_parquet(records: Callable[[], Iterable[dict]], out_file: Path, rows_per_group: int = 4096) -> int:
    """Two streaming passes over `records()` (one for the unified schema, so a column null in early rows still
    gets its type), memory bounded by `rows_per_group`; columns sorted by name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def groups(schema=None):
        buffer = []
        for record in records():
            buffer.append(record)
            if len(buffer) >= rows_per_group:
                yield pa.Table.from_pylist(buffer, schema=schema)
                buffer = []
        if buffer:
            yield pa.Table.from_pylist(buffer, schema=schema)

    schemas = [table.schema for table in groups()]
    if not schemas:
        raise UserInputError(f"no records to write into {out_file}")
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    schema = pa.schema(sorted(schema, key=lambda field: field.name))
    count = 0
    with atomic_path(out_file) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for table in groups(schema):
            writer.write_table(table)
            count += table.num_rows
    return count


def staging_name(out_dir: Path, role: str) -> Path:
    """A sibling of `out_dir` (same filesystem, so renames are atomic) that names its writer."""
    return out_dir.parent / f".{out_dir.name}~{socket.gethostname()}~{os.getpid()}~{role}"


def remove_stale_staging(out_dir: Path, stage: str) -> None:
    """Staging folders a killed replace left beside `out_dir`: ours (they hold this stage's `job.json`) and
    their writer is gone."""
    now = time.time()
    for path in out_dir.parent.glob(f".{out_dir.name}~*~*~*"):
        parts = path.name.split("~")
        writer = {
            "host": parts[-3],
            "pid": int(parts[-2]) if parts[-2].isdigit() else -1,
            "lease_until": path.stat().st_mtime + CLAIM_LEASE_S,
        }
        job = read_json(path / JOB_FILE)
        if path.is_dir() and job and job.get("stage") == stage and not claim_is_alive(writer, now):
            shutil.rmtree(path)


def replace_folder(
    out_dir: str | Path,
    stage: str,
    components: dict,
    build: Callable[[Path], dict | None],
    *,
    owned: Iterable[str],
    overwrite: bool = False,
    inputs: Iterable = (),
    flag: str = "--output_dir",
) -> Path:
    """Build a whole output folder in a staging sibling, then swap it in: the folder is always either the old
    complete output or the new one. Only an earlier output of `stage` (its `job.json`) is ever replaced, by the
    same rules as a `Job`: another fingerprint needs `overwrite`, and since the swap replaces the folder whole,
    a file in it that matches none of the `owned` patterns (someone else's) is named and refused."""
    out_dir = check_output_path(out_dir, inputs=inputs, flag=flag)
    check_replaceable(out_dir, stage, components, owned=owned, overwrite=overwrite, flag=flag)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir, stage)
    fingerprint = fingerprint_of(components)
    staging, old = staging_name(out_dir, "staging"), staging_name(out_dir, "old")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        with atomic_path(staging / JOB_FILE) as tmp:
            tmp.write_text(
                json.dumps(
                    {"stage": stage, "fingerprint": fingerprint, "components": components},
                    indent=1,
                    sort_keys=True,
                    default=str,
                )
            )
        summary = build(staging)
        done = {
            "stage": stage,
            "fingerprint": fingerprint_of({"job": fingerprint, "result": {}}),
            "summary": summary or {},
        }
        with atomic_path(staging / DONE_FILE) as tmp:
            tmp.write_text(json.dumps(done, indent=1, sort_keys=True, default=str))
        if out_dir.exists():
            check_replaceable(out_dir, stage, components, owned=owned, overwrite=overwrite, flag=flag)
            out_dir.rename(old)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    if old.exists():
        shutil.rmtree(old)
    return out_dir


def check_replaceable(
    out_dir: Path, stage: str, components: dict, *, owned: Iterable[str], overwrite: bool, flag: str
) -> None:
    """Refuse (before any work) to replace a folder that is not an earlier output of `stage`, one made from
    other inputs or settings without `overwrite`, or one that holds files `stage` did not write."""
    refuse_foreign_folder(out_dir, stage, flag)
    existing = read_json(out_dir / JOB_FILE)
    if existing is None:
        return
    if existing.get("fingerprint") != fingerprint_of(components) and not overwrite:
        changes = changed_parts(existing.get("components", {}), components)
        raise UserInputError(
            f"{flag} {out_dir} holds a {stage} output made from other inputs or settings "
            f"(changed: {'; '.join(changes[:4]) or 'the plan'}{' ...' if len(changes) > 4 else ''}). "
            f"Re-run with the original settings, choose a new {flag}, or pass --overwrite to replace it."
        )
    patterns = [*owned, JOB_FILE, DONE_FILE]
    foreign = [r for r in entries(out_dir) if r != LOCK_FILE and not any(matches(r, p) for p in patterns)]
    if foreign:
        foreign.sort()
        raise UserInputError(
            f"{flag} {out_dir}: {foreign[0]}{f' (and {len(foreign) - 1} more)' if len(foreign) > 1 else ''} is not "
            f"a file `{stage}` wrote, and this folder is replaced whole; move it out of {out_dir}, then re-run "
            "(nothing was changed)"
        )


def done_fingerprint(components: dict, result_settings: dict | None = None) -> str:
    """The fingerprint a finished output's `done.json` carries for these components."""
    return fingerprint_of({"job": fingerprint_of(components), "result": result_settings or {}})


def write_plan(out_dir: str | Path, plan: dict) -> Path:
    """A dry run's plan: printed, and written to `plan.json` in the (otherwise untouched) output folder."""
    out_dir = check_output_path(out_dir)
    refuse_foreign_folder(out_dir, plan["stage"])
    text = json.dumps(plan, indent=2, default=str)
    with atomic_path(out_dir / PLAN_FILE) as tmp:
        tmp.write_text(text + "\n")
    print(text)
    print(f"Dry run: nothing was loaded or rendered; the plan is in {out_dir / PLAN_FILE}.")
    return out_dir


def duplicates(values: Iterable) -> list:
    seen, repeated = set(), []
    for value in values:
        if value in seen and value not in repeated:
            repeated.append(value)
        seen.add(value)
    return repeated
