"""MkDocs hook: the CLI and config reference pages, generated at build time from the code itself.

Why generated: a hand-written reference goes stale the day an option is renamed; these pages are made from the
Typer app (through the click command tree Typer builds; Typer >= 0.16 carries its own copy of click, so
the tree is read by attribute, not by click's classes) and from RunConfig's pydantic fields, so the site cannot
describe an option the code does not have. tests/test_docs_site.py imports the two functions below.
"""

from __future__ import annotations

import html
import re
from typing import Any

CLI_PAGE = "reference/cli.md"
CONFIG_PAGE = "reference/config.md"


def _text(s: str | None) -> str:
    """Help text as Markdown: whitespace folded, and `<`/`>`/`&` escaped outside code spans (`runs/<run>`)."""
    parts = re.split(r"(`[^`]*`)", " ".join((s or "").replace("\b", "").split()))
    return "".join(p if p.startswith("`") else html.escape(p, quote=False) for p in parts)


def _context(cmd: Any, name: str) -> Any:
    import typer

    return typer.Context(cmd, info_name=name)


def is_group(cmd: Any) -> bool:
    """A command with sub-commands (`realfake zoo`)."""
    return hasattr(cmd, "list_commands")


def _commands(group: Any, prefix: str) -> list[tuple[str, Any]]:
    """Every command under `group`, depth first in the order `--help` lists them, sub-groups included."""
    out: list[tuple[str, Any]] = []
    ctx = _context(group, prefix)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        out.append((f"{prefix} {name}", cmd))
        if is_group(cmd):
            out.extend(_commands(cmd, f"{prefix} {name}"))
    return out


def cli_commands() -> list[tuple[str, Any]]:
    """(`realfake train`, its click command) for every command of the Typer app."""
    import typer

    from realfake.cli import app

    return _commands(typer.main.get_command(app), "realfake")  # type: ignore[arg-type]


def _param_type(p: Any) -> str:
    """What a parameter takes: click's type name, or the annotation Typer's own click copy keeps."""
    if getattr(p, "type", None) is not None:
        return str(p.type.name).lower()
    descriptor = getattr(p, "type_descriptor", None)
    return _type_name(descriptor.annotation) if descriptor is not None else "text"


def _param_line(p: Any) -> str:
    if p.param_type_name == "argument":
        name = (p.metavar or p.name).upper()
        what = _text(getattr(p, "help", None))
        req = "required" if p.required else "optional"
        many = ", one or more" if p.nargs == -1 else ""
        return f"- `{name}` (argument, {req}{many}){': ' + what if what else ''}"
    names = " / ".join(f"`{o}`" for o in (*p.opts, *p.secondary_opts))
    kind = "flag" if p.is_flag else _param_type(p)
    bounds = [f"{sym} {v}" for sym, v in ((">=", getattr(p, "min", None)), ("<=", getattr(p, "max", None)))
              if v is not None]
    default = p.default if not callable(p.default) else None
    extra = []
    if default not in (None, False, ()) and not p.is_flag:
        extra.append(f"default `{default}`")
    if p.required:
        extra.append("required")
    extra += bounds
    help_ = _text(p.help)
    meta = ", ".join([kind, *extra])
    return f"- {names} ({meta}){': ' + help_ if help_ else ''}"


def usage(full: str, cmd: Any) -> str:
    """`realfake predict [OPTIONS] RUN_DIR PATHS...`: the command line's shape."""
    words = [full, "[OPTIONS]"]
    for p in cmd.params:
        if p.param_type_name == "argument":
            name = (p.metavar or p.name).upper() + ("..." if p.nargs == -1 else "")
            words.append(name if p.required else f"[{name}]")
    if is_group(cmd):
        words.append("COMMAND [ARGS]...")
    return " ".join(words)


def cli_reference() -> str:
    """The CLI reference page: each command's usage, its help, and every argument and option."""
    lines = [
        "# CLI reference",
        "",
        "Generated from the Typer app (`realfake.cli.app`) when the site is built; `realfake COMMAND --help` "
        "prints the same.",
        "",
    ]
    for full, cmd in cli_commands():
        ctx = _context(cmd, full)
        lines += [f"## `{full}`", "", f"`{usage(full, cmd)}`", ""]
        if cmd.help:
            paragraphs = [p for p in cmd.help.split("\n\n") if p.strip()]
            lines += [_text(p) + "\n" for p in paragraphs]
        params = [p for p in cmd.get_params(ctx) if p.name != "help"]
        if is_group(cmd):
            subs = ", ".join(f"[`{full} {n}`](#{_anchor(full + ' ' + n)})" for n in cmd.list_commands(ctx))
            lines += [f"Commands: {subs}.", ""]
        if params:
            lines += [_param_line(p) for p in params] + [""]
    return "\n".join(lines).rstrip() + "\n"


def _anchor(title: str) -> str:
    """The id MkDocs' toc extension gives the heading `` `title` ``."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", title).strip().lower())


def _type_name(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
    text = text.replace("pathlib.", "")
    return re.sub(r"\bNoneType\b", "None", text)


def _constraints(field: Any) -> list[str]:
    out = []
    for m in field.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(m, attr, None)
            if v is not None:
                out.append(f"{sym} {v:g}" if isinstance(v, float) else f"{sym} {v}")
    return out


def config_fields() -> dict[str, Any]:
    """RunConfig's pydantic fields by name, in the order they are declared."""
    from realfake.config import RunConfig

    return dict(RunConfig.model_fields)


def config_reference() -> str:
    """The config reference page: every RunConfig field with its type, default, bounds and description."""
    lines = [
        "# Run config reference",
        "",
        "Every option of a training run, generated from `realfake.config.RunConfig` when the site is built. A "
        "run saves them as `config.yaml`; `realfake train --config FILE.yaml` reads any of them as "
        "`name: value` (flags given on the command line win), and unknown keys are refused. A model's recipe "
        "(see [Models and recipes](../guide/models.md)) fills the fields you did not set yourself.",
        "",
    ]
    for name, field in config_fields().items():
        default = field.default
        shown = "`null`" if default is None else f"`{default}`"
        bounds = ", ".join(f"`{c}`" for c in _constraints(field))
        meta = f"`{_type_name(field.annotation)}`, default {shown}" + (f", {bounds}" if bounds else "")
        desc = _text(field.description)
        lines.append(f"- **`{name}`** ({meta}){': ' + desc if desc else ''}")
    return "\n".join(lines) + "\n"


def on_files(files: Any, config: Any) -> Any:
    """MkDocs event: add the two generated pages to the site (nothing is written into docs/)."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, CLI_PAGE, content=cli_reference()))
    files.append(File.generated(config, CONFIG_PAGE, content=config_reference()))
    return files
