"""The Dockerfile and .dockerignore as data, for tests: stages, their instructions, ignore rules.

Parsing is dockerfile-parse's (the real thing); this module only groups its instructions by stage,
resolves build arguments the way BuildKit does, and answers .dockerignore questions.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Instruction:
    """One Dockerfile instruction: its keyword, its raw value, and its flags split off."""

    keyword: str  # "RUN", "COPY", ...
    value: str  # Everything after the keyword, continuation lines joined.
    line: int  # 1-based line number where it starts.

    @property
    def flags(self) -> dict[str, str]:
        """Leading --name=value flags (COPY --from=..., HEALTHCHECK --interval=...); --mount is in mounts."""
        out = {}
        for word in self.words_with_flags():
            if not word.startswith("--"):
                break
            name, _, val = word[2:].partition("=")
            if name != "mount":
                out[name] = val
        return out

    @property
    def mounts(self) -> list[dict[str, str]]:
        """RUN --mount=type=...,k=v options, one dict each."""
        out = []
        for word in self.words_with_flags():
            if not word.startswith("--"):
                break
            if word.startswith("--mount="):
                out.append(dict(kv.partition("=")[::2] for kv in word[len("--mount=") :].split(",")))
        return out

    def words_with_flags(self) -> list[str]:
        """The value split like a shell would (flags included)."""
        return shlex.split(self.value)

    @property
    def body(self) -> str:
        """The value without its leading --flags: a RUN's shell command, a COPY's paths."""
        rest = self.value.lstrip()
        while rest.startswith("--"):
            rest = rest.split(None, 1)[1] if len(rest.split(None, 1)) > 1 else ""
        return rest

    @property
    def exec_form(self) -> list[str]:
        """The JSON array of a CMD / HEALTHCHECK CMD / ENTRYPOINT in exec form."""
        body = self.body
        if self.keyword == "HEALTHCHECK":
            assert body.startswith("CMD "), f"HEALTHCHECK at line {self.line} has no CMD: {body!r}"
            body = body[len("CMD ") :]
        parsed = json.loads(body)
        assert isinstance(parsed, list), f"line {self.line}: not exec form: {body!r}"
        return parsed


@dataclass
class Stage:
    """One FROM ... AS name block."""

    name: str
    base: str  # The FROM image or stage, build arguments not yet substituted.
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        """This stage's instructions with that keyword, in order."""
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        """The stage's single instruction with that keyword (asserts there is exactly one)."""
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name!r}: expected one {keyword}, found {len(found)}"
        return found[0]

    def index(self, instruction: Instruction) -> int:
        """Position of an instruction within the stage."""
        return self.instructions.index(instruction)

    def arg_defaults(self) -> dict[str, str | None]:
        """ARG name -> default (None when declared without one), as written in this stage."""
        out: dict[str, str | None] = {}
        for arg in self.all("ARG"):
            name, eq, default = arg.value.partition("=")
            out[name.strip()] = _unquote(default.strip()) if eq else None
        return out


@dataclass
class Dockerfile:
    """Global ARGs (before the first FROM) and the stages, in file order."""

    global_args: dict[str, str | None]
    stages: list[Stage]
    parser: DockerfileParser

    def stage(self, name: str) -> Stage:
        """The stage called name."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")

    def resolve(self, text: str, build_args: dict[str, str] | None = None) -> str:
        """Substitute ${NAME} / $NAME from the global ARG defaults overridden by build_args."""
        values = {k: v or "" for k, v in self.global_args.items()}
        values.update(build_args or {})
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), ""), text)


def _unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" else text


def load(path: Path = DOCKERFILE) -> Dockerfile:
    """Parse the Dockerfile with dockerfile-parse and group its instructions into stages."""
    parser = DockerfileParser(path=str(path))
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for item in parser.structure:
        keyword, value, line = item["instruction"], item["value"], item["startline"] + 1
        if keyword == "COMMENT":
            continue
        if keyword == "FROM":
            words = value.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"line {line}: every FROM names its stage: {value!r}"
            stages.append(Stage(name=words[2], base=words[0], line=line))
        elif not stages:
            assert keyword == "ARG", f"line {line}: only ARG may come before the first FROM, got {keyword}"
            name, eq, default = value.partition("=")
            global_args[name.strip()] = _unquote(default.strip()) if eq else None
        else:
            stages[-1].instructions.append(Instruction(keyword=keyword, value=value, line=line))
    return Dockerfile(global_args=global_args, stages=stages, parser=parser)


# ---- .dockerignore, with the semantics of moby's patternmatcher (used by BuildKit):
# patterns are matched against the slash path relative to the context; "*" and "?" stay within one
# path segment, "**" spans any number of segments; a pattern that matches a parent folder matches
# everything under it; a leading "!" re-includes; the last matching pattern wins.


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    pattern = pattern.strip("/")
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out + r"\Z")


def ignore_rules(path: Path = DOCKERIGNORE) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per pattern line, comments and blanks dropped."""
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern_regex(line.lstrip("!").strip())))
    return rules


def is_ignored(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether a context-relative path (e.g. "models/x/y.gguf") stays out of the build context."""
    parts = relpath.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]  # The path and its parents.
    ignored = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            ignored = not negate
    return ignored
