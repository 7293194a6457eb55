"""The reference pages the site generates from the code, at build time (an MkDocs hook):

- `reference/cli.md`: every `molserve` command, from the Typer application;
- `reference/settings.md`: every setting, from the settings classes in `molserve.config`;
- `reference/catalogue.md`: every endpoint, from the bundled catalogue and the computed
  properties, with the held-out figures BENCHMARKS.md records;
- `reference/openapi.md` and `reference/openapi.json`: every route and schema, from the
  gateway's OpenAPI document (the app is built, never started).

Nothing is written into docs/: the pages exist in the build only. The gateway is imported
without torch, as it always is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]


def on_files(files: Files, config: Any) -> Files:
    for uri, content in pages().items():
        files.append(File.generated(config, uri, content=content))
    return files


def pages() -> dict[str, str]:
    """Generated page path (inside docs/) -> its content."""
    schema = openapi()
    return {
        "reference/cli.md": cli_page(),
        "reference/settings.md": settings_page(),
        "reference/catalogue.md": catalogue_page(),
        "reference/openapi.md": openapi_page(schema),
        "reference/openapi.json": json.dumps(schema, indent=2),
    }


def cell(text: Any) -> str:
    """Text fit for one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|") if text not in (None, "") else ""


# --- the command line ---------------------------------------------------------------------

def cli_page() -> str:
    import typer

    from molserve.cli import app

    try:  # Typer 0.2x carries its own copy of Click
        from typer._click import Context
    except ImportError:  # pragma: no cover
        from click import Context  # type: ignore[no-redef]

    command = typer.main.get_command(app)
    out = ["# Command line", "",
           "Every `molserve` command with its arguments and options, generated from the command's "
           "own definitions (`molserve <command> --help` prints the same). Tasks that use them: "
           "[the tutorials](../tutorials/index.md).", ""]

    def walk(cmd: Any, path: list[str], parent: Any) -> None:
        ctx = Context(cmd, info_name=path[-1], parent=parent)
        name = " ".join(path)
        out.extend([f"## `{name}` {{#{'-'.join(path)}}}", ""])
        usage = " ".join(cmd.collect_usage_pieces(ctx))
        out.extend(["```text", f"{name} {usage}".rstrip(), "```", ""])
        if cmd.help:
            out.extend([cmd.help.strip(), ""])
        rows = [record for param in cmd.get_params(ctx)
                if (record := param.get_help_record(ctx)) is not None]
        if rows:
            out.extend(["| argument or option | what |", "|---|---|"])
            out.extend(f"| `{cell(flags)}` | {cell(text)} |" for flags, text in rows)
            out.append("")
        subcommands = getattr(cmd, "commands", {})
        if subcommands:
            out.extend(["| command | what |", "|---|---|"])
            for sub_name in cmd.list_commands(ctx):
                sub = subcommands[sub_name]
                anchor = "-".join([*path, sub_name])
                out.append(f"| [`{sub_name}`](#{anchor}) | {cell(sub.get_short_help_str(200))} |")
            out.append("")
            for sub_name in cmd.list_commands(ctx):
                walk(subcommands[sub_name], [*path, sub_name], ctx)

    walk(command, ["molserve"], None)
    return "\n".join(out)


# --- settings -----------------------------------------------------------------------------

def settings_page() -> str:
    from molserve import config

    out = ["# Settings", "",
           "Every setting, generated from the settings classes in `molserve.config`. Each is read "
           "from its environment variable or from a `.env` file in the working directory; values "
           "of lists and mappings are JSON. An invalid value stops the start with the setting's "
           "name. [Configuration](../guides/configuration.md) says which to change for what.", ""]
    guide = guide_meanings(ROOT / "docs" / "guides" / "configuration.md")
    top = config.Settings
    sections = {name for name in config._SECTIONS}
    plain = {name: field for name, field in top.model_fields.items()
             if name not in sections and name != "worker"}
    out.extend(settings_table("Paths and logs", "molserve.config.Settings", top, plain, guide))
    for section in (*config._SECTIONS, "worker"):
        model = top.model_fields[section].annotation
        out.extend(settings_table(f"`{section}`", f"molserve.config.{model.__name__}", model,
                                  model.model_fields, guide))
    for model in (config.ModalDeploySettings, config.RayDeploySettings):
        out.extend(settings_table(model.__name__, f"molserve.config.{model.__name__}", model,
                                  model.model_fields, guide))
    out.extend(["A meaning in *italics* is the [Configuration](../guides/configuration.md) "
                "guide's, for a setting whose class gives none.", ""])
    return "\n".join(out)


