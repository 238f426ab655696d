"""`type = "sftp"`: a directory on an SSH server, through asyncssh.

SFTP has no data connection, so none of FTP's mode problems. The publish contract is
FTP's: a temporary name, written by many requests in flight (the measured reason for
asyncssh, see bench/sftp_throughput.py), posix-rename where the server offers it, the
size checked, the manifest last. A broken upload or download resumes from the size
the other side holds. The server's host key must match `host_key` or `known_hosts`:
an unknown or changed key is refused, and its fingerprint printed to be pinned.

asyncssh runs on an event loop in a thread of its own; every method here is
synchronous, as the seam is, and a cancel request closes the connection at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import structlog

with warnings.catch_warnings():
    # asyncssh (and pyOpenSSL, which it imports where installed) name DSA keys at
    # import; cryptography 51 warns at each (10 blocks per command in cron mail and
    # the journal). No DSA key is used: only this warning, only during this import.
    warnings.filterwarnings("ignore", "DSA is deprecated")
    import asyncssh

from backupagent.config import Config, SftpDestination
from backupagent.destinations.base import (
    Capped,
    CheckStep,
    DestinationError,
    Hooks,
    PartialFile,
    Retrying,
    Unreadable,
    timed_step,
    write_test,
)
from backupagent.diagnosis.common import Category, Diagnosis, ProbeResult
from backupagent.retention import temp_name
from backupagent.workers import Cancelled, Worker

T = TypeVar("T")

BLOCK = 128 << 10  # bytes per SFTP read or write request (OpenSSH takes up to 255 KiB)
IN_FLIGHT = 32  # requests outstanding at once: the window that makes SFTP fast
MAX_NAMES = 1_000_000  # a listing of more names is refused
MAX_LISTING_BYTES = 64 << 20  # ... or of more bytes of names (as FTP's)
# Every request waits `timeout` for its answer; a listing, however many READDIR replies
# it takes, gets this many times `timeout` in all: a server that trickles a name at a
# time cannot hold a run for MAX_NAMES timeouts.
LISTING_TIMEOUTS = 10
MAX_REASON = 300  # characters of a server's error text kept (it reaches the advice)
# AES-GCM first: with AES-NI it is what lets asyncssh keep up with OpenSSH (the bench)
CIPHERS = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com"


class Kind(StrEnum):
    """Where an SFTP failure surfaced (for diagnosis and retries)."""

    CONNECT = "connect"  # no TCP connection, or no SSH greeting
    HOST_KEY = "host_key"  # the server's key is not the one pinned or known
    AUTH = "auth"  # the key or password was refused
    PERMISSION = "permission"  # the server refused a file operation
    NOT_FOUND = "not_found"
    LOST = "lost"  # the connection broke or stalled after login
    SERVER = "server"  # another SFTP error status
    OTHER = "other"


TRANSIENT = frozenset({Kind.CONNECT, Kind.LOST})


@dataclass(frozen=True)
class Failure:
    kind: Kind
    detail: str
    fingerprint: str | None = None  # the key the server presented (HOST_KEY)


def diagnose(failure: Failure, settings: SftpDestination) -> Diagnosis:
    """What an SFTP failure means and what to change (pure)."""
    where = f"{settings.user}@{settings.host}:{settings.port}"
    match failure.kind:
        case Kind.HOST_KEY:
            pinned = settings.host_key or (
                f"a key in {settings.known_hosts}" if settings.known_hosts else None
            )
            what = (
                f"the SSH server {where} presented a host key that is not the one expected"
                if pinned
                else f"the SSH server {where} is not known yet: its host key is not pinned"
            )
            evidence = [f"the server's host key: {failure.fingerprint}"]
            if pinned:
                evidence.append(f"expected: {pinned}")
            return Diagnosis(
                Category.HOST_KEY,
                what,
                tuple(evidence),
                "compare the fingerprint with the server's own (its admin runs "
                "`ssh-keygen -l -f /etc/ssh/ssh_host_ed25519_key.pub`); if they match, set "
                f'host_key = "{failure.fingerprint}"'
                + (" (the key changed: find out why first)" if pinned else ""),
                keys=("host_key", "known_hosts"),
            )
        case Kind.AUTH:
            key = "key_file" if settings.key_file else settings.password_key
            return Diagnosis(
                Category.LOGIN,
                f"the SSH server {where} refused the login",
                (failure.detail,),
                "check `user` and the key or password; with a key, its public half must be "
                "in that user's ~/.ssh/authorized_keys on the server",
                keys=("user", key),
            )
        case Kind.CONNECT:
            return Diagnosis(
                Category.HOST,
                f"no SSH connection to {settings.host}:{settings.port}",
                (failure.detail,),
                "check `host` and `port`, and that this host may reach it (firewall)",
                keys=("host", "port"),
            )
        case Kind.PERMISSION | Kind.NOT_FOUND:
            return Diagnosis(
                Category.PATH,
                f"the SSH server refused a file operation in {settings.directory}",
                (failure.detail,),
                "check `directory` and what this user may write there",
                keys=("directory",),
            )
        case Kind.LOST:
            return Diagnosis(
                Category.CONTROL_LOST,
                f"the SSH connection to {where} broke or stalled (after the retries)",
                (failure.detail,),
                "check the server and the network; raise `timeout` or `retries` for a "
                "slow or flaky link",
                keys=("timeout", "retries"),
            )
    return Diagnosis(
        Category.SERVER_ERROR,
        f"the SSH server {where} failed an SFTP request",
        (failure.detail,),
        "for the server's admin (a full disk or quota often reads as this), quoting the error",
        keys=("directory",),
    )


class SftpFailed(DestinationError):
    def __init__(self, failure: Failure, settings: SftpDestination) -> None:
        super().__init__(failure.detail)
        self.failure = failure
        self.settings = settings

    def explain(self) -> tuple[Diagnosis, ProbeResult | None]:
        return diagnose(self.failure, self.settings), None


class _Client(asyncssh.SSHClient):
    """Host key validation against a pinned fingerprint; remembers what was seen."""

    def __init__(self, pinned: str | None) -> None:
        self.pinned = pinned
        self.seen: str | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: Any) -> bool:
        self.seen = key.get_fingerprint("sha256")
        return self.pinned is not None and self.seen == self.pinned


def _reason(exc: BaseException) -> str:
    """The server's words for an error, bounded (they are quoted in the advice)."""
    reason = str(getattr(exc, "reason", "") or exc)
    return reason if len(reason) <= MAX_REASON else reason[:MAX_REASON] + "..."


