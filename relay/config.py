"""
Configuration: TOML parsed once, at startup, into frozen dataclasses.

Each side declares its configuration as nested frozen dataclasses (one per
TOML table).  L{load} reads a file, applies command-line overrides and checks
every key against those declarations: an unknown key, a wrong type or an
unparsable endpoint raises L{ConfigError} with one line naming the file, the
key and what was expected.  Below C{tap.py} nothing reads configuration;
objects receive the values they need as arguments.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union

from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.logger import Logger
from twisted.python import usage

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.DOTALL
)


class ConfigError(Exception):
    """
    The configuration cannot be used.  C{str()} is one line for the operator.
    """


@dataclasses.dataclass(frozen=True)
class _Endpoint:
    """
    Marks a string that must parse as a Twisted endpoint description.
    """

    parse: Callable[[Any, str], object]
    expected: str


class _NoReactor:
    """
    Stands in for the reactor while endpoint strings are only being parsed:
    constructing an endpoint stores its reactor and does no I/O.
    """


#: A Twisted server endpoint description, e.g. C{tcp:8080:interface=127.0.0.1}.
ServerEndpoint = Annotated[
    str,
    _Endpoint(
        serverFromString,
        "a Twisted server endpoint string such as 'tcp:8080:interface=127.0.0.1'",
    ),
]

#: A Twisted client endpoint description, e.g. C{tcp:127.0.0.1:5672}.
ClientEndpoint = Annotated[
    str, _Endpoint(clientFromString, "a Twisted client endpoint string such as 'tcp:127.0.0.1:5672'")
]


T = TypeVar("T")


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Annotated:
        return str(tp.__metadata__[0].expected)
    if dataclasses.is_dataclass(tp):
        return "a table"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp)
        return f"a list of {_describe(inner)}"
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(tp: Any, value: Any, where: str) -> Any:
    """
    Check C{value} against type C{tp} and return it in that type.
    """
    origin = typing.get_origin(tp)
    if origin is Annotated:
        endpoint = tp.__metadata__[0]
        if isinstance(value, str):
            try:
                endpoint.parse(_NoReactor(), value)
            except Exception as e:
                raise ConfigError(f"{where}: expected {endpoint.expected}, got {value!r} ({e})") from None
            return value
        raise ConfigError(f"{where}: expected {endpoint.expected}, got {value!r}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin is dict:
        key_type, inner = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {str(k): _convert(inner, v, _key(where, str(k))) for k, v in value.items()}
    if origin is tuple:
        (inner, *_) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
        return tuple(_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _build(tp, value, where)  # type: ignore[arg-type]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, str) and value:
            return Path(value)
    raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")


def _build(cls: type[T], table: Mapping[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in table:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{_key(where, key)}: unknown key (known keys: {known})")
    values = {}
    for name, field in fields.items():
        if name in table:
            values[name] = _convert(hints[name], table[name], _key(where, name))
        elif (
            field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING
        ):
            if dataclasses.is_dataclass(hints[name]):
                values[name] = _build(hints[name], {}, _key(where, name))
            else:
                raise ConfigError(
                    f"{_key(where, name)}: missing; expected {_describe(hints[name])}"
                )
    try:
        return cls(**values)
    except ValueError as e:
        # __post_init__ checks name their own keys.
        raise ConfigError(str(e)) from None


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _set_path(table: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        table = table.setdefault(part, {})
    table[last] = value


def load(cls: type[T], path: Path | str, overrides: Mapping[str, Any] | None = None) -> T:
    """
    Read the TOML file at C{path} into an instance of the dataclass C{cls}.

    @param overrides: dotted keys (C{"edge.listen"}) with values that replace
        the file's, typically from the command line.
    @raise ConfigError: with one line naming the file, the key and what was
        expected.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(table, dotted, value)
    try:
        return _build(cls, table, "")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def config_path(given: str | None, default: str) -> Path:
    """
    The configuration file: the one named on the command line, else
    C{$RELAY_CONFIG}, else the side's default (relative to the working
    directory).
    """
    return Path(given or os.environ.get("RELAY_CONFIG") or default)


