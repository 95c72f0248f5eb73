"""Downloading images from URLs without becoming a proxy into the server's network.

* **Where**: the host is resolved once, every address it resolves to must be public
  (not loopback, private, link-local, shared, reserved or multicast; IPv4-mapped IPv6 is
  unwrapped), and the connection goes to that checked address (TLS still verifies the
  name), so a DNS answer cannot change between the check and the connect.  Redirects are
  followed by hand, at most five, each target checked the same way.  Decimal, octal and short
  IPv4 spellings are resolved by the system resolver first, so they are checked like any other.
* **How long**: one deadline for the whole download (``url_timeout``), and no single wait
  for data longer than a quarter of it, so a server trickling a byte every two seconds is
  cut off on time.
* **How many**: a download slot is taken from a fixed pool (``max_downloads``); a request
  that cannot get one within a couple of seconds is refused as busy instead of tying up a
  server thread, so slow hosts cannot starve the API.
* **What it says**: failures name the URL (credentials removed) and a uniform reason; a
  refused connection and a timeout read alike, so errors are no port scanner.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:  # imported on the first download: commands that fetch nothing start faster
    import httpx

MAX_REDIRECTS = 5


class UrlRefused(ValueError):
    """The URL is not one this server fetches (scheme, address, credentials in a redirect…)."""


class DownloadError(RuntimeError):
    """A download failed; ``kind`` is one of: fetch, too_large, busy."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def strip_credentials(url: str) -> str:
    """The URL without ``user:password@``, for storing and for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<malformed URL>"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _blocked(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


@dataclass
class Downloader:
    """Fetches image bytes by URL under the policy above. Thread-safe; one per server or ingest run."""

    max_bytes: int
    timeout: float = 10.0
    allow_private: bool = False
    max_concurrent: int = 4
    slot_wait: float = 2.0

    def __post_init__(self) -> None:
        self._slots = threading.BoundedSemaphore(max(1, self.max_concurrent))
        self._client_lock = threading.Lock()
        self._http: httpx.Client | None = None

    @property
    def _client(self) -> httpx.Client:
        with self._client_lock:
            if self._http is None:
                import httpx

                self._http = httpx.Client(follow_redirects=False, trust_env=False)
            return self._http

    def close(self) -> None:
        with self._client_lock:
            if self._http is not None:
                self._http.close()

    def fetch(self, url: str) -> bytes:
        shown = strip_credentials(url)
        if not self._slots.acquire(timeout=self.slot_wait):
            raise DownloadError("busy", f"too many image downloads in progress; retry {shown} shortly")
        try:
            return self._fetch(url, shown, time.monotonic() + self.timeout)
        finally:
            self._slots.release()

    def _fetch(self, url: str, shown: str, deadline: float) -> bytes:
        current = self._parse(url)
        for _ in range(MAX_REDIRECTS + 1):
            address = self._checked_address(current)
            with self._open(current, address, deadline, shown) as response:
                if response.is_redirect and "location" in response.headers:
                    target = current.join(response.headers["location"])
                    if target.host != current.host:  # credentials never travel to another host
                        target = target.copy_with(username=None, password=None)
                    current = self._parse(str(target))
                    continue
                if response.status_code != 200:
                    raise DownloadError("fetch", f"GET {shown} answered HTTP {response.status_code}")
                return self._read_body(response, shown, deadline)
        raise DownloadError("fetch", f"GET {shown}: more than {MAX_REDIRECTS} redirects")

    @staticmethod
    def _parse(url: str) -> httpx.URL:
        import httpx

        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise UrlRefused(f"{strip_credentials(url)} is not a valid URL") from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise UrlRefused(f"{strip_credentials(url)}: only http(s) URLs with a host are fetched")
        return parsed

    def _checked_address(self, url: httpx.URL) -> str:
        """One address of the URL's host, after checking that every address it has is allowed."""
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(url.host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise DownloadError("fetch", f"GET {strip_credentials(str(url))} failed: the host name does not resolve") from exc
        addresses = [str(info[4][0]) for info in infos]
        if not self.allow_private:
            for address in addresses:
                if _blocked(address):
                    raise UrlRefused(f"{strip_credentials(str(url))} points at a loopback, private or reserved address; "
                                     "this server fetches public addresses only (setting allow_private_urls)")
        return addresses[0]

    def _open(self, url: httpx.URL, address: str, deadline: float, shown: str) -> _Stream:
        import httpx

        remaining = max(0.05, deadline - time.monotonic())
        timeout = httpx.Timeout(remaining, read=min(remaining, max(0.5, self.timeout / 4)))
        host_header = url.netloc.decode("ascii").rsplit("@", 1)[-1]
        pinned = url.copy_with(host=address)
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        request = self._client.build_request("GET", pinned, headers={"Host": host_header}, timeout=timeout, extensions=extensions)
        return _Stream(self._client, request, shown)

    def _read_body(self, response: httpx.Response, shown: str, deadline: float) -> bytes:
        import httpx

        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise DownloadError("too_large", f"{shown} is {int(declared)} bytes; the limit is {self.max_bytes}")
        chunks: list[bytes] = []
        total = 0
        try:
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > self.max_bytes:
                    raise DownloadError("too_large", f"{shown} is larger than the limit of {self.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise DownloadError("fetch", f"GET {shown} took longer than {self.timeout:g} s")
                chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise DownloadError("fetch", f"GET {shown} failed while reading ({_reason(exc)})") from exc
        return b"".join(chunks)


class _Stream:
    """Send a request and stream its response, turning transport errors into uniform messages."""

    def __init__(self, client: httpx.Client, request: httpx.Request, shown: str):
        self.client, self.request, self.shown = client, request, shown
        self.response: httpx.Response | None = None

    def __enter__(self) -> httpx.Response:
        import httpx

        try:
            self.response = self.client.send(self.request, stream=True)
        except httpx.HTTPError as exc:
            raise DownloadError("fetch", f"GET {self.shown} failed ({_reason(exc)})") from exc
        return self.response

    def __exit__(self, *exc: object) -> None:
        if self.response is not None:
            self.response.close()


def _reason(exc: httpx.HTTPError) -> str:
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time" if not isinstance(exc, httpx.ConnectTimeout) else "could not connect"
    if isinstance(exc, httpx.ConnectError):
        return "could not connect"
    return "the connection failed"