def _classify(exc: BaseException, client: _Client | None, timeout: float) -> Failure:
    seen = client.seen if client else None
    match exc:
        case asyncssh.HostKeyNotVerifiable():
            return Failure(Kind.HOST_KEY, f"host key not verifiable ({seen})", seen)
        case asyncssh.PermissionDenied():
            return Failure(Kind.AUTH, f"login refused: {_reason(exc)}")
        case asyncssh.SFTPPermissionDenied():
            return Failure(Kind.PERMISSION, f"permission denied: {_reason(exc)}")
        case asyncssh.SFTPNoSuchFile():
            return Failure(Kind.NOT_FOUND, f"no such file: {_reason(exc)}")
        case asyncssh.SFTPConnectionLost() | asyncssh.ConnectionLost():
            return Failure(Kind.LOST, f"the connection was lost: {_reason(exc)}")
        case asyncssh.SFTPError():
            return Failure(Kind.SERVER, f"SFTP error {exc.code}: {_reason(exc)}")
        case asyncssh.DisconnectError():
            return Failure(Kind.LOST, f"disconnected: {_reason(exc)}")
        case TimeoutError() | asyncio.TimeoutError():
            return Failure(Kind.LOST, f"timed out after {timeout:g}s")
        case ConnectionRefusedError() | OSError():
            return Failure(Kind.CONNECT, str(exc.strerror or exc).lower())
    return Failure(Kind.OTHER, f"{type(exc).__name__}: {exc}")


_ERRORS: tuple[type[BaseException], ...] = (asyncssh.Error, OSError, asyncio.TimeoutError)


