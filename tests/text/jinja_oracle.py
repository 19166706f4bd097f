# Renders chat templates with Python Jinja2 configured as Hugging Face transformers does
# (chat_template_utils: ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols,
# json.dumps-based tojson, raise_exception). Reads a JSON list of {template, variables} on stdin and
# writes a JSON list of {"text": ...} or {"error": ...}.
import json
import sys

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception

out = []
for job in json.load(sys.stdin):
    try:
        out.append({"text": env.from_string(job["template"]).render(**job["variables"])})
    except Exception as e:  # noqa: BLE001 - every failure is reported to the test
        out.append({"error": f"{type(e).__name__}: {e}"})
json.dump(out, sys.stdout, ensure_ascii=False)