def guide_meanings(path: Path) -> dict[str, str]:
    """Variable -> meaning, from the configuration guide's table (a row may name several)."""
    meanings: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `MOLSERVE_") and len(cells) == 3:
            for name in re.findall(r"`(MOLSERVE_[A-Z0-9_]+)`", cells[0]):
                meanings[name] = cells[2]
    return meanings


def settings_table(title: str, qualified: str, model: Any, fields: dict[str, Any],
                   guide: dict[str, str]) -> list[str]:
    prefix = model.model_config.get("env_prefix", "")
    doc = " ".join((model.__doc__ or "").split())
    out = [f"## {title}", "", f"`{qualified}`. {doc}".strip(), "",
           "| variable | type | default | meaning |", "|---|---|---|---|"]
    for name, field in fields.items():
        variable = f"{prefix}{name.upper()}"
        meaning = cell(field.description) or (f"*{cell(guide[variable])}*" if variable in guide else "")
        out.append(f"| `{variable}` | `{cell(type_name(field.annotation))}` | "
                   f"{default_of(field)} | {meaning} |")
    out.append("")
    return out


def type_name(annotation: Any) -> str:
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    text = re.sub(r"\b(?:typing|pathlib|builtins)\.", "", text)
    return text.replace("NoneType", "None")


def default_of(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, Path) and value.is_absolute():
            return "see meaning"  # depends on the machine (a cache folder)
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return f"`{cell(value)}`" if value else "empty"
    return f"`{cell(json.dumps(value))}`"


# --- the endpoint catalogue ---------------------------------------------------------------

def catalogue_page() -> str:
    from molserve.chem.descriptors import COMPUTED
    from molserve.data import tdc
    from molserve.data.bundled import BUNDLED
    from molserve.data.catalog import bundled_endpoints

    figures = Figures(ROOT / "BENCHMARKS.md")
    endpoints = sorted(bundled_endpoints().values(), key=lambda e: e.name)
    out = ["# Endpoint catalogue", "",
           f"The {len(endpoints)} predicted endpoints molserve trains from data it ships, and the "
           f"{len(COMPUTED)} computed ones, generated from the bundled catalogue "
           "(`molserve.data.catalog`, `molserve.data.tdc`) and the computed properties "
           "(`molserve.chem.descriptors`). Held-out figures are those "
           "[the benchmarks](../benchmarks.md) record for the served fast models; a running "
           "gateway says the same of its own models at `GET /v1/endpoints`, and "
           "[Endpoints](../concepts/endpoints.md) explains the choices.", "",
           "## Predicted", "",
           "| endpoint | task | units | data | rows |", "|---|---|---|---|---|"]
    for e in endpoints:
        out.append(f"| [`{e.name}`](#{e.name}) | {e.task} | {cell(e.units)} | {cell(e.source)} | "
                   f"{e.rows:,} |")
    out.append("")
    for e in endpoints:
        if e.tdc_name is None:
            data = BUNDLED[e.name]()
            licence, citation, metric = data.licence, "", ""
        else:
            entry = tdc.CATALOG[e.name]
            licence, metric = tdc.LICENCE, entry.metric
            citation = f"{entry.citation}; and TDC: {tdc.TDC_CITATION}"
        task = e.task
        if e.tdc_name is not None and tdc.CATALOG[e.name].log_target:
            task += " (modelled on log10, answered in its units)"
        out.extend([f"### `{e.name}` {{#{e.name}}}", "", e.description, "",
                    f"- **Task**: {task}; **units**: {e.units}",
                    f"- **Data**: {e.source} ({e.rows:,} rows)",
                    f"- **Licence**: {licence}"])
        if citation:
            out.append(f"- **Cite**: {citation}")
        if metric:
            out.append(f"- **TDC leaderboard metric**: {metric}")
        key = tdc.CATALOG[e.name].key if e.tdc_name else None
        lines = figures.of(e.name, key)
        if lines:
            out.append("- **Held-out figures** ([Benchmarks](../benchmarks.md)):")
            out.extend(f"    - {line}" for line in lines)
        out.append("")
    out.extend(["## Computed", "",
                "Exact values from RDKit, labelled `computed`, never `predicted`.", "",
                "| endpoint | units | what | how |", "|---|---|---|---|"])
    for name, prop in sorted(COMPUTED.items()):
        out.append(f"| `{name}` | {cell(prop.units)} | {cell(prop.description)} | {cell(prop.method)} |")
    out.append("")
    return "\n".join(out)


class Figures:
    """The rows BENCHMARKS.md gives an endpoint: the served model's held-out test figures, and
    for a TDC dataset its five-seed benchmark (or, outside the benchmark group, its scaffold and
    random-split figures)."""

    def __init__(self, path: Path) -> None:
        from markdown.extensions.toc import slugify, unique

        # (section title, its anchor on the benchmarks page, header, rows) per table
        self.tables: list[tuple[str, str, list[str], list[list[str]]]] = []
        section, anchor, used = "", "", set()
        header: list[str] | None = None
        rows: list[list[str]] = []
        for line in path.read_text(encoding="utf-8").splitlines() + [""]:
            heading = re.match(r"^#{1,6}\s+(.*)$", line)
            if heading:
                section = heading[1].strip()
                anchor = unique(slugify(section.replace("`", ""), "-"), used)
            if line.startswith("|"):
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if header is None:
                    header = cells
                elif not set("".join(cells)) <= set("-: "):
                    rows.append(cells)
            elif header is not None:
                self.tables.append((section, anchor, header, rows))
                header, rows = None, []

    def of(self, endpoint: str, tdc_key: str | None) -> list[str]:
        found = []
        for section, anchor, header, rows in self.tables:
            for row in rows:
                first = row[0]
                if first.split(" (")[0] in {endpoint, tdc_key} and len(header) == len(row):
                    pairs = "; ".join(f"{h}: {v}" for h, v in zip(header[1:], row[1:], strict=True))
                    found.append(f"[{cell(section.replace('`', ''))}](../benchmarks.md#{anchor}): "
                                 f"{cell(first)}: {cell(pairs)}")
        return found