class _Loop:
    """An asyncio loop on a daemon thread; `run` waits for a coroutine from outside."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.worker = Worker("sftp-loop", self.loop.run_forever).start()

    def run(self, coroutine: Coroutine[Any, Any, T], cancel: threading.Event | None) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        # waited on apart from its result: the coroutine's own TimeoutError (a request
        # not answered within `timeout`) is the same class as result()'s "not yet"
        while not concurrent.futures.wait([future], 0.2).done:
            if cancel is not None and cancel.is_set():
                future.cancel()
                raise Cancelled("the run was stopped")
        try:
            return future.result()
        except asyncio.CancelledError:
            raise Cancelled("the run was stopped") from None

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.worker.wait()
        self.loop.close()


class Sftp:
    """One job's SFTP destination for the length of one action."""

    def __init__(
        self,
        name: str,
        settings: SftpDestination,
        hooks: Hooks | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.retention = settings
        self.hooks = hooks or Hooks()
        self.cancel = cancel
        self.log = structlog.get_logger("backupagent.sftp")
        self._loop: _Loop | None = None
        self._conn: Any = None
        self._sftp: Any = None
        self._client: _Client | None = None
        self._create_directory = True  # survey: look, make nothing
        self.moved = False  # data moved in this action: the server works
        self.written: list[str] = []

    # --- the seam ---------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "destination": self.name,
            "server": f"{self.settings.host}:{self.settings.port}",
            "directory": self.settings.directory,
            "protocol": "sftp",
        }

    def check(self) -> None:
        self._call("login", self._connected)

    def names(self) -> list[str]:
        return self._call("listing", self._listing)

    def survey(self) -> list[str] | None:
        async def look() -> list[str] | None:
            sftp = await self._connected()
            if not await self._bounded(sftp.isdir(self._path(""))):
                return None
            return await self._listing()

        self._create_directory = False
        try:
            return self._call("listing", look)
        finally:
            self._drop()  # a run's connection makes the directory
            self._create_directory = True

    async def _listing(self) -> list[str]:
        """Read a READDIR reply at a time, refused past MAX_NAMES or MAX_LISTING_BYTES:
        a server cannot make this side hold more."""
        sftp = await self._connected()
        names: list[str] = []
        held = 0
        timeout = self.settings.timeout
        deadline = asyncio.get_running_loop().time() + LISTING_TIMEOUTS * timeout
        entries = sftp.scandir(self._path("")).__aiter__()
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"the listing took over {LISTING_TIMEOUTS * timeout:g}s")
            try:
                entry = await asyncio.wait_for(entries.__anext__(), min(timeout, left))
            except StopAsyncIteration:
                break
            name = entry.filename.decode("utf-8", "surrogateescape")
            held += len(name)
            if len(names) >= MAX_NAMES or held > MAX_LISTING_BYTES:
                raise DestinationError(
                    f"a listing of over {MAX_NAMES} names or {MAX_LISTING_BYTES} bytes, refused"
                )
            if name not in (".", ".."):
                names.append(name)
        return names

    def publish_file(
        self, path: Path, name: str, sha256: str, progress: Callable[[int], None] | None = None
    ) -> None:
        temp = temp_name(name)
        self._will_write(temp, name)
        size = path.stat().st_size

        async def send(attempt: int) -> None:
            sftp = await self._connected()
            held = 0
            if attempt:
                held = await self._size_or_none(temp) or 0
                if held > size:
                    held = 0
                if held:
                    self.log.info("resuming upload", name=temp, offset=held, of=size)
            await self._write(path, temp, held, progress)
            await self._rename(temp, name)
            stored = (await self._bounded(sftp.stat(self._path(name)))).size
            if stored != size:
                raise DestinationError(
                    f"size check failed: the server reports {stored} bytes for {name}, "
                    f"{size} were sent"
                )
            self.log.info("size verified", name=name, size=size)

        self._call_attempts(f"upload of {name}", send)

    def publish_bytes(self, data: bytes, name: str) -> None:
        temp = temp_name(name)
        self._will_write(temp, name)

        async def send() -> None:
            await self._connected()
            async with self._opened(temp, "wb") as remote:
                await self._bounded(remote.write(data, 0))
            await self._rename(temp, name)

        self._call("manifest upload", send)

    def commit(self) -> None:
        self.written.clear()

    def rollback(self) -> None:
        """One attempt, bounded by `timeout`: delete what this action wrote."""
        names, self.written = self.written, []
        if not names:
            return
        self.log.info("removing incomplete upload", names=names)

        async def remove_all() -> None:
            await asyncio.wait_for(self._delete(names), self.settings.timeout)

        try:
            self._drop()
            self._loop_running().run(remove_all(), None)
        except (*_ERRORS, DestinationError):  # type: ignore[misc]
            self.log.warning("could not remove incomplete upload from the server", names=names)

    def delete(self, names: list[str]) -> None:
        self._call("delete", lambda: self._delete(names))

    def read(self, name: str, limit: int) -> bytes:
        sink = Capped(limit)

        async def fetch() -> bytes:
            await self._read_into(name, sink.reset(), 0, limit + 1)
            return bytes(sink.data)

        return self._call(f"download of {name}", fetch)

    def download(self, name: str, target: Path, size: int) -> str:
        partial = PartialFile(target, size, name)

        async def fetch(_attempt: int) -> None:
            appending = partial.attempt()
            if appending is None:
                return
            with appending:
                if appending.offset:
                    self.log.info("resuming download", name=name, offset=appending.offset)
                await self._read_into(name, appending, appending.offset, appending.room + 1)
                if not appending.complete:
                    raise asyncssh.ConnectionLost(
                        f"the server ended {name} at byte {size - appending.room} of {size}"
                    )

        self._call_attempts(f"download of {name}", fetch)
        return partial.finish()

    def close(self) -> None:
        conn, self._conn, self._sftp = self._conn, None, None
        if self._loop is None:
            return
        if conn is not None:

            async def closed() -> None:
                conn.close()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(conn.wait_closed(), 2)

            with contextlib.suppress(*_ERRORS):
                self._loop.run(closed(), None)
        self._loop.close()
        self._loop = None

    # --- connection and retries -------------------------------------------------------

    def _loop_running(self) -> _Loop:
        if self._loop is None:
            self._loop = _Loop()
        return self._loop

    async def _connected(self) -> Any:
        if self._sftp is not None:
            return self._sftp
        s = self.settings
        password = s.read_password()
        self._client = _Client(s.host_key)
        options: dict[str, Any] = {
            "username": s.user,
            # an empty trusted list (not None) makes asyncssh ask _Client about every key
            "known_hosts": str(s.known_hosts) if s.known_hosts else ([], [], []),
            "client_keys": [str(s.key_file)] if s.key_file else None,
            "password": password,
            "encryption_algs": CIPHERS,
            "connect_timeout": s.connect_timeout,
            "login_timeout": s.connect_timeout + s.timeout,
            "keepalive_interval": 30,
            "agent_path": None,
            "config": None,
            "preferred_auth": "publickey" if s.key_file else "password,keyboard-interactive",
        }
        client = self._client
        self._conn, _ = await asyncssh.create_connection(lambda: client, s.host, s.port, **options)
        self._sftp = await asyncio.wait_for(self._conn.start_sftp_client(), s.timeout)
        if self._create_directory:
            await self._make_directory()
        return self._sftp

    async def _make_directory(self) -> None:
        directory = self.settings.directory
        if directory not in ("", "."):
            await asyncio.wait_for(
                self._sftp.makedirs(directory, exist_ok=True), self.settings.timeout
            )

    def _drop(self) -> None:
        """Close the connection (a fresh one for whatever comes next)."""
        conn, self._conn, self._sftp = self._conn, None, None
        if conn is not None and self._loop is not None:
            conn.abort()

    def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        return self._call_attempts(what, lambda _attempt: op())

    def _call_attempts(self, what: str, op: Callable[[int], Awaitable[T]]) -> T:
        """`op(attempt)` with retries of transient failures on a fresh connection, by
        the policy FTP uses too (base.Retrying)."""
        s = self.settings
        retrying = Retrying(s, self.cancel, self.log, "SFTP")
        loop = self._loop_running()
        while True:
            try:
                return loop.run(_awaited(op(retrying.attempt)), self.cancel)
            except Cancelled:
                self._drop()
                raise
            except _ERRORS as exc:
                failure = _classify(exc, self._client, s.timeout)
                self._drop()
                if not retrying.again(what, failure.kind in TRANSIENT, self.moved, failure.detail):
                    if self.cancel is not None and self.cancel.is_set():
                        raise Cancelled("the run was stopped") from None
                    raise SftpFailed(failure, s) from None

    # --- SFTP operations --------------------------------------------------------------

    def _path(self, name: str) -> bytes:
        if "/" in name or name in (".", "..") or "\0" in name:
            raise DestinationError(f"refusing the file name {name!r}")
        base = self.settings.directory.rstrip("/") or "/"
        joined = name if base == "." else (f"{base}/{name}" if name else base)
        return joined.encode("utf-8", "surrogateescape")

    async def _bounded(self, op: Awaitable[T]) -> T:
        """One request's answer, within `timeout`: no server can hang a run."""
        return await asyncio.wait_for(op, self.settings.timeout)

    @contextlib.asynccontextmanager
    async def _opened(self, name: str, mode: str) -> AsyncIterator[Any]:
        """A remote file, opened and closed each within `timeout` (a failure inside is
        the one said: closing after it may fail too)."""
        remote = await self._bounded(self._sftp.open(self._path(name), mode))
        try:
            yield remote
        except BaseException:
            with contextlib.suppress(*_ERRORS):
                await self._bounded(remote.close())
            raise
        await self._bounded(remote.close())

    async def _size_or_none(self, name: str) -> int | None:
        try:
            return int((await self._bounded(self._sftp.stat(self._path(name)))).size)
        except asyncssh.SFTPNoSuchFile:
            return None

    async def _write(
        self, path: Path, name: str, offset: int, progress: Callable[[int], None] | None
    ) -> None:
        """`path` from `offset` on, IN_FLIGHT requests of BLOCK bytes at a time; each
        request must be answered within `timeout`."""
        timeout = self.settings.timeout
        # resuming: open without truncating and write on from `offset`
        async with self._opened(name, "r+b" if offset else "wb") as remote:
            slots = asyncio.Semaphore(IN_FLIGHT)
            pending: set[asyncio.Task[Any]] = set()
            failed: list[BaseException] = []

            async def put(block: bytes, at: int) -> None:
                try:
                    await asyncio.wait_for(remote.write(block, at), timeout)
                    self.moved = True
                    if progress:
                        progress(len(block))
                except BaseException as exc:
                    failed.append(exc)
                finally:
                    slots.release()

            with path.open("rb") as source:
                source.seek(offset)
                at = offset
                while not failed and (block := source.read(BLOCK)):
                    await slots.acquire()
                    task = asyncio.ensure_future(put(block, at))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    at += len(block)
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            if failed:
                raise failed[0]

    async def _rename(self, old: str, new: str) -> None:
        """posix-rename (atomic, replaces) where offered; else remove, then rename.
        A retry after a lost connection may find it done already."""
        try:
            await self._bounded(self._sftp.posix_rename(self._path(old), self._path(new)))
        except asyncssh.SFTPOpUnsupported:
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await self._bounded(self._sftp.remove(self._path(new)))
            await self._bounded(self._sftp.rename(self._path(old), self._path(new)))
        except asyncssh.SFTPNoSuchFile:
            if await self._size_or_none(new) is None:
                raise
            self.log.info("rename already done before the connection was lost", name=new)

    async def _delete(self, names: list[str]) -> None:
        await self._connected()
        for name in names:
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await self._bounded(self._sftp.remove(self._path(name)))

    async def _read_into(
        self, name: str, sink: Callable[[bytes], None], offset: int, most: int
    ) -> None:
        """Read `name` from `offset` into `sink`, at most `most` bytes (the sink refuses
        more than it may hold), each request answered within `timeout`."""
        sftp = await self._connected()
        try:
            remote = await self._bounded(sftp.open(self._path(name), "rb"))
        except asyncssh.SFTPError as exc:
            if isinstance(exc, asyncssh.SFTPNoSuchFile | asyncssh.SFTPPermissionDenied):
                raise Unreadable(f"{name}: {_reason(exc)}") from None
            raise
        try:
            at, end = offset, offset + most
            while at < end:
                want = min(BLOCK * 16, end - at)
                block = await self._bounded(remote.read(want, at))
                if not block:
                    return
                self.moved = True
                sink(block)
                at += len(block)
        finally:
            with contextlib.suppress(*_ERRORS):
                await self._bounded(remote.close())

    def _will_write(self, *names: str) -> None:
        self.written.extend(n for n in names if n not in self.written)