class TapOptions(usage.Options):
    """
    A twistd plugin's options: C{--config}, and overrides that each replace
    one key of the configuration file (C{overriding}: option -> key).
    """

    overriding: typing.ClassVar[dict[str, str]] = {}

    def overrides(self) -> dict[str, Any]:
        return {key: self[option] for option, key in self.overriding.items()}


def relative_to(base: Path, path: Path) -> Path:
    """
    Resolve C{path} against C{base} unless it is absolute.
    """
    return path if path.is_absolute() else base / path


# Sections both sides share.


@dataclasses.dataclass(frozen=True)
class LinkConfig:
    """
    The AMQP link to the broker.
    """

    #: amqp://user:password@host:port/vhost, or amqps:// for TLS with
    #: hostname verification.
    url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    #: Seconds between AMQP heartbeats; a silent stall is noticed within
    #: three of them.
    heartbeat: int = 10
    #: Seconds the link may be down before C{/healthz} answers 503 (0:
    #: never).  Serving users while the link is away is what the edge is
    #: for: this is for a link that does not come back.
    unhealthy_after: int = 600
    #: With amqps: a PEM file of the certificate authorities that may sign
    #: the broker's certificate (a private CA, as RabbitMQ deployments
    #: often use); by default the system's trust store.  Relative to the
    #: working directory.  Hostname verification applies either way.
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        if self.ca_file is not None:
            self.trust_root()
        if not self.url.startswith(("amqp://", "amqps://")):
            raise ValueError(f"link.url: expected an amqp:// or amqps:// URL, got {self.url!r}")
        if not 1 <= self.heartbeat <= 600:
            raise ValueError(f"link.heartbeat: expected 1 to 600 seconds, got {self.heartbeat}")
        if self.unhealthy_after < 0:
            raise ValueError(f"link.unhealthy_after: expected 0 or more seconds, got {self.unhealthy_after}")

    def trust_root(self) -> Any:
        """
        The authorities C{ca_file} names, for the link's TLS; C{None}: the
        system's.

        @raise ValueError: the file cannot be read or holds no certificate.
        """
        if self.ca_file is None:
            return None
        try:
            text = self.ca_file.read_bytes()
        except OSError as e:
            raise ValueError(f"link.ca_file: cannot read {self.ca_file}: {e.strerror}") from None
        blocks = _PEM_CERTIFICATE.findall(text)
        try:
            certificates = [Certificate.loadPEM(block) for block in blocks]
        except Exception:
            certificates = []
        if not certificates:
            raise ValueError(f"link.ca_file: {self.ca_file} holds no PEM certificate")
        return trustRootFromCertificates(certificates)


@dataclasses.dataclass(frozen=True)
class LogConfig:
    """
    Logging.  C{format = "json"} writes one JSON object per line.
    """

    format: typing.Literal["text", "json"] = "text"
    #: The audit log (JSON lines, L{relay.audit}); relative to the data
    #: directory.
    audit: Path = Path("audit.log")


def load_or_exit(cls: type[T], path: Path | str, overrides: Mapping[str, Any], program: str) -> T:
    """
    L{load}, for startup: a L{ConfigError} stops the process with exit
    status 1 and its one line on standard error, no traceback.
    """
    try:
        return load(cls, path, overrides)
    except ConfigError as e:
        raise SystemExit(f"{program}: configuration error: {e}") from None


def prepare_data_dir(path: Path) -> Path:
    """
    Create the state directory (owner-only) if needed and return it; one
    that others may read or enter is made owner-only, with a warning.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            Logger().warn("data directory {path} was open to others (mode {mode:o}); made it 0700",
                          path=path, mode=mode)
            os.chmod(path, 0o700)
    except OSError as e:
        raise SystemExit(f"cannot create data directory {path}: {e.strerror}") from None
    return path