# --- the HTTP API -------------------------------------------------------------------------

def openapi() -> dict[str, Any]:
    import tempfile

    from molserve.config import Settings
    from molserve.gateway.app import create_app

    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(registry=Path(folder) / "registry", jobs_dir=None)
        return create_app(settings).openapi()


METHODS = ("get", "post", "put", "patch", "delete")


def openapi_page(schema: dict[str, Any]) -> str:
    out = ["# OpenAPI: every route and schema", "",
           f"Generated from the gateway's OpenAPI document (version {schema['info']['version']}; "
           "download it as [openapi.json](openapi.json), or read it live at `GET /openapi.json` "
           "and try it at `GET /docs` on a running gateway). [HTTP API](http.md) says how "
           "routes, keys and errors fit together.", ""]
    by_tag: dict[str, list[tuple[str, str, dict]]] = {}
    for path, item in schema["paths"].items():
        for method in METHODS:
            if method in item:
                operation = item[method]
                tag = (operation.get("tags") or ["other"])[0]
                by_tag.setdefault(tag, []).append((method, path, operation))
    for tag, operations in by_tag.items():
        out.extend([f"## {tag.capitalize()}", ""])
        for method, path, operation in operations:
            out.extend(operation_lines(method, path, operation))
    out.extend(["## Schemas", ""])
    for name, model in sorted(schema.get("components", {}).get("schemas", {}).items()):
        out.extend(schema_lines(name, model))
    return "\n".join(out)


def anchor(name: str) -> str:
    return "schema-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)


def type_of(model: dict[str, Any]) -> str:
    if "$ref" in model:
        name = model["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{anchor(name)})"
    for key in ("anyOf", "oneOf", "allOf"):
        if key in model:
            return " or ".join(type_of(option) for option in model[key])
    if "const" in model:
        return f"`{json.dumps(model['const'])}`"
    if "enum" in model:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in model["enum"])
    kind = model.get("type", "any")
    if kind == "array":
        return f"list of {type_of(model.get('items', {}))}"
    if kind == "object" and isinstance(model.get("additionalProperties"), dict):
        return f"mapping to {type_of(model['additionalProperties'])}"
    if isinstance(kind, list):
        return " or ".join(kind)
    return kind + (f" ({model['format']})" if "format" in model else "")


def operation_lines(method: str, path: str, operation: dict[str, Any]) -> list[str]:
    slug = re.sub(r"[^a-z0-9]+", "-", f"{method} {path}".lower()).strip("-")
    out = [f"### `{method.upper()} {path}` {{#{slug}}}", ""]
    if operation.get("summary"):
        out.extend([f"**{operation['summary']}**", ""])
    if operation.get("description"):
        out.extend([operation["description"].strip(), ""])
    parameters = operation.get("parameters") or []
    if parameters:
        out.extend(["| parameter | in | type | required | what |", "|---|---|---|---|---|"])
        for p in parameters:
            out.append(f"| `{p['name']}` | {p['in']} | {cell(type_of(p.get('schema', {})))} | "
                       f"{'yes' if p.get('required') else 'no'} | "
                       f"{cell(p.get('description') or p.get('schema', {}).get('description'))} |")
        out.append("")
    body = operation.get("requestBody")
    if body:
        kinds = ", ".join(f"`{media}`: {type_of(content.get('schema', {}))}"
                          for media, content in body.get("content", {}).items())
        out.extend([f"Request body{' (required)' if body.get('required') else ''}: {kinds}", ""])
    responses = operation.get("responses") or {}
    if responses:
        out.extend(["| status | what | body |", "|---|---|---|"])
        for status, response in responses.items():
            kinds = ", ".join(type_of(content.get("schema", {}))
                              for content in (response.get("content") or {}).values())
            out.append(f"| {status} | {cell(response.get('description'))} | {cell(kinds)} |")
        out.append("")
    return out


def schema_lines(name: str, model: dict[str, Any]) -> list[str]:
    out = [f"### {name} {{#{anchor(name)}}}", ""]
    if model.get("description"):
        out.extend([model["description"].strip(), ""])
    properties = model.get("properties") or {}
    if properties:
        required = set(model.get("required") or ())
        out.extend(["| field | type | required | default | what |", "|---|---|---|---|---|"])
        for field, spec in properties.items():
            default = f"`{cell(json.dumps(spec['default']))}`" if "default" in spec else ""
            out.append(f"| `{field}` | {cell(type_of(spec))} | {'yes' if field in required else 'no'} "
                       f"| {default} | {cell(spec.get('description'))} |")
        out.append("")
    elif "properties" not in model:
        out.extend([f"Type: {type_of(model)}", ""])
    return out