async def _awaited(op: Awaitable[T]) -> T:
    """`op` as a coroutine (run_coroutine_threadsafe takes nothing else)."""
    return await op


def open_for_job(
    config: Config,
    job: str,
    name: str,
    hooks: Hooks | None = None,
    cancel: threading.Event | None = None,
) -> Sftp:
    settings = config.destinations[name]
    assert isinstance(settings, SftpDestination)
    return Sftp(name, settings, hooks, cancel)


def checkup(config: Config, job: str, name: str) -> list[CheckStep]:
    """`diagnose` for SFTP: connect and host key, login, the directory, a write test."""
    settings = config.destinations[name]
    assert isinstance(settings, SftpDestination)
    quick = settings.model_copy(update={"retries": 0})
    destination = Sftp(name, quick)
    steps: list[CheckStep] = []
    try:

        def login() -> str:
            try:
                destination.check()
            except SftpFailed as exc:  # the advice belongs on the report: what to set
                diagnosis, _ = exc.explain()
                raise DestinationError(f"{diagnosis.what}: {exc}. {diagnosis.advice}") from None
            seen = destination._client.seen if destination._client else None
            return f"host key {seen} accepted; logged in as {settings.user}"

        steps.append(timed_step("connect, host key and login", login))
        if not steps[-1].ok:
            return steps

        def listing() -> str:
            return f"{len(destination.names())} entries in {settings.directory}"

        steps.append(timed_step("list the directory", listing))
        steps.append(timed_step("write test", lambda: write_test(destination)))
        return steps
    finally:
        destination.close()
