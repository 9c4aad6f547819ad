"""Just enough of Docker's Dockerfile and .dockerignore rules to test the images without
an engine: stages, ENV (with $VAR expansion), COPY, exec-form ENTRYPOINT/CMD, and the
context that `docker build .` would send."""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DOCKER_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class Instruction:
    """One instruction, continuation lines joined, its arguments unparsed."""

    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    """A FROM and the instructions under it."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass(frozen=True)
class Copy:
    """A COPY: its flags (--from, --chmod, ...), sources and destination."""

    flags: dict[str, str]
    sources: list[str]
    dest: str


@dataclass
class Dockerfile:
    """Global ARG defaults and the stages, in file order (the last is the default target)."""

    args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r}")

    def base_image(self, stage: Stage) -> str:
        """The stage's FROM with global ARGs substituted."""
        return _expand(stage.base, self.args)

    def lineage(self, stage: Stage) -> list[Stage]:
        """The stage and the stages it is built FROM, base first."""
        names = {s.name for s in self.stages}
        chain = [stage]
        while chain[0].base in names:
            chain.insert(0, self.stage(chain[0].base))
        return chain

    def env(self, stage: Stage, base_env: dict[str, str]) -> dict[str, str]:
        """The environment a container of ``stage`` starts with, on top of the base image's."""
        env = dict(base_env)
        for s in self.lineage(stage):
            for instr in s.all("ENV"):
                env.update(parse_env(instr.args, env))
        return env

    def inherited(self, stage: Stage, keyword: str) -> Instruction | None:
        """The last ``keyword`` instruction in the stage's lineage (USER, ENTRYPOINT, ...)."""
        found = None
        for s in self.lineage(stage):
            found = s.last(keyword) or found
        return found


def _expand(text: str, env: dict[str, str]) -> str:
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), text)


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comments inside a continuation are dropped
            continue
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        yield start, buf + line
        buf = ""
    if buf:
        yield start, buf


def parse(path: Path) -> Dockerfile:
    """Parse a Dockerfile into global ARGs and stages."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif keyword == "ARG" and not stages:
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            if not stages:
                raise ValueError(f"{path}:{number}: {keyword} before the first FROM")
            stages[-1].instructions.append(Instruction(keyword, rest, number))
    return Dockerfile(args=args, stages=stages)


def parse_env(args: str, env: dict[str, str]) -> dict[str, str]:
    """ENV K=V [K2=V2 ...] (or the old ENV K V), values expanded against ``env``."""
    words = shlex.split(args)
    if "=" not in words[0]:
        return {words[0]: _expand(" ".join(words[1:]), env)}
    found: dict[str, str] = {}
    for word in words:
        key, _, value = word.partition("=")
        found[key] = _expand(value, {**env, **found})
    return found


def parse_copy(instr: Instruction) -> Copy:
    words = shlex.split(instr.args)
    flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
    paths = [w for w in words if not w.startswith("--")]
    return Copy(flags=flags, sources=paths[:-1], dest=paths[-1])


def exec_form(instr: Instruction | None) -> list[str] | None:
    """ENTRYPOINT/CMD as the JSON list Docker runs (None if absent; ValueError if shell form)."""
    if instr is None:
        return None
    value = json.loads(instr.args)
    if not isinstance(value, list):
        raise ValueError(f"line {instr.line}: not exec form: {instr.args}")
    return value


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i:end + 1])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


class DockerIgnore:
    """.dockerignore as BuildKit applies it: patterns in order, the last match decides; a
    pattern that matches a parent directory matches everything under it; ``!`` re-includes."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, str, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
            self.rules.append((negated, pattern, _pattern_regex(pattern)))

    def excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        result = False
        for negated, _, regex in self.rules:
            if any(regex.fullmatch(p) for p in prefixes):
                result = not negated
        return result

    def _may_reinclude(self, rel_dir: str) -> bool:
        return any(negated and (pattern == rel_dir or pattern.startswith(rel_dir + "/"))
                   for negated, pattern, _ in self.rules)

    def context(self, root: Path) -> list[str]:
        """Every file `docker build` would send from ``root``, relative, sorted.

        Symbolic links are sent as links and not followed (a .venv link stays a link)."""
        sent: list[str] = []
        for top, dirs, files in os.walk(root):
            rel_top = Path(top).relative_to(root).as_posix()
            rel_top = "" if rel_top == "." else rel_top + "/"
            dirs[:] = [d for d in dirs if not self.excluded(rel_top + d)
                       or self._may_reinclude(rel_top + d)]
            sent.extend(rel_top + f for f in files if not self.excluded(rel_top + f))
        return sorted(sent)
