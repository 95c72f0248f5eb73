"""Everything that lets the server face the internet: API keys with scopes, the URL policy for
image downloads, confinement of server-side paths, and the HTTP guards (Host check, body
limits, security headers).  Each part is small and has no knowledge of the engine."""

from .keys import SCOPES, ApiKey, KeyRing, KeyRingError
from .paths import PathPolicy, PathRefused
from .urls import Downloader, UrlRefused, strip_credentials

__all__ = ["SCOPES", "ApiKey", "KeyRingError", "KeyRing", "PathPolicy", "PathRefused", "Downloader", "UrlRefused", "strip_credentials"]
